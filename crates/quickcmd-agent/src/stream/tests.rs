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
    let stdout_text = String::from_utf8_lossy(&stdout.stored).into_owned();
    assert!(stdout.truncated);
    assert_eq!(stdout.bytes, 400);
    assert_eq!(stdout.sha256, hex::encode(Sha256::digest(&all)));
    assert!(stdout_text.starts_with("line 00\n"), "{stdout_text}");
    assert!(stdout_text.ends_with("line 49\n"), "{stdout_text}");
    assert!(
        stdout_text.contains("bytes of stdout omitted"),
        "{stdout_text}"
    );
    let kept: usize = stdout.stored.len();
    assert!(kept < 400, "stored {kept} bytes");
    assert!(!stderr.truncated);
    assert_eq!(stderr.stored, b"err\n");
    // Head frames were saved early; marker and tail at the end; seqs strictly increase.
    let mut stored: Vec<u64> = saved_early
        .iter()
        .chain(rest.iter())
        .map(|f| f.log.seq)
        .collect();
    stored.sort();
    stored.dedup();
    assert_eq!(
        stored.len(),
        saved_early.len() + rest.len(),
        "a seq was stored twice"
    );
    assert!(rest.windows(2).all(|w| w[0].log.seq < w[1].log.seq));
    assert_eq!(
        stored.last(),
        Some(&51),
        "the last frame (stderr) is stored"
    );
    // The omitted-bytes count plus what is kept accounts for every byte.
    let marker = rest
        .iter()
        .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
        .find(|text| text.contains("omitted"))
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
            .map(|f| f.log.seq)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    stream.push(StreamName::Stdout, b"three\n");
    let live = subscription
        .live
        .recv()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((live.log.seq, live.bytes.as_slice()), (3, &b"three\n"[..]));
    let resumed = stream.subscribe(2);
    assert_eq!(
        resumed.replay.iter().map(|f| f.log.seq).collect::<Vec<_>>(),
        vec![3]
    );
    let final_frame = stream.finish(JobStatus::Completed, 0, 1_700_000_000_000, None);
    assert_eq!(final_frame.log.seq, 4);
    let after = stream.subscribe(0);
    assert_eq!(after.replay.last().map(|f| f.log.is_final), Some(true));
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
    let texts: Vec<String> = frames
        .iter()
        .map(|f| f.to_wire(Encoding::Text).data)
        .collect();
    assert!(texts.iter().all(|t| !t.contains('\u{FFFD}')), "{texts:?}");
    assert_eq!(texts.concat(), "✓✓");
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
    let text = String::from_utf8_lossy(&stdout.stored);
    let marker_at = text.find("\n[quickcmd:").unwrap_or(0);
    let tail_at = text.find("]\n").map_or(0, |i| i + 2);
    let (head, tail) = (&text[..marker_at], &text[tail_at..]);
    assert!(head.len() >= 256 && all.starts_with(head), "head {head:?}");
    assert!(tail.len() >= 256 && all.ends_with(tail), "tail {tail:?}");
    assert!(head.len() + tail.len() <= 1024);
}

#[test]
fn pieces_never_split_a_character() {
    let text = "a✓✓✓b".as_bytes();
    for max in 1..=text.len() {
        let parts = pieces(text, max);
        assert_eq!(parts.concat(), text, "max {max}");
        assert!(parts.iter().all(|p| !p.is_empty()), "max {max}");
        assert!(
            parts.iter().all(|p| p.len() <= max.max(3)),
            "max {max}: {parts:?}"
        );
        assert!(parts.iter().all(|p| std::str::from_utf8(p).is_ok()));
    }
}

#[test]
fn exact_bytes_survive_and_text_replaces_only_bad_bytes() {
    let stream = JobStream::new("j", 1 << 20, 64);
    let written: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    for chunk in written.chunks(7) {
        stream.push(StreamName::Stdout, chunk);
    }
    let (_, stdout, _) = stream.finish_output();
    assert_eq!(stdout.stored, written);
    assert_eq!(stdout.sha256, hex::encode(Sha256::digest(&written)));
    let frames = stream.subscribe(0).replay;
    let base64: Vec<u8> = frames
        .iter()
        .flat_map(|f| {
            Encoding::Base64
                .decode(&f.to_wire(Encoding::Base64).data)
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(base64, written);
    let text: String = frames
        .iter()
        .map(|f| f.to_wire(Encoding::Text).data)
        .collect();
    assert_eq!(text, String::from_utf8_lossy(&written));
}
