//! The gate with a recording service behind it, for the `proxy_header` fuzz target and
//! the property tests in `tests/parsers.rs`: both feed it bytes in arbitrary reads and
//! compare what came out. Not an API: hidden from the docs, and shaped only by what
//! those checks need to see.

use std::time::Duration;

use super::Gate;
use crate::service::{ConnInfo, Cx, Harness, Service, Session};

/// Writes `open <address>` when opened, then every byte it is given: its output shows
/// whom the gate said the client was and what the gate passed on.
pub struct Record;

/// A [`Record`] connection.
pub struct RecordSession(String);

impl Service for Record {
    type Session = RecordSession;
    fn name(&self) -> &str {
        "record"
    }
    fn session(&self, conn: &ConnInfo) -> RecordSession {
        RecordSession(format!("open {}\n", conn.peer))
    }
}

impl Session for RecordSession {
    type Event = ();
    fn open(&mut self, cx: &mut Cx<'_, ()>) {
        cx.send(self.0.as_bytes());
    }
    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, ()>) -> usize {
        cx.send(input);
        input.len()
    }
}

/// Feeds `reads` to a gate (5 s header deadline, no per-address limit) in front of a
/// [`Record`] for the connection of [`ConnInfo::test`]`(1)`: what came out, and whether
/// the connection is closing.
pub fn gate(reads: &[&[u8]]) -> (Vec<u8>, bool) {
    let session = Gate::new(Record, Some(Duration::from_secs(5)), None).session(&ConnInfo::test(1));
    let mut h = Harness::new(session);
    let mut out = Vec::new();
    for r in reads {
        h.feed(r);
        out.extend(h.take_output());
    }
    (out, h.is_closing())
}
