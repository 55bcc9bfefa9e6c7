//! Fuzzes the WebSocket frame path: a valid upgrade, then arbitrary bytes as frames,
//! cut into arbitrary pieces, fed to the sans-IO ws session. It must never panic and
//! must answer only with well-formed, unmasked server frames.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiclient::service::http::{HttpOptions, Ws};
use multiclient::service::{ConnInfo, Harness, Service};

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let (size, bytes) = match data {
        [a, rest @ ..] => (usize::from(*a) * 4 + 1, rest),
        _ => return,
    };
    let mut opts = HttpOptions::default();
    std::sync::Arc::make_mut(&mut opts.ws).max_message = 64 * 1024;
    let mut h = Harness::new(Ws::new(opts).session(&ConnInfo::test(1)));
    h.feed(UPGRADE);
    let head = h.take_output();
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    for piece in bytes.chunks(size) {
        h.feed(piece);
    }
    let mut out = &h.take_output()[..];
    // Server frames: FIN/opcode byte, unmasked length, payload.
    while out.len() >= 2 {
        assert_eq!(out[1] & 0x80, 0, "server frames are unmasked");
        let (len, hdr) = match out[1] & 0x7f {
            126 => (u16::from_be_bytes([out[2], out[3]]) as usize, 4),
            127 => (u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        assert!(out.len() >= hdr + len, "whole frames only");
        out = &out[hdr + len..];
    }
    assert!(out.is_empty());
});
