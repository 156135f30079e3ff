//! The two kinds of traffic: signed submissions (one worker per connection, each with a
//! client of its own) and the unauthenticated flood. Both record every answer; nothing here
//! judges, `main` does.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quickcmd_testkit::{payload, signed_body, unique};

/// The longest a refused worker waits before trying again, whatever `Retry-After` says (the
/// load must keep the queue full to test its bound).
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often a signed phase prints how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// A signed job that got its 202.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) job_id: String,
    pub(crate) controller_id: String,
}

/// What the signed workers saw.
#[derive(Debug, Default)]
pub(crate) struct SignedRecord {
    /// Round-trip times of the submissions that were answered 202.
    pub(crate) latencies: Vec<Duration>,
    pub(crate) accepted: Vec<Accepted>,
    pub(crate) refused_429: usize,
    /// Violations: anything but 202 or 429 + `Retry-After`, and transport errors.
    pub(crate) violations: Vec<String>,
}

/// One client per connection: its pool keeps one HTTP/1.1 connection to the agent.
fn client() -> reqwest::Client {
    quickcmd_testkit::tls::http_client()
}

/// Submits `jobs` signed jobs over `connections` connections; a 429 is retried (same job)
/// after `Retry-After`, capped at [`MAX_BACKOFF`].
pub(crate) async fn signed_phase(
    base: &str,
    controllers: &[(String, String)],
    phase: &str,
    jobs: usize,
    connections: usize,
) -> SignedRecord {
    let record = Arc::new(Mutex::new(SignedRecord::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (base, controllers, phase) =
            (base.to_string(), controllers.to_vec(), phase.to_string());
        let (record, next) = (record.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let http = client();
            let url = format!("{base}/api/v1/jobs");
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= jobs {
                    return;
                }
                let (controller_id, secret) = &controllers[n % controllers.len()];
                let job_id = unique(&format!("load-{phase}"));
                let body = signed_body(
                    &payload(controller_id, &job_id, &format!("echo {job_id}")),
                    secret,
                );
                loop {
                    let started = Instant::now();
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let elapsed = started.elapsed();
                    let response = match sent {
                        Ok(response) => response,
                        Err(error) => {
                            let mut r = record.lock().unwrap_or_else(|p| p.into_inner());
                            r.violations
                                .push(format!("{job_id}: transport error {error}"));
                            break;
                        }
                    };
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let text = response.text().await.unwrap_or_default();
                    let backoff = {
                        let mut r = record.lock().unwrap_or_else(|p| p.into_inner());
                        match (status, retry_after) {
                            (202, _) => {
                                r.latencies.push(elapsed);
                                r.accepted.push(Accepted {
                                    job_id: job_id.clone(),
                                    controller_id: controller_id.clone(),
                                });
                                None
                            }
                            (429, Some(seconds)) if seconds >= 1 => {
                                r.refused_429 += 1;
                                Some(Duration::from_secs(seconds).min(MAX_BACKOFF))
                            }
                            _ => {
                                r.violations.push(format!(
                                    "{job_id}: {status} (Retry-After {retry_after:?}) {text}"
                                ));
                                None
                            }
                        }
                    };
                    match backoff {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => break,
                    }
                }
            }
        }));
    }
    // Progress on long runs: one line every PROGRESS_EVERY.
    let progress = tokio::spawn({
        let (record, phase) = (record.clone(), phase.to_string());
        let started = Instant::now();
        async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let r = record.lock().unwrap_or_else(|p| p.into_inner());
                println!(
                    "  {phase}: {} of {jobs} accepted, {} 429s, {} violations, {:.0} s",
                    r.accepted.len(),
                    r.refused_429,
                    r.violations.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
    });
    for worker in workers {
        if let Err(error) = worker.await {
            let mut r = record.lock().unwrap_or_else(|p| p.into_inner());
            r.violations
                .push(format!("a signed worker failed: {error}"));
        }
    }
    progress.abort();
    let _ = progress.await;
    Arc::try_unwrap(record)
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .unwrap_or_default()
}

/// An error with its sources, e.g. `error sending request: connection error: GOAWAY`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What the flood saw.
#[derive(Debug, Default)]
pub(crate) struct FloodRecord {
    pub(crate) sent: usize,
    /// Answers by status.
    pub(crate) by_status: std::collections::BTreeMap<u16, usize>,
    /// Transport errors: a refused oversize body may be cut off while it is being sent, and
    /// a connection the agent closed ends the request on it.
    pub(crate) transport_errors: usize,
    /// What the first few of them said.
    pub(crate) cut_off_examples: Vec<String>,
    pub(crate) violations: Vec<String>,
}

/// Three kinds of unauthenticated garbage, in turn: a well-formed body signed by a
/// controller the agent does not know, bytes that are not JSON, a body over 1 MiB.
fn garbage(n: usize) -> (Vec<u8>, u16) {
    match n % 3 {
        0 => {
            let job_id = unique("intruder");
            let body = signed_body(
                &payload("intruder", &job_id, "cat /etc/shadow"),
                "not-the-secret",
            );
            (body.into_bytes(), 403)
        }
        1 => (b"{\"payload\": {\"job_id\": [unterminated".to_vec(), 400),
        _ => (vec![b'x'; 1024 * 1024 + 1], 413),
    }
}

/// Sends garbage over `connections` connections until `stop` is set.
pub(crate) async fn flood(base: String, connections: usize, stop: Arc<AtomicBool>) -> FloodRecord {
    let record = Arc::new(Mutex::new(FloodRecord::default()));
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let (base, stop, record) = (base.clone(), stop.clone(), record.clone());
        tasks.push(tokio::spawn(async move {
            let mut http = client();
            let url = format!("{base}/api/v1/jobs");
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                let (body, expected) = garbage(n);
                n += 1;
                let sent = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let mut r = record.lock().unwrap_or_else(|p| p.into_inner());
                r.sent += 1;
                match sent {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        *r.by_status.entry(status).or_default() += 1;
                        if status != expected {
                            r.violations
                                .push(format!("garbage answered {status}, expected {expected}"));
                        }
                    }
                    // The agent may end a flooder's connection (a refused 1 MiB body is
                    // never read; HTTP/2 resets the stream, and a peer whose streams keep
                    // being reset is sent GOAWAY): counted, with the first few causes
                    // kept, and a new connection made. Signed workers get no such leeway.
                    Err(error) => {
                        r.transport_errors += 1;
                        if r.cut_off_examples.len() < 3 {
                            r.cut_off_examples
                                .push(format!("garbage ({expected}): {}", error_chain(&error)));
                        }
                        drop(r);
                        http = client();
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Arc::try_unwrap(record)
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .unwrap_or_default()
}
