//! Hostile peers against the real agent binary over real TLS: connections that send half a
//! request header or half a body, or nothing at all; more connections than the cap; a
//! WebSocket subscriber that never reads; a burst of `/health`; a secret file others may
//! read. Each test fails on an agent without the matching defence (it would hang until the
//! harness's patience runs out, or start when it must refuse).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use quickcmd_testkit::{metric, unique, Config, TestAgent, PATIENCE, SHARED_SECRET};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// A TLS client that trusts only the certificate the harness gave this agent.
fn connector(agent: &TestAgent) -> TlsConnector {
    let pem = std::fs::read(agent.dir.path().join("cert.pem")).expect("read the test certificate");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.expect("the test certificate is PEM"))
            .expect("the test certificate is a trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

fn address(agent: &TestAgent) -> String {
    agent
        .base
        .strip_prefix("https://")
        .expect("the agent serves https")
        .to_string()
}

/// A TCP connection with a finished TLS handshake (so the agent holds a slot for it).
async fn try_open_tls(
    agent: &TestAgent,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address(agent)).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("an IP is a name");
    tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .expect("TLS handshake hung")
}

async fn open_tls(agent: &TestAgent, connector: &TlsConnector) -> TlsStream<TcpStream> {
    try_open_tls(agent, connector)
        .await
        .unwrap_or_else(|e| panic!("TLS connect: {e}; agent log:\n{}", agent.log()))
}

/// Reads until the agent closes the connection (end of stream or a reset) and returns what
/// it sent; panics if the connection stays open past the harness's patience.
async fn read_until_closed(mut stream: TlsStream<TcpStream>) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the agent kept the connection open for {PATIENCE:?}"
    );
    received
}

async fn counter(agent: &TestAgent, name: &str) -> f64 {
    metric(&agent.metrics().await, name).unwrap_or(0.0)
}

