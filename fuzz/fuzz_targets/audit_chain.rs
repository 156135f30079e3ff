//! What a controller reads from an agent in v1.1: a `GET /api/v1/audit/chain` answer and
//! witnesses, and base64 output. Parsing and checking never panic; a witness verifies only
//! under the key that made it; strict base64 reads back to the very text it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quickcmd_protocol::{chain_range, AuditChain, AuditWitness, Encoding};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(chain) = serde_json::from_slice::<AuditChain>(bytes) {
        let links = chain.check_links();
        for row in chain.rows.iter().take(4) {
            let witness = AuditWitness::new(b"k", &chain.agent_id, row.seq, &row.row_hash);
            assert!(witness.verify(b"k", &chain.agent_id));
            assert!(!witness.verify(b"other", &chain.agent_id));
            // A witness of a row in a well-linked segment is found there, unless a later
            // row repeats its seq (which the link check refuses).
            if links.is_ok() {
                assert!(chain.check_witness(&witness).is_ok());
            }
        }
        if let (Some(first), Some(last)) = (chain.rows.first(), chain.rows.last()) {
            let _ = chain_range(first.seq, last.seq);
        }
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let _ = Encoding::from_query(Some(text));
    if let Ok(decoded) = Encoding::Base64.decode(text) {
        assert_eq!(Encoding::Base64.encode(&decoded), text);
    }
});
