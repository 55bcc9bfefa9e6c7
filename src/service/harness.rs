//! Drives a session on plain buffers, with no socket: for unit tests, property tests
//! and fuzzers. It drives the very engine the models drive, so what a test sees is what
//! a connection under any model gets: the input limit, the mailbox overflow (a slow
//! consumer), the goodbyes, the budget, the lingering close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{Alone, Conn, Shared};
use super::{ConnInfo, Goodbye, Session};
use crate::base::mailbox::WakeKind;
use crate::base::{Budget, Clock, Limits, Stats, CLOSE_REASONS};

/// Drives a session through the connection engine, with no socket. Output waits until
/// [`Harness::take_output`], as if the client read only then; time moves only when the
/// test moves [`Harness::now`].
pub struct Harness<S: Session> {
    conn: Conn<S, Alone>,
    /// The clock handed to the engine and the session; tests move it forward by hand.
    pub now: Instant,
}

impl<S: Session> Harness<S> {
    /// Wraps a session under the default limits, with write coalescing off (events are
    /// written as they come, so a test needs no window to pass), and calls its `open`.
    pub fn new(session: S) -> Self {
        Harness::with_limits(
            session,
            Limits {
                coalesce: Duration::ZERO,
                ..Limits::default()
            },
        )
    }

    /// Wraps a session under `limits` (a small `max_input` or `max_queue` shows that
    /// limit's close) and calls its `open`.
    pub fn with_limits(session: S, limits: Limits) -> Self {
        let now = Instant::now();
        let shared = Shared {
            name: "test".into(),
            budget: Arc::new(Budget::new(limits.max_buffered)),
            limits: crate::base::Live::new(limits),
            stats: Arc::new(Stats::default()),
        };
        let mut conn = Conn::new(
            session,
            ConnInfo::test(1),
            Arc::new(Alone(shared)),
            WakeKind::None,
            now,
        );
        conn.open(&Clock::at(now), false);
        Harness { conn, now }
    }

    /// Charges what the connection buffers to `budget` instead of a budget of its own
    /// (to see a session refused past `--max-buffered`). Call it before feeding.
    pub fn with_budget(mut self, budget: Arc<Budget>) -> Self {
        let Some(host) = self.conn.listener_mut() else {
            unreachable!("the harness holds its connection's only listener");
        };
        host.0.budget = budget;
        self
    }

    fn clock(&self) -> Clock {
        Clock::at(self.now)
    }

    /// The session under test.
    pub fn session(&self) -> &S {
        self.conn.session()
    }

    /// The session under test, to change.
    pub fn session_mut(&mut self) -> &mut S {
        self.conn.session_mut()
    }

    /// Bytes read from the client, as a model hands them on: unconsumed bytes are kept
    /// and handed again with the next; events pushed meanwhile are delivered.
    pub fn feed(&mut self, bytes: &[u8]) {
        let clock = self.clock();
        self.conn.handle_read(bytes, &clock);
    }

    /// The client half-closes.
    pub fn eof(&mut self) {
        let clock = self.clock();
        self.conn.handle_eof(&clock);
    }

    /// The server ends the connection for `why` (what the engine does at a limit or a
    /// drain): the session's farewell.
    pub fn goodbye(&mut self, why: Goodbye) {
        let clock = self.clock();
        self.conn.goodbye(why, &clock);
    }

    /// The mailbox's wake-up: delivers what waits in it, or ends a slow consumer
    /// whose mailbox overflowed.
    pub fn deliver(&mut self) {
        let clock = self.clock();
        self.conn.on_mail(&clock);
    }

    /// Moves the clock to `now` and runs what has come due there: the session's timer,
    /// the engine's idle check, the goodbye's grace, the lingering close.
    pub fn advance_to(&mut self, now: Instant) {
        self.now = now;
        if now >= self.conn.next_deadline() {
            let clock = self.clock();
            self.conn.tick(&clock);
        }
    }

