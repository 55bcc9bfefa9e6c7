//! The request-head parser on its own. Asserts: no panic; a head it reads is no longer
//! than the input, and within the head limit; every shorter prefix of a complete head
//! waits for more bytes (so a head split across reads is read the same), and the head
//! alone reads the same as the head followed by anything.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiclient::service::http::fuzzing::parse_head;
use multiclient::service::http::MAX_HEAD;

fuzz_target!(|data: &[u8]| {
    let [cut, bytes @ ..] = data else {
        return;
    };
    let max_body = 1 << 20;
    let whole = parse_head(bytes, max_body);
    if let Ok(Some(head)) = &whole {
        assert!(head.len <= bytes.len() && head.len <= MAX_HEAD, "{head:?}");
        let k = usize::from(*cut) * head.len / 256;
        assert_eq!(parse_head(&bytes[..k], max_body), Ok(None), "prefix {k}");
        assert_eq!(parse_head(&bytes[..head.len], max_body), whole);
    }
});
