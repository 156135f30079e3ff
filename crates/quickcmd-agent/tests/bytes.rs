//! Protocol v1.1 exact bytes through the real agent and Docker: stdin in, `?encoding=base64`
//! out on `GET /api/v1/jobs/:id` and the WebSocket, `requested_by` stored and read back,
//! and `GET /api/v1/whoami`.

use quickcmd_protocol::{Encoding, JobStatus, ReadAuth};
use quickcmd_testkit::{now, payload, read_to_close, sha256_hex, unique, Config, TestAgent};
use reqwest::Method;

/// Bytes that are not UTF-8, a character split by the write, and a NUL.
const ODD: &[u8] = b"caf\xc3\xa9 \xff\xfe\x00 half:\xe2\x82";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_goes_in_and_exact_bytes_come_out_in_base64() {
    let agent = TestAgent::start("bytes", Config::default());
    let job_id = unique("bytes");
    let mut job = payload("ctl-a", &job_id, "cat; printf 'e\\377' >&2");
    job.stdin = Some(ODD.to_vec());
    job.requested_by = Some("ann@laptop".into());
    agent.post(agent.body(&job)).await.assert_accepted(&job_id);
    let view = agent.wait_final("ctl-a", &job_id).await;
    assert_eq!(view.status, JobStatus::Completed, "{view:?}");
    assert_eq!(view.requested_by.as_deref(), Some("ann@laptop"));

    let reply = agent
        .read(
            Method::GET,
            "ctl-a",
            &format!("/api/v1/jobs/{job_id}?encoding=base64"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let result = &reply.json()["result"];
    let stdout = Encoding::Base64
        .decode(result["stdout"].as_str().unwrap_or("-"))
        .ok();
    let stderr = Encoding::Base64
        .decode(result["stderr"].as_str().unwrap_or("-"))
        .ok();
    assert_eq!(stdout.as_deref(), Some(ODD));
    assert_eq!(stderr.as_deref(), Some(&b"e\xff"[..]));
    assert_eq!(result["stdout_sha256"], sha256_hex(ODD));
    assert_eq!(result["stdout_bytes"], ODD.len());

    // Text stays the default: the same output, bad bytes as U+FFFD.
    let text = agent.view("ctl-a", &job_id).await;
    let text = text.result.expect("result");
    assert_eq!(text.stdout, String::from_utf8_lossy(ODD));
    let explicit = agent
        .read(
            Method::GET,
            "ctl-a",
            &format!("/api/v1/jobs/{job_id}?encoding=text"),
        )
        .await;
    assert_eq!(explicit.json()["result"]["stdout"], text.stdout);

    // The WebSocket replay of the stored frames, both ways.
    let ws = agent
        .ws_connect(
            &job_id,
            "encoding=base64",
            Some(auth("ctl-a", &agent, &job_id)),
        )
        .await
        .expect("connect");
    let transcript = read_to_close(ws).await;
    let bytes: Vec<u8> = transcript
        .frames
        .iter()
        .filter(|f| f.stream.as_str() == "stdout")
        .flat_map(|f| {
            Encoding::Base64
                .decode(&f.data)
                .unwrap_or_else(|e| panic!("{e}: {f:?}"))
        })
        .collect();
    assert_eq!(bytes, ODD);
    assert_eq!(transcript.frames.last().map(|f| f.is_final), Some(true));

    // Anything else is refused before the upgrade.
    let bad = agent
        .read(
            Method::GET,
            "ctl-a",
            &format!("/api/v1/jobs/{job_id}?encoding=hex"),
        )
        .await;
    bad.assert_error(400, "INVALID_PAYLOAD");
    assert!(bad.text.contains("`encoding` is `hex`"), "{}", bad.text);

    // The list carries requested_by too.
    let list = agent.read(Method::GET, "ctl-a", "/api/v1/jobs").await;
    let jobs = list.json()["jobs"].clone();
    let mine = jobs
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["job_id"] == job_id.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(mine["requested_by"], "ann@laptop", "{jobs}");

    // Every audit row of the job names who it was for.
    let rows = agent.audit_for(&job_id);
    let kinds: Vec<&str> = rows
        .iter()
        .filter(|row| row["details"]["requested_by"] == "ann@laptop")
        .filter_map(|row| row["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["submission", "state_change", "result"], "{rows:?}");

    // The operator's table: a header row, and the column.
    let out = agent
        .cli()
        .args(["audit", "list"])
        .output()
        .expect("run audit list");
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains("KIND") && header.contains("REQUESTED BY"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|line| line.contains(&job_id) && line.contains("ann@laptop")),
        "{table}"
    );
}

fn auth(controller_id: &str, agent: &TestAgent, job_id: &str) -> String {
    ReadAuth::sign(
        controller_id,
        agent.secret_of(controller_id).as_bytes(),
        "GET",
        &format!("/api/v1/stream/{job_id}"),
        now(),
    )
    .header_value()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_frames_in_base64_carry_the_exact_bytes() {
    let agent = TestAgent::start("bytes-live", Config::default());
    let job_id = unique("live64");
    // The first write ends inside a character; the frames must still add up exactly.
    agent
        .submit(
            "ctl-a",
            &job_id,
            "printf 'a\\342\\202'; sleep 1; printf '\\254b\\377\\n'",
        )
        .await;
    let ws = agent
        .ws_connect(
            &job_id,
            "encoding=base64",
            Some(auth("ctl-a", &agent, &job_id)),
        )
        .await
        .expect("connect");
    let transcript = read_to_close(ws).await;
    let bytes: Vec<u8> = transcript
        .frames
        .iter()
        .flat_map(|f| {
            Encoding::Base64
                .decode(&f.data)
                .unwrap_or_else(|e| panic!("{e}: {f:?}"))
        })
        .collect();
    assert_eq!(bytes, b"a\xe2\x82\xacb\xff\n");
    let last = transcript.frames.last().expect("frames");
    assert!(last.is_final && last.data.is_empty(), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_stdin_the_command_reads_end_of_file_and_too_much_stdin_is_refused() {
    let agent = TestAgent::start("bytes-stdin", Config::default());
    let job_id = unique("nostdin");
    agent.submit("ctl-a", &job_id, "wc -c; echo done").await;
    let view = agent.wait_final("ctl-a", &job_id).await;
    let result = view.result.expect("result");
    assert_eq!(
        result.stdout.split_whitespace().collect::<Vec<_>>(),
        ["0", "done"]
    );

    let over = unique("over");
    let mut job = payload("ctl-a", &over, "cat");
    job.stdin = Some(vec![b'x'; quickcmd_protocol::MAX_STDIN_BYTES + 1]);
    let reply = agent.post(agent.body(&job)).await;
    reply.assert_error(400, "INVALID_PAYLOAD");
    assert!(reply.text.contains("stdin"), "{}", reply.text);
    agent
        .get_job("ctl-a", &over)
        .await
        .assert_error(404, "JOB_NOT_FOUND");

    let at_limit = unique("limit");
    let mut job = payload("ctl-a", &at_limit, "wc -c");
    job.stdin = Some(vec![b'x'; quickcmd_protocol::MAX_STDIN_BYTES]);
    agent
        .post(agent.body(&job))
        .await
        .assert_accepted(&at_limit);
    let view = agent.wait_final("ctl-a", &at_limit).await;
    assert_eq!(
        view.result.map(|r| r.stdout.trim().to_string()),
        Some(quickcmd_protocol::MAX_STDIN_BYTES.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_answers_a_signed_caller_only() {
    let agent = TestAgent::start("whoami", Config::default());
    let reply = agent.read(Method::GET, "ctl-a", "/api/v1/whoami").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["controller_id"], "ctl-a");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        body["agent_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{body}"
    );

    agent
        .request(Method::GET, "/api/v1/whoami", None)
        .await
        .assert_error(401, "UNAUTHORIZED");
    let wrong = ReadAuth::sign(
        "ctl-a",
        b"not-the-secret-0123456789abcdef",
        "GET",
        "/api/v1/whoami",
        now(),
    );
    agent
        .request(Method::GET, "/api/v1/whoami", Some(wrong.header_value()))
        .await
        .assert_error(401, "UNAUTHORIZED");
    let stale = ReadAuth::sign(
        "ctl-a",
        agent.secret_of("ctl-a").as_bytes(),
        "GET",
        "/api/v1/whoami",
        now() - 3600,
    );
    agent
        .request(Method::GET, "/api/v1/whoami", Some(stale.header_value()))
        .await
        .assert_error(401, "UNAUTHORIZED");
    let stranger = ReadAuth::sign(
        "ctl-zz",
        b"0123456789abcdef0123456789abcdef",
        "GET",
        "/api/v1/whoami",
        now(),
    );
    agent
        .request(Method::GET, "/api/v1/whoami", Some(stranger.header_value()))
        .await
        .assert_error(401, "UNAUTHORIZED");
}
