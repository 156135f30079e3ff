//! HTTP as a controller speaks it: payloads and signed bodies, `POST /api/v1/jobs`, signed
//! reads, polling a job to a state, `/metrics`; [`Reply`] with its assertions.

use std::time::{Duration, Instant};

use quickcmd_protocol::{sign, JobPayload, JobStatus, JobView, ReadAuth};
use serde_json::{json, Value};

use crate::process::TestAgent;
use crate::{now, PATIENCE};

/// A payload signed now, valid for ten minutes.
pub fn payload(controller_id: &str, job_id: &str, command: &str) -> JobPayload {
    let now = now();
    JobPayload {
        job_id: job_id.to_string(),
        prompt: "integration test".to_string(),
        command: command.to_string(),
        candidate_metadata: None,
        plugin_metadata: None,
        required_scopes: None,
        snapshot_metadata: String::new(),
        ttl: now + 600,
        timestamp: now,
        controller_id: controller_id.to_string(),
        sandbox: None,
        stdin: None,
        requested_by: None,
    }
}

/// A JSON object literal as the protocol crate's value type (for the metadata fields).
pub fn object(text: &str) -> quickcmd_protocol::json::Value {
    quickcmd_protocol::json::parse(text.as_bytes())
        .expect("test metadata is JSON")
        .value
}

/// `{"payload": <payload_json>, "signature": {...}}` exactly as given.
pub fn body_from(payload_json: &str, signature: &str, algorithm: &str) -> String {
    format!(
        r#"{{"payload":{payload_json},"signature":{{"signature":"{signature}","algorithm":"{algorithm}"}}}}"#
    )
}

/// The body a controller sends: the payload's signed JSON and its HMAC under `secret`.
pub fn signed_body(payload: &JobPayload, secret: &str) -> String {
    let json = payload.to_signed_json().expect("test payloads serialize");
    let signature = sign(secret.as_bytes(), json.as_bytes());
    body_from(&json, &signature, "HMAC-SHA256")
}

/// `body` with `needle` (which must occur exactly once) replaced by `replacement`.
pub fn replace_once(body: &str, needle: &str, replacement: &str) -> String {
    assert_eq!(
        body.matches(needle).count(),
        1,
        "{needle:?} must occur exactly once in {body}"
    );
    body.replacen(needle, replacement, 1)
}

/// The value of a sample line `name value` (name may carry labels) in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == name).then(|| value.parse().expect("metric value is a number"))
    })
}

/// An HTTP answer, its body kept as text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text))
    }

    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }

    /// Asserts an error answer: this status, this code, a sentence in `error`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "expected {status} {code}, got {} {}",
            self.status,
            self.text
        );
        let body = self.json();
        assert!(
            body["error"].as_str().is_some_and(|s| !s.is_empty()),
            "error body lacks a sentence: {}",
            self.text
        );
    }

    /// Asserts `202 {"job_id", "status"}` and returns the status.
    #[track_caller]
    pub fn assert_accepted(&self, job_id: &str) -> String {
        assert_eq!(
            self.status, 202,
            "expected 202, got {} {}",
            self.status, self.text
        );
        let body = self.json();
        assert_eq!(body["job_id"], json!(job_id), "{}", self.text);
        body["status"]
            .as_str()
            .unwrap_or_else(|| panic!("202 without a status: {}", self.text))
            .to_string()
    }

    async fn read(response: reqwest::Response) -> Result<Reply, reqwest::Error> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        Ok(Reply {
            status,
            headers,
            text,
        })
    }
}

impl TestAgent {
    pub fn secret_of(&self, controller_id: &str) -> String {
        self.config.secret_of(controller_id)
    }

    /// The body `payload.controller_id` would send.
    pub fn body(&self, payload: &JobPayload) -> String {
        signed_body(payload, &self.secret_of(&payload.controller_id))
    }

    async fn reply(&self, response: reqwest::Result<reqwest::Response>) -> Reply {
        let response = response.unwrap_or_else(|e| {
            panic!(
                "request to the agent failed: {e:?}; its log:\n{}",
                self.log()
            )
        });
        Reply::read(response).await.expect("read answer body")
    }

    /// `POST /api/v1/jobs` with exactly these bytes.
    pub async fn post(&self, body: impl Into<Vec<u8>>) -> Reply {
        let response = self
            .http
            .post(format!("{}/api/v1/jobs", self.base))
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await;
        self.reply(response).await
    }

    /// Like `post`, but hands back transport errors (for racing a shutdown).
    pub async fn try_post(&self, body: String) -> Result<Reply, reqwest::Error> {
        let response = self
            .http
            .post(format!("{}/api/v1/jobs", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        Reply::read(response).await
    }

    /// Submits `command` as `controller_id` under `job_id`; asserts 202.
    pub async fn submit(&self, controller_id: &str, job_id: &str, command: &str) -> String {
        let reply = self
            .post(self.body(&payload(controller_id, job_id, command)))
            .await;
        reply.assert_accepted(job_id)
    }

    /// A read request signed by `controller_id` with its configured secret.
    pub async fn read(&self, method: reqwest::Method, controller_id: &str, path: &str) -> Reply {
        let auth = ReadAuth::sign(
            controller_id,
            self.secret_of(controller_id).as_bytes(),
            method.as_str(),
            path.split('?').next().unwrap_or(path),
            now(),
        );
        self.request(method, path, Some(auth.header_value())).await
    }

    /// A request with this `Authorization` value (or none).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        authorization: Option<String>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        self.reply(request.send().await).await
    }

    pub async fn get_job(&self, controller_id: &str, job_id: &str) -> Reply {
        self.read(
            reqwest::Method::GET,
            controller_id,
            &format!("/api/v1/jobs/{job_id}"),
        )
        .await
    }

    pub async fn cancel(&self, controller_id: &str, job_id: &str) -> Reply {
        self.read(
            reqwest::Method::DELETE,
            controller_id,
            &format!("/api/v1/jobs/{job_id}"),
        )
        .await
    }

    /// `GET /api/v1/jobs/:id` as the job's own controller; asserts 200.
    pub async fn view(&self, controller_id: &str, job_id: &str) -> JobView {
        let reply = self.get_job(controller_id, job_id).await;
        assert_eq!(reply.status, 200, "GET {job_id}: {}", reply.text);
        serde_json::from_str(&reply.text)
            .unwrap_or_else(|e| panic!("GET {job_id} is not a JobView ({e}): {}", reply.text))
    }

    /// Polls the job until `done` holds for it.
    pub async fn wait_for(
        &self,
        controller_id: &str,
        job_id: &str,
        what: &str,
        done: impl Fn(&JobView) -> bool,
    ) -> JobView {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let view = self.view(controller_id, job_id).await;
            if done(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} never became {what} (last: {view:?}); agent log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_running(&self, controller_id: &str, job_id: &str) -> JobView {
        self.wait_for(controller_id, job_id, "running", |v| {
            v.status == JobStatus::Running
        })
        .await
    }

    /// Waits for the job to end; returns its view with the result.
    pub async fn wait_final(&self, controller_id: &str, job_id: &str) -> JobView {
        let view = self
            .wait_for(controller_id, job_id, "final", |v| v.status.is_final())
            .await;
        assert!(
            view.result.is_some(),
            "final job without a result: {view:?}"
        );
        view
    }

    /// `GET /metrics` (no authorization); asserts 200.
    pub async fn metrics(&self) -> String {
        let reply = self.request(reqwest::Method::GET, "/metrics", None).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.text
    }
}
