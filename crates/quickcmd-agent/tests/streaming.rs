//! Live log streaming (protocol-v1 §3) through the real agent and Docker: frames while the
//! job runs, replay for late subscribers, `since`, several subscribers, UTF-8 boundaries,
//! and the head/tail cap on stored output with the full stream's size and hash.

use quickcmd_protocol::{JobStatus, LogFrame};
use quickcmd_testkit::{
    next_frame, read_to_close, sha256_hex, unique, Config, TestAgent, Transcript,
};
use serde_json::json;

/// The parts of a frame a replay must reproduce exactly.
fn essence(frames: &[LogFrame]) -> Vec<(u64, String, String, bool)> {
    frames
        .iter()
        .map(|f| {
            (
                f.seq,
                f.stream.as_str().to_string(),
                f.data.clone(),
                f.is_final,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_while_the_job_runs_and_every_subscriber_gets_all() {
    let agent = TestAgent::start("live", Config::default());
    let job_id = unique("live");
    agent
        .submit("ctl-a", &job_id, "echo first; sleep 3; echo second")
        .await;
    let mut one = agent.subscribe("ctl-a", &job_id, None).await;
    let two = agent.subscribe("ctl-a", &job_id, None).await;

    let mut close_one = None;
    let first = next_frame(&mut one, &mut close_one)
        .await
        .expect("a first frame");
    assert_eq!(
        (
            first.seq,
            first.stream.as_str(),
            first.data.as_str(),
            first.is_final
        ),
        (1, "stdout", "first\n", false)
    );
    // The line printed before the sleep is here while the job still runs.
    let view = agent.view("ctl-a", &job_id).await;
    assert_eq!(view.status, JobStatus::Running, "{view:?}");
    assert!(view.result.is_none());

    // A subscriber resuming after seq 1 gets only what follows.
    let resumed = agent.subscribe("ctl-a", &job_id, Some(1)).await;

    let mut rest = Vec::new();
    while let Some(frame) = next_frame(&mut one, &mut close_one).await {
        rest.push(frame);
    }
    let mut frames_one = vec![first];
    frames_one.extend(rest);
    let one = Transcript {
        frames: frames_one,
        close: close_one,
    };
    one.assert_complete(1, JobStatus::Completed, 0);
    assert_eq!(one.text("stdout"), "first\nsecond\n");
    assert_eq!(one.text("stderr"), "");
    let last_data_seq = one.frames[one.frames.len() - 2].seq;
    assert_eq!(one.frames.last().map(|f| f.seq), Some(last_data_seq + 1));

    let two = read_to_close(two).await;
    two.assert_complete(1, JobStatus::Completed, 0);
    assert_eq!(
        two.frames, one.frames,
        "both subscribers get the same frames"
    );

    let resumed = read_to_close(resumed).await;
    resumed.assert_complete(2, JobStatus::Completed, 0);
    assert_eq!(essence(&resumed.frames), essence(&one.frames[1..]));

    let result = agent
        .wait_final("ctl-a", &job_id)
        .await
        .result
        .expect("result");
    assert_eq!(result.stdout, "first\nsecond\n");
    assert_eq!(result.exit_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_replays_in_order_then_final_and_since_resumes() {
    let agent = TestAgent::start("late", Config::default());
    let job_id = unique("late");
    agent
        .submit(
            "ctl-a",
            &job_id,
            "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three; exit 3",
        )
        .await;
    let live = read_to_close(agent.subscribe("ctl-a", &job_id, None).await).await;
    live.assert_complete(1, JobStatus::Completed, 3);
    let view = agent.wait_final("ctl-a", &job_id).await;
    assert_eq!(view.status, JobStatus::Completed);

    // Connected after the end: every stored frame in order, the final frame, a normal close.
    let late = read_to_close(agent.subscribe("ctl-a", &job_id, None).await).await;
    late.assert_complete(1, JobStatus::Completed, 3);
    assert_eq!(late.text("stdout"), "one\nthree\n");
    assert_eq!(late.text("stderr"), "two\n");
    assert_eq!(essence(&late.frames), essence(&live.frames));
    // A replayed frame is the frame that was sent, timestamp included.
    assert_eq!(late.frames, live.frames);

    // `since` resumes after any seq; after the final seq there is nothing but the close.
    let final_seq = live.frames.last().expect("final").seq;
    for since in 0..=final_seq {
        let resumed = read_to_close(agent.subscribe("ctl-a", &job_id, Some(since)).await).await;
        let expected: Vec<_> = essence(&live.frames)
            .into_iter()
            .filter(|f| f.0 > since)
            .collect();
        assert_eq!(essence(&resumed.frames), expected, "since={since}");
        let close = resumed.close.as_ref().expect("a close frame");
        assert_eq!(u16::from(close.code), 1000, "since={since}");
    }

    let result = view.result.expect("result");
    assert_eq!(
        (result.stdout.as_str(), result.stderr.as_str()),
        ("one\nthree\n", "two\n")
    );
    assert_eq!(result.exit_code, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_characters_split_across_writes_arrive_whole() {
    let agent = TestAgent::start("utf8", Config::default());
    let job_id = unique("utf8");
    // ✓ is E2 9C 93 and 😀 is F0 9F 98 80: each is written in two pieces with a pause
    // between; \377 can never be UTF-8.
    let command = r"printf '\342\234'; sleep 1; printf '\223\n'; printf 'bad \377 byte\n'; printf '\360\237\230'; sleep 1; printf '\200 end\n'; printf '\316' >&2; sleep 1; printf '\273\n' >&2";
    agent.submit("ctl-a", &job_id, command).await;
    let live = read_to_close(agent.subscribe("ctl-a", &job_id, None).await).await;
    live.assert_complete(1, JobStatus::Completed, 0);
    assert_eq!(live.text("stdout"), "✓\nbad \u{FFFD} byte\n😀 end\n");
    assert_eq!(live.text("stderr"), "λ\n");
    for frame in &live.frames {
        assert!(
            !frame.data.contains('\u{FFFD}') || frame.data.contains("bad \u{FFFD} byte"),
            "a character was split: {frame:?}"
        );
    }
    let result = agent
        .wait_final("ctl-a", &job_id)
        .await
        .result
        .expect("result");
    assert_eq!(result.stdout, "✓\nbad \u{FFFD} byte\n😀 end\n");
    assert_eq!(result.stderr, "λ\n");
    // Sizes and hashes are of the bytes the command wrote, not of the decoded text.
    let raw_stdout: &[u8] = b"\xe2\x9c\x93\nbad \xff byte\n\xf0\x9f\x98\x80 end\n";
    assert_eq!(result.stdout_bytes, raw_stdout.len() as u64);
    assert_eq!(result.stdout_sha256, sha256_hex(raw_stdout));
    assert_eq!(result.stderr_bytes, 3);
    assert_eq!(result.stderr_sha256, sha256_hex("λ\n".as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_over_the_cap_keeps_head_marker_tail_and_hashes_the_whole() {
    let agent = TestAgent::start(
        "cap",
        Config::default().set("max_output_bytes", json!(4096)),
    );
    let job_id = unique("cap");
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert!(expected.len() > 100_000);
    // The pause lets the live subscriber connect before the first byte.
    agent
        .submit("ctl-a", &job_id, "sleep 2; seq 1 20000; echo done >&2")
        .await;
    let live = read_to_close(agent.subscribe("ctl-a", &job_id, None).await).await;
    live.assert_complete(1, JobStatus::Completed, 0);
    // Live subscribers see every byte.
    assert_eq!(live.text("stdout"), expected);

    let result = agent
        .wait_final("ctl-a", &job_id)
        .await
        .result
        .expect("result");
    assert!(result.stdout_truncated);
    assert!(!result.stderr_truncated);
    assert_eq!(result.stderr, "done\n");
    assert_eq!(result.stdout_bytes, expected.len() as u64);
    assert_eq!(result.stdout_sha256, sha256_hex(expected.as_bytes()));

    // Stored: head, one marker line saying how much was left out, tail.
    let stored = &result.stdout;
    let marker_start = stored
        .find("\n[quickcmd: ")
        .unwrap_or_else(|| panic!("no marker in the stored output: {stored:?}"));
    let marker_end = marker_start
        + 1
        + stored[marker_start + 1..]
            .find("]\n")
            .expect("the marker line ends")
        + 2;
    let (head, marker, tail) = (
        &stored[..marker_start],
        &stored[marker_start..marker_end],
        &stored[marker_end..],
    );
    assert!(
        !head.is_empty() && !tail.is_empty(),
        "head and tail kept: {stored:?}"
    );
    assert!(
        expected.starts_with(head),
        "head is not the start: {head:?}"
    );
    assert!(expected.ends_with(tail), "tail is not the end: {tail:?}");
    assert!(tail.ends_with("19999\n20000\n"), "{tail:?}");
    assert!(
        head.len() + tail.len() <= 4096,
        "stored {} + {}",
        head.len(),
        tail.len()
    );
    let omitted = expected.len() - head.len() - tail.len();
    assert!(
        marker.contains(&format!("{omitted} bytes")) && marker.contains("omitted"),
        "marker {marker:?} should say {omitted} bytes were omitted"
    );

    // A late subscriber gets the stored view: head, marker, tail, final.
    let late = read_to_close(agent.subscribe("ctl-a", &job_id, None).await).await;
    assert_eq!(late.text("stdout"), *stored);
    let seqs: Vec<u64> = late.frames.iter().map(|f| f.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs {seqs:?}");
    let last = late.frames.last().expect("final");
    assert!(last.is_final);
    assert_eq!(last.seq, live.frames.last().expect("final").seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_dropped_and_never_slows_the_job() {
    let agent = TestAgent::start(
        "slow",
        Config::default().set("stream_buffer_frames", json!(16)),
    );
    let job_id = unique("slow");
    // About 20 MB: more than the socket buffers between the agent and a stalled reader.
    agent
        .submit("ctl-a", &job_id, "sleep 1; seq 1 2500000")
        .await;
    let stalled = agent.subscribe("ctl-a", &job_id, None).await;
    // The job ends while the subscriber reads nothing.
    let view = agent.wait_final("ctl-a", &job_id).await;
    assert_eq!(view.status, JobStatus::Completed);
    let result = view.result.expect("result");
    assert!(result.stdout_bytes > 15_000_000, "{}", result.stdout_bytes);

    // What it gets when it reads at last: frames in order, then a policy-violation close
    // (1008) instead of the rest.
    let transcript = read_to_close(stalled).await;
    let seqs: Vec<u64> = transcript.frames.iter().map(|f| f.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap before the drop"
    );
    assert!(
        transcript.frames.iter().all(|f| !f.is_final),
        "dropped before the end"
    );
    let close = transcript.close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");

    // It resumes with `since` and gets the end.
    let last = seqs.last().copied().unwrap_or(0);
    let resumed = read_to_close(agent.subscribe("ctl-a", &job_id, Some(last)).await).await;
    let end = resumed.frames.last().expect("final frame");
    assert!(end.is_final);
    assert_eq!(end.status, Some(JobStatus::Completed));
    assert_eq!(u16::from(resumed.close.expect("close").code), 1000);
}
