//! The strict JSON reader and Go's writer: never panic, and writing is a fixed point
//! (the Go text of a value reads back to the same Go text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quickcmd_protocol::{canonical, json};

fuzz_target!(|bytes: &[u8]| {
    let Ok(node) = json::parse(bytes) else { return };
    let mut first = String::new();
    if canonical::write_value(&mut first, &node.value).is_err() {
        return;
    }
    let reread = json::parse(first.as_bytes()).expect("Go text is JSON");
    let mut second = String::new();
    canonical::write_value(&mut second, &reread.value).expect("Go text writes again");
    assert_eq!(first, second);
});
