//! The agent's TLS as a scanner sees it (issue 8): only TLS 1.2 and 1.3, and under 1.2 only
//! forward-secret AEAD suites; plain HTTP to the TLS port gets no HTTP answer.
//!
//! Every handshake is made by Debian's `openssl s_client` against a real agent serving an
//! RSA certificate (so RSA key exchange and CBC suites are possible at all). Each offer the
//! agent must refuse is first made to an `openssl s_server` control on the same certificate
//! that accepts anything: that proves the client really offered it, so the refusal is the
//! agent's and not the local OpenSSL's policy. `OPENSSL_CONF=/dev/null` and `@SECLEVEL=0`
//! keep the distribution's defaults from hiding old protocols.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use quickcmd_testkit::{eventually, run_bounded, Config, TestAgent, TlsFiles};

/// `openssl` or a failure that says how to get it (never a skip).
fn openssl() -> Command {
    let mut command = Command::new("openssl");
    command.env("OPENSSL_CONF", "/dev/null");
    command
}

fn check_openssl() {
    let version = Command::new("openssl").arg("version").output();
    match version {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "these tests need the openssl command-line tool; install it with \
             `apt-get install openssl` (scripts/ensure-toolchain.sh does this as root)"
        ),
    }
}

/// A 2048-bit RSA certificate for localhost and 127.0.0.1 in `dir`.
fn rsa_cert(dir: &Path) -> TlsFiles {
    let files = TlsFiles {
        cert: dir.join("rsa-cert.pem"),
        key: dir.join("rsa-key.pem"),
    };
    let out = run_bounded(
        {
            let mut c = openssl();
            c.args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&files.key)
            .arg("-out")
            .arg(&files.cert);
            c
        },
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    files
}

/// An `openssl s_server` accepting every protocol and suite OpenSSL has; killed on drop.
struct Control {
    child: Child,
    port: u16,
}

impl Control {
    fn start(files: &TlsFiles) -> Control {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = openssl()
            .args(["s_server", "-quiet", "-min_protocol", "TLSv1"])
            .args(["-cipher", "ALL:@SECLEVEL=0"])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(&files.cert)
            .arg("-key")
            .arg(&files.key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        eventually(
            Duration::from_secs(30),
            "openssl s_server to listen",
            || TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        Control { child, port }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One handshake: `(protocol, suite)` when it succeeded, otherwise `Err(output)`.
fn handshake(port: u16, args: &[&str]) -> Result<(String, String), String> {
    let mut command = openssl();
    command
        .args(["s_client", "-brief", "-servername", "localhost"])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdin(Stdio::null());
    let Output {
        status,
        stdout,
        stderr,
    } = run_bounded(command, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    match (
        status.success(),
        field("Protocol version:"),
        field("Ciphersuite:"),
    ) {
        (true, Some(protocol), Some(suite)) => Ok((protocol, suite)),
        _ => Err(text),
    }
}

/// Offers the agent must refuse: (what, s_client arguments).
const REFUSED: &[(&str, &[&str])] = &[
    ("TLS 1.0", &["-tls1", "-cipher", "ALL:@SECLEVEL=0"]),
    ("TLS 1.1", &["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"]),
    (
        "TLS 1.2, RSA key exchange (no forward secrecy)",
        &["-tls1_2", "-cipher", "AES128-GCM-SHA256:AES256-GCM-SHA384:@SECLEVEL=0"],
    ),
    (
        "TLS 1.2, CBC suites with ECDHE",
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384:@SECLEVEL=0",
        ],
    ),
    (
        "TLS 1.2, finite-field DHE",
        &["-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0"],
    ),
];

#[test]
fn only_tls12_and_13_with_forward_secret_aead_suites() {
    check_openssl();
    let dir = tempfile::tempdir().expect("temp dir");
    let files = rsa_cert(dir.path());
    let agent = TestAgent::start("tls-scan", Config::default().tls(files.clone()));
    let control = Control::start(&files);

    for (what, args) in REFUSED {
        // The control proves the offer is made.
        if let Err(output) = handshake(control.port, args) {
            panic!("the control refused {what}, so the test proves nothing: {output}");
        }
        if let Ok((protocol, suite)) = handshake(agent.port(), args) {
            panic!("the agent accepted {what}: {protocol} {suite}");
        }
    }

    // What must work: TLS 1.3, and TLS 1.2 with ECDHE and an AEAD.
    let (protocol, suite) =
        handshake(agent.port(), &["-tls1_3"]).unwrap_or_else(|e| panic!("TLS 1.3: {e}"));
    assert_eq!(protocol, "TLSv1.3", "{suite}");
    for suite in [
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ] {
        let (protocol, got) = handshake(agent.port(), &["-tls1_2", "-cipher", suite])
            .unwrap_or_else(|e| panic!("TLS 1.2 {suite}: {e}"));
        assert_eq!((protocol.as_str(), got.as_str()), ("TLSv1.2", suite));
    }
    // Unrestricted, the client gets 1.3.
    let (protocol, _) = handshake(agent.port(), &[]).unwrap_or_else(|e| panic!("default: {e}"));
    assert_eq!(protocol, "TLSv1.3");
}

#[test]
fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let agent = TestAgent::start("tls-plain", Config::default());
    let mut stream = TcpStream::connect(("127.0.0.1", agent.port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send a plain request");
    let mut answer = Vec::new();
    // Read until the agent closes (a reset counts as closed); a hang fails on the timeout.
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the agent neither answered nor closed: {e}"),
        }
    }
    assert!(
        !answer.starts_with(b"HTTP"),
        "plain HTTP got an HTTP answer: {}",
        String::from_utf8_lossy(&answer)
    );
    // Nothing, or a TLS alert record (content type 21), and then the connection closed.
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "unexpected bytes: {answer:02x?}"
    );
    // The agent still serves TLS clients afterwards.
    let health = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(agent.request(reqwest::Method::GET, "/health", None));
    assert_eq!(health.status, 200, "{}", health.text);
}
