//! Fuzzes the HTTP request path: arbitrary bytes, cut into arbitrary pieces, fed to the
//! sans-IO http session as the models would. It must never panic, never hold more than
//! the model's input limit unconsumed, and every byte it writes must be whole
//! responses (or a WebSocket stream after a 101).

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiclient::service::http::{Http, HttpOptions};
use multiclient::service::{ConnInfo, Goodbye, Harness, Service};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size, the second a goodbye to say midway.
    let (size, why, bytes) = match data {
        [a, b, rest @ ..] => (usize::from(*a % 64) + 1, *b, rest),
        _ => return,
    };
    let svc = Http::new(HttpOptions {
        max_body: 4096,
        ..HttpOptions::default()
    });
    let mut h = Harness::new(svc.session(&ConnInfo::test(1)));
    for (i, piece) in bytes.chunks(size).enumerate() {
        if i == usize::from(why >> 2) {
            h.goodbye(match why & 3 {
                0 => Goodbye::Busy,
                1 => Goodbye::Idle,
                2 => Goodbye::Shutdown,
                _ => Goodbye::SlowConsumer,
            });
        }
        h.feed(piece);
    }
    h.eof();
    let out = h.take_output();
    if !out.is_empty() {
        assert!(out.starts_with(b"HTTP/1.1 "), "output starts with a status line");
    }
});
