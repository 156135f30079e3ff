//! `Client`: one agent, spoken to as protocol v1 says — signed submits, read-authenticated
//! status, list, cancel and log streams, health — with the transport's retry promises.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quickcmd::ClientError> {
//! use quickcmd::{AgentEndpoint, Client, ClientOptions, JobSpec, Secret, Trust};
//! let endpoint = AgentEndpoint {
//!     name: "web-1".into(),
//!     url: "https://127.0.0.1:8443".parse().expect("url"),
//!     controller_id: "controller-1".into(),
//!     secret: Secret::from_text("0123...").expect("secret"),
//!     trust: Trust::pinned_from_file("agent-cert.pem".as_ref()).expect("pin"),
//! };
//! let client = Client::new(endpoint, ClientOptions::default())?;
//! let job = client.sign(&JobSpec::new("uname -a"), &quickcmd::job::new_job_id())?;
//! client.submit(&job).await?;
//! let mut stream = client.stream(&job.job_id, 0);
//! while let Some(frame) = stream.next().await? {
//!     print!("{}", frame.data);
//! }
//! let result = client.wait(&job.job_id, None).await?;
//! println!("exit code {}", result.exit_code);
//! # Ok(()) }
//! ```

mod error;
mod retry;
mod stream;
mod whoami;

use std::sync::Arc;
use std::time::{Duration, Instant};

use quickcmd_protocol::{
    is_valid_job_id, AuditChain, Encoding, Health, JobList, JobResult, JobStatus, JobView,
    ReadAuth, SubmitResponse,
};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;

pub use error::{error_code_of, ClientError};
pub use retry::{OnRetry, RetryNotice, RetryPolicy};
pub use stream::{LogStream, StreamOptions};

use crate::job::{sign_job, unix_now, JobSpec, SignedJob};
use crate::secret::Secret;
use crate::tls::{self, Trust};
use retry::{with_retries, Answer};

/// Largest answer body we read (a job view carries the stored stdout and stderr).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Who and where an agent is, and how we authenticate to it.
#[derive(Debug, Clone)]
pub struct AgentEndpoint {
    /// Name for output and history (the inventory name, or `host:port`).
    pub name: String,
    /// `https://host:port/`.
    pub url: Url,
    pub controller_id: String,
    pub secret: Secret,
    pub trust: Trust,
}

/// Timeouts and retry behaviour.
#[derive(Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Limit for one HTTP request, answer included.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Told of each retry and stream reconnect before its wait.
    pub on_retry: Option<OnRetry>,
    pub stream: StreamOptions,
    /// First interval between status polls in `wait`; it doubles up to 2 s.
    pub poll_interval: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            on_retry: None,
            stream: StreamOptions::default(),
            poll_interval: Duration::from_millis(250),
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("on_retry", &self.on_retry.as_ref().map(|_| "Fn"))
            .field("stream", &self.stream)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// `GET /health` and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub health: Health,
    /// HTTP status: 200 healthy, 503 unhealthy.
    pub http_status: u16,
    pub round_trip: Duration,
}

/// A client for one agent. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: AgentEndpoint,
    http: reqwest::Client,
    ws_tls: Arc<rustls::ClientConfig>,
    options: ClientOptions,
    /// How this agent can carry output, once asked ([`Client::output_encoding`]).
    output_encoding: tokio::sync::OnceCell<Encoding>,
}

impl Client {
    /// A client whose TLS trust is `endpoint.trust`.
    pub fn new(endpoint: AgentEndpoint, options: ClientOptions) -> Result<Client, ClientError> {
        let config =
            tls::client_config(&endpoint.trust).map_err(|e| ClientError::Setup(e.to_string()))?;
        Client::with_tls_config(endpoint, Arc::new(config), options)
    }

