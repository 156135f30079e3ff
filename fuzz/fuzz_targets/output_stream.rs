//! The sandbox's output as the agent frames and caps it: any writes to stdout and stderr
//! under any `max_output_bytes`. Live frames carry exactly the written bytes (protocol v1.1
//! keeps bytes, not text), numbered 1, 2, 3...; the
//! summaries count and hash every byte; the stored view is the head, one marker counting
//! exactly the bytes left out, and the tail, each within its half of the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quickcmd_agent::fuzzing::{run_output, Frame, Output, Summary};
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max_output_bytes = 1 + usize::from(u16::from_le_bytes([data[0], data[1]]) % 8192);
    // Each write: one byte (top bit: stderr, low 7 bits: length), then its bytes.
    let mut writes: Vec<(bool, &[u8])> = Vec::new();
    let mut rest = &data[2..];
    while let Some((&head, tail)) = rest.split_first() {
        let len = usize::from(head & 0x7f).min(tail.len());
        writes.push((head & 0x80 != 0, &tail[..len]));
        rest = &tail[len..];
    }
    let output = run_output(max_output_bytes, &writes);

    // One seq counter for both streams, no gaps.
    for (i, frame) in output.live.iter().enumerate() {
        assert_eq!(frame.seq, i as u64 + 1, "{:?}", output.live);
    }
    for stderr in [false, true] {
        let input: Vec<u8> = writes
            .iter()
            .filter(|(e, _)| *e == stderr)
            .flat_map(|(_, b)| b.iter().copied())
            .collect();
        check_stream(&output, stderr, &input, max_output_bytes);
    }
});

fn check_stream(output: &Output, stderr: bool, input: &[u8], max: usize) {
    let live: Vec<&Frame> = output.live.iter().filter(|f| f.stderr == stderr).collect();
    let joined: Vec<u8> = live.iter().flat_map(|f| f.bytes.iter().copied()).collect();
    assert_eq!(joined, input);
    if let Ok(valid) = std::str::from_utf8(input) {
        let text: String = live.iter().map(|f| f.data.as_str()).collect();
        assert_eq!(text, valid, "valid UTF-8 is cut only between characters");
    }
    // A frame is never empty and holds at most an eighth of the cap (4 B..16 KiB), or one
    // character that is bigger than that.
    let limit = (max / 8).clamp(4, 16 * 1024);
    for frame in &live {
        assert!(!frame.bytes.is_empty());
        assert!(frame.bytes.len() <= limit);
    }
    let summary: &Summary = if stderr {
        &output.stderr
    } else {
        &output.stdout
    };
    assert_eq!(summary.bytes, input.len() as u64);
    assert_eq!(summary.sha256, hex::encode(Sha256::digest(input)));

    let stored: Vec<&Frame> = output
        .stored
        .iter()
        .filter(|f| f.stderr == stderr)
        .collect();
    let stored_bytes: Vec<u8> = stored.iter().flat_map(|f| f.bytes.iter().copied()).collect();
    assert_eq!(summary.stored, stored_bytes);
    if !summary.truncated {
        assert_eq!(stored, live, "nothing omitted: every frame is stored");
        return;
    }
    // head ++ [marker] ++ tail
    let head = stored.iter().zip(&live).take_while(|(s, l)| s == l).count();
    let marker = stored[head];
    let tail = &stored[head + 1..];
    assert!(live.ends_with(tail), "the stored tail is the live tail");
    let omitted = &live[head..live.len() - tail.len()];
    assert!(!omitted.is_empty());
    assert_eq!(
        marker.seq, omitted[0].seq,
        "the marker takes the first omitted seq"
    );
    let bytes = |frames: &[&Frame]| frames.iter().map(|f| f.bytes.len()).sum::<usize>();
    let name = if stderr { "stderr" } else { "stdout" };
    assert_eq!(
        marker.data,
        format!(
            "\n[quickcmd: {} bytes of {name} omitted here; stored output keeps the head and the tail]\n",
            bytes(omitted)
        )
    );
    assert!(bytes(&live[..head]) <= max / 2);
    assert!(bytes(tail) <= max - max / 2);
    assert_eq!(
        bytes(&live[..head]) + bytes(omitted) + bytes(tail),
        input.len()
    );
}
