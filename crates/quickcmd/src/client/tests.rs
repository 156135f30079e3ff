//! The client against small in-process agents that speak TLS with a generated certificate
//! and answer as scripted: retries, read auth, trust, and stream resumption.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quickcmd_protocol::{parse_submit, JobStatus, ReadAuth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::job::JobSpec;
use crate::tls::{generate_cert, GeneratedCert};

const SECRET: &str = "test-secret-0123456789";

/// One request as the mock saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}

type Handler = Arc<dyn Fn(usize, &Seen) -> Reply + Send + Sync>;

struct Mock {
    port: u16,
    cert: GeneratedCert,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

fn acceptor(cert: &GeneratedCert) -> TlsAcceptor {
    let certs = rustls_pemfile::certs(&mut cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert pem");
    let key = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
        .expect("key pem")
        .expect("a key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    TlsAcceptor::from(Arc::new(config))
}

/// An HTTPS server that answers every request with `handler(index, request)`.
async fn start_http(handler: Handler) -> Mock {
    let cert = generate_cert(&["localhost".into(), "127.0.0.1".into()], 1).expect("cert");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let acceptor = acceptor(&cert);
    let (task_seen, task_connections) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            task_connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, handler, seen) = (acceptor.clone(), handler.clone(), task_seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buffer = Vec::new();
                let head_end = loop {
                    let mut chunk = [0u8; 4096];
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
                let mut lines = head.lines();
                let request_line = lines.next().unwrap_or_default().to_string();
                let mut parts = request_line.split(' ');
                let method = parts.next().unwrap_or_default().to_string();
                let target = parts.next().unwrap_or_default().to_string();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(": "))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let length = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = buffer[head_end..].to_vec();
                while body.len() < length {
                    let mut chunk = [0u8; 4096];
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                let request = Seen {
                    method,
                    target,
                    headers,
                    body,
                };
                let index = {
                    let mut seen = seen.lock().expect("lock");
                    seen.push(request.clone());
                    seen.len() - 1
                };
                let answer = handler(index, &request);
                let mut text = format!(
                    "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                    answer.status,
                    answer.body.len()
                );
                for (k, v) in &answer.headers {
                    text.push_str(&format!("{k}: {v}\r\n"));
                }
                text.push_str("\r\n");
                text.push_str(&answer.body);
                let _ = tls.write_all(text.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Mock {
        port,
        cert,
        seen,
        connections,
    }
}

fn fast_options() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            delays: vec![Duration::from_millis(10); 3],
            max_retry_after: Duration::from_millis(50),
        },
        stream: StreamOptions {
            idle_timeout: Duration::from_secs(5),
            reconnect_delays: vec![Duration::from_millis(10); 3],
            max_resumes: 10,
        },
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        on_retry: None,
        poll_interval: Duration::from_millis(10),
    }
}

fn pinned(cert: &GeneratedCert) -> Trust {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cert.pem");
    std::fs::write(&path, &cert.cert_pem).expect("write");
    Trust::pinned_from_file(&path).expect("pin")
}

fn client_for(port: u16, trust: Trust) -> Client {
    Client::new(
        AgentEndpoint {
            name: "mock".into(),
            url: format!("https://127.0.0.1:{port}").parse().expect("url"),
            controller_id: "ctl-1".into(),
            secret: Secret::from_text(SECRET).expect("secret"),
            trust,
        },
        fast_options(),
    )
    .expect("client")
}

fn view_json(job_id: &str, status: &str) -> String {
    format!(r#"{{"job_id":"{job_id}","status":"{status}","result":null}}"#)
}

#[tokio::test]
async fn submit_retries_resend_the_same_signed_body() {
    let mock = start_http(Arc::new(|index, request: &Seen| match index {
        0 => reply(503, r#"{"error":"busy","code":"INTERNAL"}"#),
        1 => Reply {
            status: 429,
            headers: vec![("retry-after", "0".into())],
            body: r#"{"error":"queue full","code":"QUEUE_FULL"}"#.into(),
        },
        _ => {
            let job = parse_submit(&request.body).expect("agent parses the body");
            reply(
                202,
                &format!(
                    r#"{{"job_id":"{}","status":"pending"}}"#,
                    job.payload.job_id
                ),
            )
        }
    }))
    .await;
    let client = client_for(mock.port, pinned(&mock.cert));
    let job = client
        .sign(&JobSpec::new("echo hi"), &crate::job::new_job_id())
        .expect("sign");
    let answer = client.submit(&job).await.expect("submitted");
    assert_eq!(answer.job_id, job.job_id);
    assert_eq!(answer.status, JobStatus::Pending);
    let seen = mock.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request.method, "POST");
        assert_eq!(request.target, "/api/v1/jobs");
        assert_eq!(request.body, job.body.as_bytes(), "same bytes every time");
        assert_eq!(request.header("content-type"), Some("application/json"));
    }
}

#[tokio::test]
async fn submit_never_retries_other_4xx() {
    let mock = start_http(Arc::new(|_, _: &Seen| {
        reply(
            401,
            r#"{"error":"signature does not verify","code":"INVALID_SIGNATURE"}"#,
        )
    }))
    .await;
    let client = client_for(mock.port, pinned(&mock.cert));
    let job = client.sign(&JobSpec::new("true"), "job-1").expect("sign");
    let error = client.submit(&job).await.expect_err("refused");
    assert_eq!(error.status(), Some(401));
    assert_eq!(
        error.code(),
        Some(quickcmd_protocol::ErrorCode::InvalidSignature)
    );
    assert_eq!(mock.seen.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn reads_carry_read_auth_over_the_path_without_query() {
    let mock = start_http(Arc::new(|_, request: &Seen| {
        if request.target.starts_with("/api/v1/jobs?") {
            reply(200, r#"{"jobs":[]}"#)
        } else if request.method == "DELETE" {
            reply(202, r#"{"job_id":"job-7","status":"running"}"#)
        } else {
            reply(200, &view_json("job-7", "running"))
        }
    }))
    .await;
    let client = client_for(mock.port, pinned(&mock.cert));
    let view = client.status("job-7").await.expect("status");
    assert_eq!(view.status, JobStatus::Running);
    client
        .list(Some(JobStatus::Completed), Some(5))
        .await
        .expect("list");
    client.cancel("job-7").await.expect("cancel");
    assert!(matches!(
        client.status("../etc").await,
        Err(ClientError::InvalidJobId(_))
    ));
    let seen = mock.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3);
    let expectations = [
        ("GET", "/api/v1/jobs/job-7"),
        ("GET", "/api/v1/jobs"),
        ("DELETE", "/api/v1/jobs/job-7"),
    ];
    for (request, (method, path)) in seen.iter().zip(expectations) {
        let auth = ReadAuth::parse_header(request.header("authorization").expect("auth header"))
            .expect("auth parses");
        assert_eq!(auth.controller_id, "ctl-1");
        assert!(
            auth.verify(SECRET.as_bytes(), method, path),
            "{method} {path}"
        );
        assert!((auth.timestamp - crate::job::unix_now()).abs() < 5);
    }
    assert_eq!(seen[1].target, "/api/v1/jobs?status=completed&limit=5");
}

#[tokio::test]
async fn wait_polls_until_final() {
    let mock = start_http(Arc::new(|index, _: &Seen| {
        if index < 2 {
            reply(200, &view_json("j", "running"))
        } else {
            reply(
                200,
                r#"{"job_id":"j","status":"failed","result":{"job_id":"j","status":"failed","sandbox_id":"s","exit_code":124,"stdout":"","stderr":"","start_time":"t","end_time":"t","duration_ms":5,"reason":"timeout"}}"#,
            )
        }
    }))
    .await;
    let client = client_for(mock.port, pinned(&mock.cert));
    let result = client
        .wait("j", Some(Duration::from_secs(5)))
        .await
        .expect("result");
    assert_eq!(result.exit_code, 124);
    assert_eq!(result.reason.as_deref(), Some("timeout"));
    assert_eq!(mock.seen.lock().expect("lock").len(), 3);
}

#[tokio::test]
async fn health_reports_round_trip() {
    let mock = start_http(Arc::new(|_, _: &Seen| {
        reply(
            200,
            r#"{"status":"healthy","timestamp":1,"version":"0.1.0","agent_id":"agent-a","running_jobs":2}"#,
        )
    }))
    .await;
    let client = client_for(mock.port, pinned(&mock.cert));
    let report = client.health().await.expect("health");
    assert_eq!(report.health.agent_id.as_deref(), Some("agent-a"));
    assert_eq!(report.health.running_jobs, Some(2));
    assert!(report.round_trip < Duration::from_secs(5));
}

#[tokio::test]
async fn trust_is_enforced_and_tls_errors_are_not_retried() {
    let mock = start_http(Arc::new(|_, _: &Seen| {
        reply(200, &view_json("j", "running"))
    }))
    .await;
    let other = generate_cert(&["localhost".into()], 1).expect("cert");

    let wrong_pin = client_for(mock.port, pinned(&other));
    let error = wrong_pin.status("j").await.expect_err("wrong pin");
    assert!(matches!(error, ClientError::Tls { .. }), "{error:?}");
    assert_eq!(
        mock.connections.load(Ordering::SeqCst),
        1,
        "no retry on TLS errors"
    );

    let public = client_for(mock.port, Trust::PublicRoots);
    assert!(matches!(
        public.status("j").await,
        Err(ClientError::Tls { .. })
    ));

    let insecure = client_for(mock.port, Trust::Insecure);
    insecure.status("j").await.expect("insecure accepts");
    let right_pin = client_for(mock.port, pinned(&mock.cert));
    right_pin.status("j").await.expect("pinned accepts");
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let client = client_for(port, Trust::Insecure);
    let error = client.status("j").await.expect_err("refused");
    assert!(matches!(error, ClientError::ConnectionRefused), "{error:?}");
    assert!(error.is_unreachable());
}

// --- WebSocket ---

/// What one WebSocket connection of the mock does.
enum Script {
    /// Send these frames, then end the connection this way.
    Frames(Vec<String>, End),
    /// Refuse the upgrade with this status and body.
    Refuse(u16, &'static str),
}

enum End {
    /// Drop the TCP connection without a close frame.
    Drop,
    /// Send a close frame with this code.
    Close(u16),
}

fn frame(job: &str, seq: u64, data: &str) -> String {
    format!(
        r#"{{"job_id":"{job}","timestamp":"2025-01-01T00:00:00.000Z","stream":"stdout","data":"{data}","final":false,"seq":{seq}}}"#
    )
}

fn final_frame(job: &str, seq: u64) -> String {
    format!(
        r#"{{"job_id":"{job}","timestamp":"2025-01-01T00:00:00.000Z","stream":"stdout","data":"","final":true,"seq":{seq},"status":"completed","exit_code":0}}"#
    )
}

type WsHandler = Arc<dyn Fn(usize, &str) -> Script + Send + Sync>;

/// A WebSocket server; records each upgrade's URI and Authorization header.
// tungstenite's handshake callback returns its large `ErrorResponse` by value.
#[allow(clippy::result_large_err)]
async fn start_ws(handler: WsHandler) -> (u16, GeneratedCert, Arc<Mutex<Vec<(String, String)>>>) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    let cert = generate_cert(&["127.0.0.1".into()], 1).expect("cert");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let acceptor = acceptor(&cert);
    let task_seen = seen.clone();
    tokio::spawn(async move {
        let mut index = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let this = index;
            index += 1;
            let (handler, seen) = (handler.clone(), task_seen.clone());
            let script = Arc::new(Mutex::new(None));
            let script_slot = script.clone();
            let callback = move |request: &Request, response: Response| {
                let uri = request.uri().to_string();
                let auth = request
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                seen.lock().expect("lock").push((uri.clone(), auth));
                match handler(this, &uri) {
                    Script::Refuse(status, body) => {
                        let mut refusal = ErrorResponse::new(Some(body.to_string()));
                        *refusal.status_mut() =
                            tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status)
                                .expect("status");
                        Err(refusal)
                    }
                    script => {
                        *script_slot.lock().expect("lock") = Some(script);
                        Ok(response)
                    }
                }
            };
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(tls, callback).await
                else {
                    return;
                };
                let Some(Script::Frames(frames, end)) = script.lock().expect("lock").take() else {
                    return;
                };
                for text in frames {
                    if socket.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
                match end {
                    End::Drop => drop(socket),
                    End::Close(code) => {
                        let _ = socket
                            .send(Message::Close(Some(CloseFrame {
                                code: CloseCode::from(code),
                                reason: "".into(),
                            })))
                            .await;
                        // Let the close reach the client before the socket goes.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            });
        }
    });
    (port, cert, seen)
}

async fn collect(stream: &mut LogStream) -> Result<Vec<u64>, ClientError> {
    let mut seqs = Vec::new();
    while let Some(frame) = stream.next().await? {
        seqs.push(frame.seq);
    }
    Ok(seqs)
}

#[tokio::test]
async fn stream_resumes_with_since_after_a_drop() {
    let (port, cert, seen) = start_ws(Arc::new(|index, _uri| match index {
        0 => Script::Frames(
            vec![frame("j", 1, "a"), frame("j", 2, "b"), frame("j", 3, "c")],
            End::Drop,
        ),
        // The agent may resend what we already have; it must not be delivered twice.
        _ => Script::Frames(
            vec![frame("j", 3, "c"), frame("j", 4, "d"), final_frame("j", 5)],
            End::Close(1000),
        ),
    }))
    .await;
    let client = client_for(port, pinned(&cert));
    let mut stream = client.stream("j", 0);
    assert_eq!(
        collect(&mut stream).await.expect("frames"),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(stream.reconnects(), 1);
    assert_eq!(stream.duplicates(), 1);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen[0].0, "/api/v1/stream/j");
    assert_eq!(seen[1].0, "/api/v1/stream/j?since=3");
    for (_, auth) in &seen {
        let auth = ReadAuth::parse_header(auth).expect("auth");
        assert!(auth.verify(SECRET.as_bytes(), "GET", "/api/v1/stream/j"));
    }
}

#[tokio::test]
async fn stream_resumes_after_falling_behind() {
    let (port, cert, seen) = start_ws(Arc::new(|index, _uri| match index {
        0 => Script::Frames(vec![frame("j", 1, "a")], End::Close(1008)),
        _ => Script::Frames(
            vec![frame("j", 2, "b"), final_frame("j", 3)],
            End::Close(1000),
        ),
    }))
    .await;
    let client = client_for(port, pinned(&cert));
    let mut stream = client.stream("j", 0);
    assert_eq!(collect(&mut stream).await.expect("frames"), vec![1, 2, 3]);
    assert_eq!(seen.lock().expect("lock")[1].0, "/api/v1/stream/j?since=1");
}

#[tokio::test]
async fn stream_refused_at_upgrade_is_an_api_error() {
    let (port, cert, seen) = start_ws(Arc::new(|_, _| {
        Script::Refuse(401, r#"{"error":"bad auth","code":"UNAUTHORIZED"}"#)
    }))
    .await;
    let client = client_for(port, pinned(&cert));
    let error = collect(&mut client.stream("j", 0))
        .await
        .expect_err("refused");
    assert_eq!(error.status(), Some(401), "{error:?}");
    assert_eq!(
        error.code(),
        Some(quickcmd_protocol::ErrorCode::Unauthorized)
    );
    assert_eq!(seen.lock().expect("lock").len(), 1, "no retry on 401");
}

#[tokio::test]
async fn stream_gives_up_after_repeated_failures() {
    let (port, cert, seen) = start_ws(Arc::new(|_, _| Script::Frames(Vec::new(), End::Drop))).await;
    let client = client_for(port, pinned(&cert));
    let error = collect(&mut client.stream("j", 0)).await.expect_err("lost");
    assert!(matches!(error, ClientError::StreamLost { .. }), "{error:?}");
    // The first connection and one per reconnect delay.
    assert_eq!(seen.lock().expect("lock").len(), 4);
}
