//! Times the whole submit parse path on hostile bodies (issue 8, finding 1), by hand:
//! `cargo run --release --example parse_flood -p quickcmd-protocol`.
//!
//! Each body stays under the 1 MiB limit, as an unauthenticated sender's would. Reported
//! figures are the median of three runs; this is a measurement, never a test.

use std::time::{Duration, Instant};

use quickcmd_protocol::{parse_submit, verify_submit};

fn body_with(payload_extra: &str) -> Vec<u8> {
    format!(
        r#"{{"payload":{{"job_id":"flood-1","prompt":"","command":"true",{payload_extra}"plugin_metadata":null,"required_scopes":null,"snapshot_metadata":"","ttl":1704628800,"timestamp":1704628500,"controller_id":"nobody-we-know"}},"signature":{{"signature":"00","algorithm":"HMAC-SHA256"}}}}"#
    )
    .into_bytes()
}

/// The review's body: `candidate_metadata` holding 80,000 distinct keys (about 870 KB).
fn many_keys(count: usize) -> Vec<u8> {
    let mut metadata = String::from(r#""candidate_metadata":{"#);
    for index in 0..count {
        if index > 0 {
            metadata.push(',');
        }
        metadata.push_str(&format!(r#""k{index:05}":1"#));
    }
    metadata.push_str("},");
    body_with(&metadata)
}

/// Objects nested as deep as the reader allows, each with a few keys.
fn deep_objects() -> Vec<u8> {
    let depth = 120;
    let inner = format!("{}0{}", r#"{"a":1,"b":"#.repeat(depth), "}".repeat(depth));
    body_with(&format!(r#""candidate_metadata":{{"x":{inner}}},"#))
}

/// 1 MiB of small numbers and escapes in one array: allocation-heavy, still linear.
fn many_values() -> Vec<u8> {
    let mut items = String::new();
    while items.len() < 900_000 {
        items.push_str(r#"1.5e-7,"\u00e9\ud83d\udcc1",-0,"#);
    }
    items.push('0');
    body_with(&format!(r#""candidate_metadata":{{"x":[{items}]}},"#))
}

/// One number literal of 900,000 digits.
fn long_number() -> Vec<u8> {
    body_with(&format!(
        r#""candidate_metadata":{{"x":1.{}e5}},"#,
        "7".repeat(900_000)
    ))
}

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

fn time(name: &str, body: &[u8]) {
    let (mut parse, mut total) = (Vec::new(), Vec::new());
    let mut outcome = String::new();
    for _ in 0..3 {
        let start = Instant::now();
        let parsed = parse_submit(body);
        parse.push(start.elapsed());
        outcome = match parsed {
            // The Go form is the expensive half of verification; a wrong key forces it.
            Ok(request) => format!("parsed, verify: {:?}", verify_submit(b"k", &request)),
            Err(e) => format!("refused: {e}"),
        };
        total.push(start.elapsed());
    }
    println!(
        "{name:<28} {:>7} bytes  parse {:>9.2} ms  parse+verify {:>9.2} ms  ({})",
        body.len(),
        median(parse),
        median(total),
        outcome.chars().take(60).collect::<String>()
    );
}

/// 1 MiB of `0,` in one array: the most nodes per byte, for peak memory (run alone with
/// `/usr/bin/time -v ... -- tiny` to read the peak RSS of one parse).
fn tiny_values() -> Vec<u8> {
    let items = "0,".repeat(500_000);
    body_with(&format!(r#""candidate_metadata":{{"x":[{items}0]}},"#))
}

/// The largest key-heavy body the agent still checks on its async worker (2 KiB).
fn inline_limit_keys() -> Vec<u8> {
    let mut count = 1;
    while many_keys(count + 1).len() <= 2 * 1024 {
        count += 1;
    }
    many_keys(count)
}

/// The largest value-heavy body under the same limit.
fn inline_limit_values() -> Vec<u8> {
    let mut items = String::new();
    while body_with(&format!(
        r#""candidate_metadata":{{"x":[{items}1.5e-7,0]}},"#
    ))
    .len()
        <= 2 * 1024
    {
        items.push_str("1.5e-7,");
    }
    items.push('0');
    body_with(&format!(r#""candidate_metadata":{{"x":[{items}]}},"#))
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("tiny") {
        time("500,000 tiny values", &tiny_values());
        return;
    }
    // What the agent runs inline on an async worker (bodies up to 2 KiB).
    time("2 KiB of keys (inline)", &inline_limit_keys());
    time("2 KiB of values (inline)", &inline_limit_values());
    time("80,000 keys", &many_keys(80_000));
    time("80,000 keys, last repeated", &{
        let mut body = many_keys(80_000);
        let text = String::from_utf8_lossy(&body).replace(r#""k79999":1"#, r#""k00000":1"#);
        body = text.into_bytes();
        body
    });
    time("deep objects", &deep_objects());
    time("many values", &many_values());
    time("900,000-digit number", &long_number());
    time("500,000 tiny values", &tiny_values());
}
