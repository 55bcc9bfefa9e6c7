//! `hello` (seed 003, §1–3 and §7): one shot. Read one message (up to 1024 bytes), log
//! it, answer `Hello from server!` and close. Like the seed, a client that closes
//! without sending anything still gets the answer.

use super::{ack::CHUNK, line_goodbye, log_received, Answer, Cx, Goodbye, Service, Session};

/// The one reply.
pub const REPLY: &[u8] = b"Hello from server!";

/// The one-shot hello service.
#[derive(Debug, Default, Clone)]
pub struct Hello;

/// One hello exchange.
#[derive(Debug, Default)]
pub struct HelloSession;

impl Service for Hello {
    type Session = HelloSession;
    fn name(&self) -> &str {
        "hello"
    }
    fn session(&self, _conn: &super::ConnInfo) -> HelloSession {
        HelloSession
    }
}

impl Session for HelloSession {
    type Event = ();

    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, ()>) -> usize {
        if !input.is_empty() {
            log_received(&input[..input.len().min(CHUNK)]);
            cx.send(REPLY);
            cx.answered(Answer::Message);
            cx.close();
        }
        input.len()
    }

    fn eof(&mut self, cx: &mut Cx<'_, ()>) {
        log_received(b"");
        cx.send(REPLY);
        cx.close();
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
    fn answers_once_and_closes() {
        let mut h = Harness::new(HelloSession);
        assert!(h.take_output().is_empty());
        h.feed(b"hi there");
        assert_eq!(h.take_output(), REPLY);
        assert!(h.is_closing());
        h.feed(b"more");
        assert!(h.take_output().is_empty());
    }

    #[test]
    fn empty_message_still_answered_like_the_seed() {
        let mut h = Harness::new(HelloSession);
        h.eof();
        assert_eq!(h.take_output(), REPLY);
        assert!(h.is_closing());
    }
}