    /// Everything written for the client so far, taken out (as a client reads it).
    /// Once the session has closed and all is taken, the write side is shut down as a
    /// model would.
    pub fn take_output(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(b) = self.conn.poll_transmit() {
            v.extend_from_slice(b);
            let n = b.len();
            self.conn.handle_sent(n);
        }
        if self.conn.poll_shutdown_write() {
            let clock = self.clock();
            self.conn.handle_shut_write(&clock);
        }
        v
    }

    /// Whether a model would read the socket now: not while the client leaves more
    /// than `max_output` of replies unread (take them with [`Harness::take_output`]).
    pub fn is_reading(&self) -> bool {
        self.conn.wants_read()
    }

    /// Whether the connection is ending: the session asked to close, or the engine
    /// ended it (see [`Harness::closed_by`]).
    pub fn is_closing(&self) -> bool {
        self.conn.is_closing()
    }

    /// Why the connection ended, as the metrics count it (`done`, `eof`,
    /// `input_limit`, `slow_consumer`, ...: [`CLOSE_REASONS`]); `None` while open.
    pub fn closed_by(&self) -> Option<&'static str> {
        let reason = self.conn.reason();
        (reason != super::engine::Reason::Open).then(|| CLOSE_REASONS[reason as usize])
    }

    /// The counters the connection adds to (a listener's, in a server).
    pub fn stats(&self) -> &Stats {
        &self.conn.listener().stats
    }
}

#[cfg(test)]
mod tests {
    //! What the harness shows because it drives the engine: closes a session cannot
    //! make by itself.

    use super::*;
    use crate::service::chat::{Chat, ChatOptions};
    use crate::service::{Cx, Service};

    /// Consumes nothing and never closes: a protocol bug the engine must bound.
    struct Hoard;
    impl Session for Hoard {
        type Event = ();
        fn read(&mut self, _input: &[u8], _cx: &mut Cx<'_, ()>) -> usize {
            0
        }
    }

    #[test]
    fn input_a_session_never_consumes_is_closed_at_the_input_limit() {
        let mut h = Harness::new(Hoard);
        let limit = Limits::default().max_input;
        for _ in 0..limit / 1024 - 1 {
            h.feed(&[b'x'; 1024]);
        }
        assert!(!h.is_closing(), "below the limit the bytes wait for more");
        h.feed(&[b'x'; 1024]);
        assert!(h.is_closing(), "a full input buffer not consumed ends it");
        assert_eq!(h.closed_by(), Some("input_limit"));
        h.feed(b"more");
        assert!(h.take_output().is_empty(), "nothing more is read or said");
    }

    #[test]
    fn a_chat_member_that_never_takes_its_messages_is_ended_as_a_slow_consumer() {
        let opts = ChatOptions::default();
        let chat = Chat::new(opts.hub().unwrap(), &opts);
        let mut talker = Harness::new(chat.session(&ConnInfo::test(1)));
        let mut sleeper = Harness::new(chat.session(&ConnInfo::test(2)));
        talker.feed(b"JOIN r\n");
        sleeper.feed(b"JOIN r\n");
        sleeper.deliver();
        sleeper.take_output();
        // Past the default mailbox bound (1 MiB) of messages the sleeper never takes.
        let line = format!("SAY r {}\n", "x".repeat(4000));
        let queue = Limits::default().max_queue;
        for _ in 0..queue / 4000 + 2 {
            talker.feed(line.as_bytes());
            talker.deliver();
            talker.take_output();
        }
        assert!(!sleeper.is_closing(), "told only when its mailbox wakes it");
        sleeper.deliver();
        assert_eq!(sleeper.take_output(), b"ERR slow-consumer\n");
        assert!(sleeper.is_closing());
        assert_eq!(sleeper.closed_by(), Some("slow_consumer"));
        assert_eq!(
            sleeper
                .stats()
                .slow_consumers
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert!(!talker.is_closing(), "the talker is unaffected");
    }
}
