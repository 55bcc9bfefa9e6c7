//! The PROXY protocol header (v1 text, v2 binary): `proxy::parse` on the whole input,
//! then the gate that reads it in front of a service, fed the input in one read and
//! cut into arbitrary reads, with a recording service behind it. Asserts: no panic; a
//! header read is within the input and `MAX_HEADER`, and the header's bytes alone read
//! the same (nothing after the header is looked at); the session behind the gate sees
//! the header's address (or the socket's, for `LOCAL` and `UNKNOWN`) and exactly the
//! bytes after the header; a refusal closes the connection with nothing said and
//! nothing passed on; any split gives the same address, the same bytes and the same
//! refusal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiclient::service::gate::fuzzing::gate;
use multiclient::service::proxy::{parse, Parsed, MAX_HEADER};
use multiclient::service::ConnInfo;
use multiclient_fuzz::reads;

fuzz_target!(|data: &[u8]| {
    let [seed, bytes @ ..] = data else {
        return;
    };
    let parsed = parse(bytes);
    let (out, closing) = gate(&[bytes]);
    match &parsed {
        Parsed::Header { len, source, .. } => {
            assert!(*len <= bytes.len() && *len <= MAX_HEADER, "{parsed:?}");
            assert_eq!(
                parse(&bytes[..*len]),
                parsed,
                "the header alone reads differently"
            );
            let peer = source.unwrap_or(ConnInfo::test(1).peer);
            let mut want = format!("open {peer}\n").into_bytes();
            want.extend_from_slice(&bytes[*len..]);
            assert_eq!(out, want, "the session behind the gate saw other bytes");
            assert!(!closing);
        }
        Parsed::Invalid(_) => assert!(out.is_empty() && closing, "a refusal passed bytes on"),
        Parsed::Incomplete => {
            assert!(bytes.len() < MAX_HEADER, "waited past MAX_HEADER");
            assert!(out.is_empty() && !closing, "waiting, yet {out:?} {closing}");
        }
    }
    let split = gate(&reads(*seed, bytes));
    assert_eq!(
        split,
        (out, closing),
        "a split changed the address, the bytes or the refusal"
    );
});
