//! The body decoder on its own: `Content-Length` or chunked framing, the body bytes cut
//! into arbitrary reads. Asserts: no panic; the split of the reads changes neither the
//! outcome nor the bytes decoded; a finished body used no more than the input and is
//! within `max_body`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiclient::service::http::fuzzing::{decode_body, BodyOutcome, Framing};
use multiclient_fuzz::reads;

fuzz_target!(|data: &[u8]| {
    let [mode, len, seed, bytes @ ..] = data else {
        return;
    };
    let max_body = if mode & 2 == 0 { 4096 } else { 100 };
    // A length over `max_body` is refused (413) from the head, before any body byte.
    let framing = if mode & 1 == 0 {
        Framing::Chunked
    } else {
        Framing::Length((usize::from(*len) * 8 + 1).min(max_body))
    };
    let whole = decode_body(framing, max_body, [bytes]);
    if let BodyOutcome::Done { used, body } = &whole {
        assert!(*used <= bytes.len() && body.len() <= max_body);
    }
    let split = decode_body(framing, max_body, reads(*seed | 1, bytes));
    assert_eq!(split, whole, "a split changed the body");
});
