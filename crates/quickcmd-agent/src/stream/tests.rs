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
    assert_eq!(stored.len(), saved_early.len() + rest.len(), "a seq was stored twice");
    assert!(rest.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(stored.last(), Some(&51), "the last frame (stderr) is stored");
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
    let final_frame = stream.finish(JobStatus::Completed, 0);
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
