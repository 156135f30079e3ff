//! Go's own signing vectors (../shared/test-vectors/go-json-signing.jsonl) against the live
//! agent, as sent and as reformatted. Their timestamps are from 2024, so the right answer is
//! `JOB_EXPIRED`, which the agent only reaches after the signature verified; one changed
//! byte must turn it into `INVALID_SIGNATURE`.

use std::path::PathBuf;

use quickcmd_testkit::{Config, TestAgent};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Vector {
    name: String,
    secret: String,
    payload_json: String,
    signature: String,
    request_body: String,
    request_body_reformatted: String,
}

fn vectors() -> Vec<Vector> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../../../shared/test-vectors/go-json-signing.jsonl");
    let path = if shared.exists() {
        shared
    } else {
        manifest.join("../quickcmd-protocol/tests/go-json-signing.jsonl")
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read test vectors at {}: {e}", path.display()));
    let vectors: Vec<Vector> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad vector: {e}")))
        .collect();
    assert!(vectors.len() >= 8, "expected the 8 shared vectors");
    vectors
}

/// The payload's controller id, job id and command as the vector wrote them.
fn fields(vector: &Vector) -> (String, String, String) {
    let payload: serde_json::Value =
        serde_json::from_str(&vector.payload_json).expect("payload_json is JSON");
    let text = |k: &str| payload[k].as_str().expect("string field").to_string();
    (text("controller_id"), text("job_id"), text("command"))
}

/// The vectors' two controllers on the vectors' secret, and nobody else.
fn vector_config(secret: &str) -> Config {
    Config {
        controllers: Vec::new(),
        shared_secret: secret.to_string(),
        ..Config::default()
    }
    .shared(&["controller-1", "https://quickcmd.example.com"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_go_vector_verifies_as_sent_and_reformatted() {
    let vectors = vectors();
    let secret = vectors[0].secret.clone();
    assert!(
        vectors.iter().all(|v| v.secret == secret),
        "the vectors share one secret"
    );
    let mut controllers: Vec<String> = vectors.iter().map(|v| fields(v).0).collect();
    controllers.sort();
    controllers.dedup();
    assert_eq!(
        controllers,
        ["controller-1", "https://quickcmd.example.com"]
    );

    let agent = TestAgent::start("vectors", vector_config(&secret));

    for vector in &vectors {
        let (controller_id, job_id, _) = fields(vector);
        assert!(
            vector.request_body.contains(&vector.signature),
            "{}",
            vector.name
        );
        for (form, body) in [
            ("as sent", &vector.request_body),
            ("reformatted", &vector.request_body_reformatted),
        ] {
            let reply = agent.post(body.clone()).await;
            assert_eq!(
                (reply.status, reply.code().as_str()),
                (401, "JOB_EXPIRED"),
                "{} {form}: the signature must verify, then the 2024 ttl is refused: {}",
                vector.name,
                reply.text
            );
            agent.assert_refusal_audited("JOB_EXPIRED", Some(&job_id), Some(&controller_id));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_changed_byte_of_a_go_vector_is_invalid_signature() {
    let vectors = vectors();
    let agent = TestAgent::start("vectors-flip", vector_config(&vectors[0].secret));

    for vector in &vectors {
        let (controller_id, job_id, _) = fields(vector);
        for (form, body) in [
            ("as sent", &vector.request_body),
            ("reformatted", &vector.request_body_reformatted),
        ] {
            // One byte of the command, the job id, the timestamp, then the signature.
            let timestamp = r#""timestamp":1704628500"#;
            let flips: Vec<(&str, String)> = vec![
                (
                    "command",
                    body.replacen(r#""command":""#, r#""command":"X"#, 1)
                        .replacen(r#""command": ""#, r#""command": "X"#, 1),
                ),
                (
                    "job_id",
                    body.replacen(r#""job_id":"job"#, r#""job_id":"jop"#, 1)
                        .replacen(r#""job_id": "job"#, r#""job_id": "jop"#, 1),
                ),
                (
                    "timestamp",
                    body.replacen(timestamp, r#""timestamp":1704628501"#, 1)
                        .replacen(
                            r#""timestamp": 1704628500"#,
                            r#""timestamp": 1704628501"#,
                            1,
                        ),
                ),
                (
                    "signature",
                    body.replacen(
                        &vector.signature,
                        &format!(
                            "{}{}",
                            if vector.signature.starts_with('0') {
                                "1"
                            } else {
                                "0"
                            },
                            &vector.signature[1..]
                        ),
                        1,
                    ),
                ),
            ];
            for (what, flipped) in flips {
                assert_ne!(
                    &flipped, body,
                    "{} {form}: {what} was not changed",
                    vector.name
                );
                let reply = agent.post(flipped).await;
                assert_eq!(
                    (reply.status, reply.code().as_str()),
                    (401, "INVALID_SIGNATURE"),
                    "{} {form}, changed {what}: {}",
                    vector.name,
                    reply.text
                );
                let row = agent.last_submission();
                assert_eq!(row["code"], json!("INVALID_SIGNATURE"), "{row}");
                assert_eq!(row["controller_id"], json!(controller_id), "{row}");
                if what != "job_id" {
                    assert_eq!(row["job_id"], json!(job_id), "{row}");
                }
            }
        }
    }
}
