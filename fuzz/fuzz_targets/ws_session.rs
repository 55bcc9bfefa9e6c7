//! The WebSocket service after a valid upgrade: frames, cut into arbitrary reads. The
//! input is either raw bytes, or (mode bit 0 clear) a list of frames the target masks
//! as a client must, with whatever flags, opcodes and lengths the input says, so the
//! fuzzer reaches fragmentation, control frames and close codes. Asserts that every
//! byte out is whole, valid server frames (not a prefix) and that the split of the
//! reads changes nothing.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use multiclient::service::http::{HttpOptions, Ws};
use multiclient::service::{ConnInfo, Harness, Service};
use multiclient_fuzz::{reads, wire};

const UPGRADE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Frames from a description: per frame a first byte (FIN, RSV, opcode as given), a
/// length byte (values over 125 take the 16-bit form), then that many payload bytes.
fn frames(mut d: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::new();
    while let [b0, len, rest @ ..] = d {
        let n = usize::from(*len).min(rest.len());
        out.push(*b0);
        if n < 126 {
            out.push(0x80 | n as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        out.extend_from_slice(&key);
        out.extend(rest[..n].iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        d = &rest[n..];
    }
    out
}

fn run(reads: &[&[u8]], small: bool, late: bool) -> (Vec<u8>, bool) {
    let mut opts = HttpOptions::default();
    std::sync::Arc::make_mut(&mut opts.ws).max_message = if small { 100 } else { 64 * 1024 };
    let mut h = Harness::new(Ws::new(opts).session(&ConnInfo::test(1)));
    h.feed(UPGRADE);
    for r in reads {
        h.feed(r);
    }
    if late {
        // The ping, then the pong's deadline.
        let t = h.now + Duration::from_secs(3600);
        h.advance_to(t);
        let t = h.now + Duration::from_secs(3600);
        h.advance_to(t);
    }
    (h.take_output(), h.is_closing())
}

fuzz_target!(|data: &[u8]| {
    let [mode, seed, rest @ ..] = data else {
        return;
    };
    let built;
    let bytes = if mode & 1 == 0 {
        built = frames(rest);
        &built[..]
    } else {
        rest
    };
    let (small, late) = (mode & 2 != 0, mode & 4 != 0);
    let split = reads(*seed, bytes);
    let (out, closing) = run(&split, small, late);
    match wire::http_responses(&out, false) {
        Ok(codes) => assert_eq!(codes, [101]),
        Err(e) => panic!("{e}\ninput: {bytes:?}"),
    }
    if split.len() > 1 {
        assert_eq!(
            (out, closing),
            run(&[bytes], small, late),
            "a split changed the answers"
        );
    }
});
