use super::*;

#[test]
fn head_tail_and_marker_under_the_cap() {
    let stream = JobStream::new("j", 100, 1024);
    let mut all = Vec::new();
    for i in 0..50 {
        let line = format!("line {i:02}\n"); // 8 bytes
        all.extend_from_slice(line.as_bytes());
        stream.push(StreamName::Stdout, line.as_bytes());
    }
    stream.push(StreamName::Stderr, b"err\n");
    let saved_early = stream.take_unsaved();
    let (rest, stdout, stderr) = stream.finish_output();
    assert!(stdout.truncated);
    assert_eq!(stdout.bytes, 400);
    assert_eq!(stdout.sha256, hex::encode(Sha256::digest(&all)));
    assert!(stdout.text.starts_with("line 00\n"), "{}", stdout.text);
    assert!(stdout.text.ends_with("line 49\n"), "{}", stdout.text);
    assert!(
        stdout.text.contains("bytes of stdout omitted"),
        "{}",
        stdout.text
    );
    let kept: usize = stdout.text.len();
    assert!(kept < 400, "stored {kept} bytes");
    assert!(!stderr.truncated);
    assert_eq!(stderr.text, "err\n");
    // Head frames were saved early; marker and tail at the end; seqs strictly increase.
    let mut stored: Vec<u64> = saved_early
        .iter()
        .chain(rest.iter())
        .map(|f| f.seq)
        .collect();
    stored.sort();
    stored.dedup();
    assert_eq!(
        stored.len(),
        saved_early.len() + rest.len(),
        "a seq was stored twice"
    );
    assert!(rest.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        stored.last(),
        Some(&51),
        "the last frame (stderr) is stored"
    );
    // The omitted-bytes count plus what is kept accounts for every byte.
    let marker = rest
        .iter()
        .find(|f| f.data.contains("omitted"))
        .map(|f| f.data.clone())
        .unwrap_or_default();
    let omitted: u64 = marker
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert_eq!(omitted + (kept - marker.len()) as u64, 400);
}

#[tokio::test]
async fn late_subscriber_replays_then_follows_live_without_gaps() {
    let stream = JobStream::new("j", 1 << 20, 1024);
    stream.push(StreamName::Stdout, b"one\n");
    stream.push(StreamName::Stderr, b"two\n");
    let mut subscription = stream.subscribe(0);
    assert_eq!(
        subscription
            .replay
            .iter()
            .map(|f| f.seq)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    stream.push(StreamName::Stdout, b"three\n");
    let live = subscription
        .live
        .recv()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((live.seq, live.data.as_str()), (3, "three\n"));
    let resumed = stream.subscribe(2);
    assert_eq!(
        resumed.replay.iter().map(|f| f.seq).collect::<Vec<_>>(),
        vec![3]
    );
    let final_frame = stream.finish(JobStatus::Completed, 0, 1_700_000_000_000, None);
    assert_eq!(final_frame.seq, 4);
    let after = stream.subscribe(0);
    assert_eq!(after.replay.last().map(|f| f.is_final), Some(true));
}

#[tokio::test]
async fn slow_subscriber_lags_and_never_blocks_the_job() {
    let stream = JobStream::new("j", 1 << 20, 16);
    let mut slow = stream.subscribe(0);
    for i in 0..100 {
        stream.push(StreamName::Stdout, format!("{i}\n").as_bytes());
    }
    assert!(matches!(
        slow.live.recv().await,
        Err(broadcast::error::RecvError::Lagged(_))
    ));
}

#[test]
fn multibyte_characters_split_across_chunks_stay_whole() {
    let stream = JobStream::new("j", 1 << 20, 16);
    let text = "✓✓".as_bytes();
    stream.push(StreamName::Stdout, &text[..2]);
    stream.push(StreamName::Stdout, &text[2..4]);
    stream.push(StreamName::Stdout, &text[4..]);
    let frames = stream.subscribe(0).replay;
    assert!(frames.iter().all(|f| !f.data.contains('\u{FFFD}')));
    assert_eq!(
        frames.iter().map(|f| f.data.as_str()).collect::<String>(),
        "✓✓"
    );
}

#[test]
fn a_write_larger_than_the_cap_still_leaves_a_head_and_a_tail() {
    // One 10 KB write against a 1 KB cap: without splitting it into frames, head and tail
    // would both be empty.
    let stream = JobStream::new("j", 1024, 1024);
    let all: String = (0..2000).map(|i| format!("{i}\n")).collect();
    stream.push(StreamName::Stdout, all.as_bytes());
    let (_, stdout, _) = stream.finish_output();
    assert!(stdout.truncated);
    let marker_at = stdout.text.find("\n[quickcmd:").unwrap_or(0);
    let tail_at = stdout.text.find("]\n").map_or(0, |i| i + 2);
    let (head, tail) = (&stdout.text[..marker_at], &stdout.text[tail_at..]);
    assert!(head.len() >= 256 && all.starts_with(head), "head {head:?}");
    assert!(tail.len() >= 256 && all.ends_with(tail), "tail {tail:?}");
    assert!(head.len() + tail.len() <= 1024);
}

#[test]
fn pieces_never_split_a_character() {
    let text = "a✓✓✓b";
    for max in 1..=text.len() {
        let parts = pieces(text, max);
        assert_eq!(parts.concat(), text, "max {max}");
        assert!(parts.iter().all(|p| !p.is_empty()), "max {max}");
        assert!(
            parts.iter().all(|p| p.len() <= max.max(3)),
            "max {max}: {parts:?}"
        );
    }
}
