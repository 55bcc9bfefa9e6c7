//! `greet` (seed 002): say `Hi! I am server\n` on connect and again after every chunk
//! received, logging what the client said. The seed's client answers
//! `HI! I am client.` to each greeting, forever; ours ends on EOF.

use super::{ack::CHUNK, line_goodbye, log_received, Answer, Cx, Goodbye, Service, Session};

/// Sent on connect and after every chunk received.
pub const GREETING: &[u8] = b"Hi! I am server\n";
/// What the seed's client answers.
pub const CLIENT_REPLY: &[u8] = b"HI! I am client.";

/// The greeting service.
#[derive(Debug, Default, Clone)]
pub struct Greet;

/// One greeting conversation.
#[derive(Debug, Default)]
pub struct GreetSession;

impl Service for Greet {
    type Session = GreetSession;
    fn name(&self) -> &str {
        "greet"
    }
    fn session(&self, _conn: &super::ConnInfo) -> GreetSession {
        GreetSession
    }
}

impl Session for GreetSession {
    type Event = ();

    fn open(&mut self, cx: &mut Cx<'_, ()>) {
        cx.send(GREETING);
    }

    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, ()>) -> usize {
        for chunk in input.chunks(CHUNK) {
            log_received(chunk);
            cx.send(GREETING);
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
    fn greets_on_connect_and_after_each_message() {
        let mut h = Harness::new(GreetSession);
        assert_eq!(h.take_output(), GREETING);
        h.feed(CLIENT_REPLY);
        assert_eq!(h.take_output(), GREETING);
        h.feed(CLIENT_REPLY);
        assert_eq!(h.take_output(), GREETING);
        h.eof();
        assert!(h.is_closing());
    }
}
