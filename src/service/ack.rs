//! `ack` (seeds 000/001): for every chunk read, up to 1024 bytes, log it and answer
//! `ACK!`; close on EOF. Unframed like the seed: a client that waits for each `ACK!`
//! before sending again gets exactly one per message.

use super::{line_goodbye, log_received, Answer, Cx, Goodbye, Service, Session};

/// The seed's chunk size: one `recv(1024)`, one `ACK!`.
pub const CHUNK: usize = 1024;
/// The reply to every chunk.
pub const REPLY: &[u8] = b"ACK!";

/// The ACK service.
#[derive(Debug, Default, Clone)]
pub struct Ack;

/// One ACK connection: it keeps no state at all.
#[derive(Debug, Default)]
pub struct AckSession;

impl Service for Ack {
    type Session = AckSession;
    fn name(&self) -> &str {
        "ack"
    }
    fn session(&self, _conn: &super::ConnInfo) -> AckSession {
        AckSession
    }
}

impl Session for AckSession {
    type Event = ();

    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, ()>) -> usize {
        for chunk in input.chunks(CHUNK) {
            log_received(chunk);
            cx.send(REPLY);
            cx.answered(Answer::Message);
        }
        input.len()
    }

    fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, ()>) {
        line_goodbye(why, cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Harness;

    #[test]
    fn one_ack_per_chunk_of_1024() {
        let mut h = Harness::new(AckSession);
        h.feed(b"hello");
        assert_eq!(h.take_output(), b"ACK!");
        h.feed(&[b'x'; 2049]);
        assert_eq!(h.take_output(), b"ACK!ACK!ACK!");
        h.eof();
        assert!(h.is_closing());
    }

    #[test]
    fn invalid_utf8_is_acknowledged() {
        let mut h = Harness::new(AckSession);
        h.feed(&[0xff, 0xfe, 0x00, 0xc3]);
        assert_eq!(h.take_output(), b"ACK!");
        assert!(!h.is_closing());
    }

    #[test]
    fn busy_and_idle_goodbyes_are_lines() {
        let mut h = Harness::new(AckSession);
        h.goodbye(Goodbye::Busy);
        assert_eq!(h.take_output(), b"ERR server busy\n");
        assert!(h.is_closing());
        let mut h = Harness::new(AckSession);
        h.goodbye(Goodbye::Idle);
        assert_eq!(h.take_output(), b"ERR idle timeout\n");
    }
}