/// Idle connections a slowloris holds at once (issue 8: "500 idle connections").
const SLOWLORIS_CONNECTIONS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_half_sent_headers_are_closed_by_the_header_timeout_while_requests_succeed() {
    // Long enough that every connection is still held while the normal requests run.
    let agent = TestAgent::start(
        "half-headers",
        Config::default().set("header_read_timeout_seconds", json!(20)),
    );
    let connector = connector(&agent);
    let mut held = Vec::new();
    for _ in 0..SLOWLORIS_CONNECTIONS {
        let mut tls = open_tls(&agent, &connector).await;
        tls.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
            .await
            .expect("send half a header");
        tls.flush().await.expect("flush");
        held.push(tls);
    }
    let open = counter(&agent, "quickcmd_agent_connections_open").await;
    // While they are all held: health, a signed submission, its run and a signed read.
    let health = agent.request(reqwest::Method::GET, "/health", None).await;
    assert_eq!(health.status, 200, "{}", health.text);
    let job_id = unique("served");
    agent.submit("ctl-a", &job_id, "echo served").await;
    let view = agent.wait_final("ctl-a", &job_id).await;
    assert_eq!(view.result.expect("result").stdout, "served\n");
    let still_open = counter(&agent, "quickcmd_agent_connections_open").await;
    assert!(
        open > SLOWLORIS_CONNECTIONS as f64 && still_open > 0.0,
        "the idle connections were not all held at once ({open} open)"
    );

    let answers = futures_util::future::join_all(held.into_iter().map(read_until_closed)).await;
    for answer in answers {
        assert!(
            answer.is_empty(),
            "a half header got an answer: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let timed_out = counter(
        &agent,
        "quickcmd_agent_connections_timed_out_total{reason=\"header\"}",
    )
    .await;
    assert!(
        timed_out >= SLOWLORIS_CONNECTIONS as f64,
        "header timeouts counted: {timed_out}"
    );
    // Only the harness's own connection is left.
    assert!(counter(&agent, "quickcmd_agent_connections_open").await <= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_sent_body_is_closed_without_an_answer_and_no_audit_row() {
    let agent = TestAgent::start(
        "half-body",
        Config::default().set("body_read_timeout_seconds", json!(1)),
    );
    let connector = connector(&agent);
    let rows_before = agent.audit_rows().len();
    let mut tls = open_tls(&agent, &connector).await;
    tls.write_all(
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"payload\": ",
    )
    .await
    .expect("send a header and a piece of the body");
    tls.flush().await.expect("flush");
    let answer = read_until_closed(tls).await;
    assert!(
        answer.is_empty(),
        "a half body got an answer: {}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        counter(
            &agent,
            "quickcmd_agent_connections_timed_out_total{reason=\"body\"}"
        )
        .await,
        1.0
    );
    assert_eq!(agent.audit_rows().len(), rows_before, "no request, no row");
    agent.wait_log("request body not received in time", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_connection_is_closed_by_the_idle_timeout() {
    // A long header timeout, so only the idle timeout can close it.
    let agent = TestAgent::start(
        "idle",
        Config::default()
            .set("header_read_timeout_seconds", json!(3600))
            .set("idle_timeout_seconds", json!(1)),
    );
    let connector = connector(&agent);
    let silent = open_tls(&agent, &connector).await;
    assert!(read_until_closed(silent).await.is_empty());
    let idle = counter(
        &agent,
        "quickcmd_agent_connections_timed_out_total{reason=\"idle\"}",
    )
    .await;
    assert!(idle >= 1.0, "idle closes counted: {idle}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_cap_are_closed_while_the_open_ones_are_served() {
    let agent = TestAgent::start(
        "conn-cap",
        Config::default()
            .set("max_connections", json!(8))
            .set("header_read_timeout_seconds", json!(3600))
            .set("idle_timeout_seconds", json!(3600)),
    );
    let connector = connector(&agent);
    // The harness's client takes one slot and keeps its connection.
    let first = agent.request(reqwest::Method::GET, "/health", None).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let mut held = Vec::new();
    for _ in 0..7 {
        held.push(open_tls(&agent, &connector).await);
    }
    // The ninth gets no TLS session: the agent closes it as soon as it is accepted.
    for _ in 0..3 {
        let refused = try_open_tls(&agent, &connector).await;
        assert!(
            refused.is_err(),
            "a connection over max_connections was served"
        );
    }
    agent
        .wait_log("connection refused: max_connections are open", 1)
        .await;
    // The connections that were let in are still served.
    let metrics = agent.metrics().await;
    assert_eq!(
        metric(&metrics, "quickcmd_agent_connections_refused_total"),
        Some(3.0)
    );
    assert_eq!(
        metric(&metrics, "quickcmd_agent_connections_open"),
        Some(8.0)
    );
    let mut one = held.pop().expect("seven held");
    one.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("send a request");
    let answer = String::from_utf8_lossy(&read_until_closed(one).await).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Its slot is free again once it closed.
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    while counter(&agent, "quickcmd_agent_connections_open").await > 1.0 {
        assert!(Instant::now() < deadline, "slots were not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    open_tls(&agent, &connector).await;
}

/// Output of the job whose subscriber never reads (issue 8: "a job prints 200 MB").
const NEVER_READ_BYTES: u64 = 200_000_000;
/// How much the agent's RSS may grow meanwhile: bounded by buffers, not by the output.
const RSS_GROWTH_BOUND_KIB: u64 = 100 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriber_that_never_reads_200_mb_is_dropped_while_the_agent_stays_bounded() {
    let agent = TestAgent::start(
        "ws-stuck",
        Config::default().set("stream_send_timeout_seconds", json!(1)),
    );
    let job_id = unique("stuck");
    // Far more output than the socket buffers between agent and subscriber hold.
    agent
        .submit(
            "ctl-a",
            &job_id,
            &format!("sleep 2; head -c {NEVER_READ_BYTES} /dev/zero | tr '\\0' x"),
        )
        .await;
    let mut ws = agent.subscribe("ctl-a", &job_id, None).await;
    // While the job prints: the agent answers others, and its memory stays bounded.
    let baseline_kib = agent.rss_kib();
    let mut peak_kib = baseline_kib;
    let mut health_answers = 0;
    let deadline = Instant::now() + PATIENCE;
    loop {
        peak_kib = peak_kib.max(agent.rss_kib());
        let health = agent.request(reqwest::Method::GET, "/health", None).await;
        assert_eq!(health.status, 200, "{}", health.text);
        health_answers += 1;
        if agent.view("ctl-a", &job_id).await.status.is_final() {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = agent.wait_final("ctl-a", &job_id).await;
    let result = view.result.expect("a final job has a result");
    assert_eq!(
        view.status,
        quickcmd_protocol::JobStatus::Completed,
        "{result:?}"
    );
    assert!(
        peak_kib < baseline_kib + RSS_GROWTH_BOUND_KIB,
        "agent RSS grew from {baseline_kib} KiB to {peak_kib} KiB while a job printed \
         {NEVER_READ_BYTES} bytes to a subscriber that never reads"
    );
    eprintln!(
        "never-reading subscriber: {NEVER_READ_BYTES} bytes, agent RSS {baseline_kib} -> peak \
         {peak_kib} KiB, {health_answers} health answers meanwhile"
    );
    let deadline = Instant::now() + PATIENCE;
    while counter(
        &agent,
        "quickcmd_agent_connections_timed_out_total{reason=\"stream_send\"}",
    )
    .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the stuck subscriber was never given up on; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What was in flight can still be read, then the stream ends: with close 1008 when it
    // still fitted into the socket, or with the connection gone.
    let mut close_code = None;
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => {
                    close_code = frame.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open");
    assert!(
        close_code.is_none() || close_code == Some(1008),
        "closed with {close_code:?}"
    );
    let deadline = Instant::now() + PATIENCE;
    while counter(&agent, "quickcmd_agent_websocket_subscribers").await > 0.0 {
        assert!(Instant::now() < deadline, "the subscriber task lives on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_messages_from_a_client_are_size_limited() {
    let agent = TestAgent::start("ws-big", Config::default());
    let job_id = unique("big");
    agent.submit("ctl-a", &job_id, "sleep 20").await;
    let mut ws = agent.subscribe("ctl-a", &job_id, None).await;
    use futures_util::SinkExt;
    let _ = ws.send(Message::Text("x".repeat(1024 * 1024).into())).await;
    // Refused at once: the stream ends before the job does (an agent that took the message
    // would go on to send the final frame once the job is cancelled).
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(Message::Text(text))) if text.contains("\"final\":true") => {
                    return Some(text.to_string())
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(ended.ok(), Some(None), "a 1 MiB client message was taken");
    agent.cancel("ctl-a", &job_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_checks_are_shared_by_a_burst_of_callers() {
    let agent = TestAgent::start("health-burst", Config::default());
    let before = counter(&agent, "quickcmd_agent_health_checks_total").await;
    let started = Instant::now();
    let answers = futures_util::future::join_all(
        (0..100).map(|_| agent.request(reqwest::Method::GET, "/health", None)),
    )
    .await;
    let elapsed = started.elapsed();
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    let checks = counter(&agent, "quickcmd_agent_health_checks_total").await - before;
    // One check per started second at most, whatever the speed of this machine.
    let bound = elapsed.as_secs_f64().ceil() + 1.0;
    assert!(
        checks >= 1.0 && checks <= bound,
        "{checks} checks for 100 calls in {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_file_readable_by_others_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let mut agent = TestAgent::prepare("secret-mode", Config::default().shared(&["ctl-s"]));
    let secret_file = agent.dir.path().join("hmac.secret");
    std::fs::write(&secret_file, format!("{SHARED_SECRET}\n")).expect("write the secret");
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644))
        .expect("chmod 644");
    let mut yaml: serde_yaml::Value =
        serde_yaml::from_str(&agent.config_text()).expect("the harness writes YAML");
    let map = yaml.as_mapping_mut().expect("a mapping");
    map.remove("hmac_secret").expect("a shared secret");
    map.insert(
        "hmac_secret_file".into(),
        secret_file.display().to_string().into(),
    );
    agent.write_config_text(&serde_yaml::to_string(&yaml).expect("YAML"));

    let status = agent.spawn_expecting_exit(PATIENCE);
    assert_eq!(status.code(), Some(2), "log:\n{}", agent.log());
    let log = agent.log();
    for needle in [
        "hmac_secret_file",
        "readable or writable by group or others (mode 644)",
        &format!("chmod 600 {}", secret_file.display()),
    ] {
        assert!(log.contains(needle), "{needle:?} missing from:\n{log}");
    }

    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod 600");
    agent.spawn();
    let health = agent.request(reqwest::Method::GET, "/health", None).await;
    assert_eq!(health.status, 200, "{}", health.text);
}