    /// A client with a ready rustls config (shared between agents with the same trust).
    pub fn with_tls_config(
        endpoint: AgentEndpoint,
        tls_config: Arc<rustls::ClientConfig>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls_config).clone())
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .user_agent(concat!("quickcmd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint,
                http,
                ws_tls: tls_config,
                options,
                output_encoding: tokio::sync::OnceCell::new(),
            }),
        })
    }

    pub fn endpoint(&self) -> &AgentEndpoint {
        &self.inner.endpoint
    }

    pub fn name(&self) -> &str {
        &self.inner.endpoint.name
    }

    pub fn url(&self) -> &Url {
        &self.inner.endpoint.url
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Signs `spec` for this agent as job `job_id`, now.
    pub fn sign(&self, spec: &JobSpec, job_id: &str) -> Result<SignedJob, ClientError> {
        let endpoint = &self.inner.endpoint;
        Ok(sign_job(
            spec,
            job_id,
            &endpoint.controller_id,
            &endpoint.secret,
            unix_now(),
        )?)
    }

    /// `POST /api/v1/jobs`. Retries resend the same signed bytes; the agent treats them as
    /// one job.
    pub async fn submit(&self, job: &SignedJob) -> Result<SubmitResponse, ClientError> {
        let url = self.url_for("/api/v1/jobs", None);
        let answer = with_retries(
            &self.inner.options.retry,
            "submit",
            self.notifier("submit"),
            || {
                let request = self
                    .inner
                    .http
                    .post(url.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(job.body.clone());
                self.fetch(request, "submitting the job")
            },
        )
        .await?;
        expect_json(answer, &[200, 201, 202])
    }

    /// `GET /api/v1/jobs/:id`, output as text.
    pub async fn status(&self, job_id: &str) -> Result<JobView, ClientError> {
        self.status_in(job_id, Encoding::Text).await
    }

    /// `GET /api/v1/jobs/:id?encoding=`: the result's `stdout`/`stderr` in `encoding`
    /// (base64 only from a v1.1 agent: see [`Client::output_encoding`]).
    pub async fn status_in(
        &self,
        job_id: &str,
        encoding: Encoding,
    ) -> Result<JobView, ClientError> {
        let path = job_path(job_id)?;
        let query = (encoding != Encoding::Text).then(|| format!("encoding={encoding}"));
        let answer = self
            .read(Method::GET, &path, query.as_deref(), "reading job status")
            .await?;
        expect_json(answer, &[200])
    }

    /// `GET /api/v1/audit/chain?from=&to=` (protocol v1.1): rows `from..=to` of the agent's
    /// audit chain that exist, at most [`quickcmd_protocol::MAX_CHAIN_ROWS`].
    pub async fn audit_chain(&self, from: u64, to: u64) -> Result<AuditChain, ClientError> {
        let query = format!("from={from}&to={to}");
        let answer = self
            .read(
                Method::GET,
                "/api/v1/audit/chain",
                Some(&query),
                "reading the audit chain",
            )
            .await?;
        expect_json(answer, &[200])
    }

    /// `GET /api/v1/jobs?status=&limit=`: this controller's jobs, newest first.
    pub async fn list(
        &self,
        status: Option<JobStatus>,
        limit: Option<u32>,
    ) -> Result<JobList, ClientError> {
        let mut query = Vec::new();
        if let Some(status) = status {
            query.push(format!("status={status}"));
        }
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        let query = (!query.is_empty()).then(|| query.join("&"));
        let answer = self
            .read(
                Method::GET,
                "/api/v1/jobs",
                query.as_deref(),
                "listing jobs",
            )
            .await?;
        expect_json(answer, &[200])
    }

    /// `DELETE /api/v1/jobs/:id`: cancels a pending or running job.
    pub async fn cancel(&self, job_id: &str) -> Result<(), ClientError> {
        let path = job_path(job_id)?;
        let answer = self
            .read(Method::DELETE, &path, None, "cancelling the job")
            .await?;
        match answer.status {
            200 | 202 | 204 => Ok(()),
            status => Err(ClientError::from_response(
                status,
                &answer.body,
                answer.retry_after,
            )),
        }
    }

    /// `GET /health`, once (no retries: it is a probe), with its round-trip time.
    pub async fn health(&self) -> Result<HealthReport, ClientError> {
        let url = self.url_for("/health", None);
        let started = Instant::now();
        let answer = self
            .fetch(self.inner.http.get(url), "checking health")
            .await?;
        let round_trip = started.elapsed();
        let http_status = answer.status;
        if http_status != 200 && http_status != 503 {
            return Err(ClientError::from_response(
                http_status,
                &answer.body,
                answer.retry_after,
            ));
        }
        let health =
            serde_json::from_slice::<Health>(&answer.body).map_err(|e| ClientError::Protocol {
                message: format!("health answer is not protocol v1 JSON: {e}"),
            })?;
        Ok(HealthReport {
            health,
            http_status,
            round_trip,
        })
    }

    /// Follows the job's log frames from after `since` (0 = from the start), reconnecting
    /// with `?since=` when the connection drops. Frame `data` is text.
    pub fn stream(&self, job_id: &str, since: u64) -> LogStream {
        LogStream::new(self.clone(), job_id.to_string(), since, Encoding::Text)
    }

    /// [`Client::stream`] with frame `data` in `encoding` (base64 only from a v1.1 agent:
    /// see [`Client::output_encoding`]); [`LogStream::bytes`] reads it back.
    pub fn stream_in(&self, job_id: &str, since: u64, encoding: Encoding) -> LogStream {
        LogStream::new(self.clone(), job_id.to_string(), since, encoding)
    }

    /// Polls until the job has ended and returns its result; gives up after `limit`.
    pub async fn wait(
        &self,
        job_id: &str,
        limit: Option<Duration>,
    ) -> Result<JobResult, ClientError> {
        self.wait_in(job_id, limit, Encoding::Text).await
    }

    /// [`Client::wait`], the result's output in `encoding`.
    pub async fn wait_in(
        &self,
        job_id: &str,
        limit: Option<Duration>,
        encoding: Encoding,
    ) -> Result<JobResult, ClientError> {
        let started = Instant::now();
        let mut interval = self.inner.options.poll_interval;
        loop {
            let view = self.status_in(job_id, encoding).await?;
            if view.status.is_final() {
                return Ok(result_of(view));
            }
            if let Some(limit) = limit {
                if started.elapsed() >= limit {
                    return Err(ClientError::WaitTimeout {
                        job_id: job_id.to_string(),
                        waited: started.elapsed(),
                    });
                }
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_secs(2));
        }
    }

    /// A read-authenticated request, with retries.
    async fn read(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        during: &str,
    ) -> Result<Answer, ClientError> {
        let url = self.url_for(path, query);
        let what = format!("{method} {path}");
        with_retries(
            &self.inner.options.retry,
            &what,
            self.notifier(&what),
            || {
                let request = self
                    .inner
                    .http
                    .request(method.clone(), url.clone())
                    .header(AUTHORIZATION, self.read_auth(method.as_str(), path));
                self.fetch(request, during)
            },
        )
        .await
    }

    /// Tells `on_retry` of a retry of `what`.
    pub(crate) fn notifier<'a>(&'a self, what: &'a str) -> impl Fn(&str, usize, Duration) + 'a {
        let retries = self.inner.options.retry.delays.len();
        move |problem, retry, delay| self.notify_retry(what, problem, (retry, retries), delay)
    }

    /// Tells `on_retry` of retry `n` of `of` (`(n, of)`), waiting `delay` first.
    pub(crate) fn notify_retry(
        &self,
        what: &str,
        problem: &str,
        (retry, retries): (usize, usize),
        delay: Duration,
    ) {
        if let Some(on_retry) = &self.inner.options.on_retry {
            on_retry(&RetryNotice {
                agent: self.name().to_string(),
                what: what.to_string(),
                problem: problem.to_string(),
                retry,
                retries,
                delay,
            });
        }
    }

    /// `error`, with what to do when it is a TLS error the operator can fix.
    pub(crate) fn explain(&self, error: ClientError) -> ClientError {
        error.with_trust_hint(&self.inner.endpoint.trust)
    }

    /// The `Authorization` value for a read of `path` (no query), signed now.
    pub(crate) fn read_auth(&self, method: &str, path: &str) -> String {
        let endpoint = &self.inner.endpoint;
        ReadAuth::sign(
            &endpoint.controller_id,
            endpoint.secret.as_bytes(),
            method,
            path,
            unix_now(),
        )
        .header_value()
    }

    pub(crate) fn url_for(&self, path: &str, query: Option<&str>) -> Url {
        let mut url = self.inner.endpoint.url.clone();
        url.set_path(path);
        url.set_query(query);
        url
    }

    /// Sends one request and reads the whole answer (bounded).
    async fn fetch(
        &self,
        request: reqwest::RequestBuilder,
        during: &str,
    ) -> Result<Answer, ClientError> {
        let mut response = request
            .send()
            .await
            .map_err(|e| self.explain(ClientError::from_reqwest(&e, during)))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry::parse_retry_after);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ClientError::from_reqwest(&e, during))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(ClientError::Protocol {
                    message: format!("answer is over {MAX_ANSWER_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    pub(crate) fn ws_tls(&self) -> Arc<rustls::ClientConfig> {
        self.inner.ws_tls.clone()
    }
}

/// `/api/v1/jobs/<id>`, refusing ids protocol v1 does not allow (they could not be ours,
/// and must not smuggle path segments).
fn job_path(job_id: &str) -> Result<String, ClientError> {
    if !is_valid_job_id(job_id) {
        return Err(ClientError::InvalidJobId(job_id.to_string()));
    }
    Ok(format!("/api/v1/jobs/{job_id}"))
}

fn expect_json<T: DeserializeOwned>(answer: Answer, success: &[u16]) -> Result<T, ClientError> {
    if !success.contains(&answer.status) {
        return Err(ClientError::from_response(
            answer.status,
            &answer.body,
            answer.retry_after,
        ));
    }
    serde_json::from_slice(&answer.body).map_err(|e| ClientError::Protocol {
        message: format!("HTTP {} answer is not protocol v1 JSON: {e}", answer.status),
    })
}

/// The result of an ended job; a job refused before it ran may have none, so one is made
/// from its status.
pub fn result_of(view: JobView) -> JobResult {
    match view.result {
        Some(result) => result,
        None => JobResult {
            job_id: view.job_id,
            status: view.status,
            sandbox_id: String::new(),
            exit_code: -1,
            stdout: String::new(),
            stderr: String::new(),
            start_time: String::new(),
            end_time: String::new(),
            duration_ms: 0,
            error: None,
            reason: None,
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_sha256: String::new(),
            stderr_sha256: String::new(),
            audit: None,
        },
    }
}

#[cfg(test)]
mod tests;
