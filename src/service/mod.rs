//! Services: each protocol written once, as a sans-IO state machine.
//!
//! A [`Service`] is a factory of [`Session`]s, one per connection. A session never
//! touches a socket, a thread or a clock of its own: the model that drives it hands it
//! the bytes it read, the events pushed into its mailbox and the passing of time, and
//! the session answers through a [`Cx`]: bytes to send, a close, a mailbox sender to
//! register with shared state. That is what lets one protocol run under every
//! concurrency model, and what lets a unit test or a fuzzer drive it on plain buffers.

use std::net::SocketAddr;
use std::time::Instant;

use crate::base::mailbox::{Mailbox, Sender, WakeKind};
pub use crate::base::meter::Answer;
use crate::base::{Budget, Clock, Held};
use std::sync::Arc;

pub mod ack;
pub mod chat;
pub(crate) mod engine;
pub mod gate;
pub mod greet;
mod harness;
pub mod hello;
pub mod http;
pub mod proxy;
pub mod tls;
pub mod ws;

pub use harness::Harness;

/// Who a session is talking to.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Process-wide unique connection number, also shown in the connection's log span.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
}

impl ConnInfo {
    /// A connection description for tests and fuzzers that drive a session directly.
    pub fn test(id: u64) -> ConnInfo {
        let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
        ConnInfo { id, peer: addr }
    }
}

/// Why the model asks a session to say goodbye: the session answers in its own
/// protocol (`ERR server busy`, an HTTP 503, a WebSocket close code) and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goodbye {
    /// The server is at `--max-conns`: this client is refused.
    Busy,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// The server is shutting down.
    Shutdown,
    /// The session's mailbox overflowed because the client does not read fast enough.
    SlowConsumer,
    /// The client's address has `--max-conns-per-ip` connections open already: this
    /// one is refused.
    TooManyFromAddress,
}

impl Goodbye {
    /// Whether the client is refused before it is served (busy, or too many
    /// connections from its address): it is told why once its protocol can say it
    /// (after a TLS handshake, a WebSocket upgrade), and nothing else.
    pub fn is_refusal(self) -> bool {
        matches!(self, Goodbye::Busy | Goodbye::TooManyFromAddress)
    }
}

/// A protocol: makes one session per accepted connection.
pub trait Service: Send + Sync + 'static {
    /// The per-connection state machine.
    type Session: Session;
    /// Short name used in logs (`ack`, `http`, ...).
    fn name(&self) -> &str;
    /// A fresh session for a connection just accepted.
    fn session(&self, conn: &ConnInfo) -> Self::Session;
}

/// One connection's protocol state. Every method is called by the model on the
/// connection's own thread or task, never concurrently.
pub trait Session: Send + 'static {
    /// What other parts of the server can push into this session's mailbox.
    /// Sessions that are only driven by their own bytes use `()`.
    type Event: Send + 'static;

    /// Whether [`Session::may_lend`] can ever say yes: a model asks only sessions
    /// that can.
    const LENDS: bool = false;

    /// The connection is established: a greeting goes here.
    fn open(&mut self, cx: &mut Cx<'_, Self::Event>) {
        let _ = cx;
    }

    /// Bytes arrived. Returns how many were consumed; the rest is handed again, with
    /// more, on the next call ("need more bytes" is a normal answer). A session given
    /// [`Cx::input_limit`] bytes or more must consume some or close.
    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, Self::Event>) -> usize;

    /// The client closed its sending side. The default closes once replies are sent.
    fn eof(&mut self, cx: &mut Cx<'_, Self::Event>) {
        cx.close();
    }

    /// An event arrived in the mailbox (see [`Cx::mailbox`]).
    fn event(&mut self, event: Self::Event, cx: &mut Cx<'_, Self::Event>) {
        let _ = (event, cx);
    }

    /// When the session next wants [`Session::timeout`] called (pings, request timers).
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// Whether this connection may stay quiet past the idle timeout: a chat member
    /// listening to a quiet room sends nothing and may receive nothing for minutes.
    /// Such a connection is not ended as idle; the model turns on TCP keepalive on it
    /// instead, so a peer that vanished (power loss, cable pulled) is still detected.
    fn idle_ok(&self) -> bool {
        false
    }

    /// Whether, while the connection waits with nothing unsent, the senders of its
    /// mailbox may write events on its socket themselves
    /// ([`Sender::send_or_write`](crate::base::mailbox::Sender::send_or_write)): only a
    /// session that would hand the next events on as those bytes, unchanged and in
    /// order (nothing of its own held back or awaited), with no framing or encryption
    /// of the connection's own around them. Asked each time the connection goes to
    /// wait with a mailbox; the default says no.
    fn may_lend(&mut self) -> bool {
        false
    }

    /// The deadline returned by [`Session::deadline`] has passed.
    fn timeout(&mut self, cx: &mut Cx<'_, Self::Event>) {
        let _ = cx;
    }

    /// The model ends the connection for `why`; the session writes its protocol's
    /// farewell. The default closes without a word. After a goodbye the engine drops
    /// the input not yet consumed; a session that does not close at once may still
    /// finish what it owes (a WebSocket's close handshake, the answers a chat member
    /// awaits for commands it read before a shutdown), bounded by the model's grace.
    fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, Self::Event>) {
        let _ = why;
        cx.close();
    }
}

/// What a session can do in answer to a call: write bytes, close, get a mailbox.
pub struct Cx<'a, E> {
    clock: &'a Clock,
    out: &'a mut Vec<u8>,
    closing: &'a mut bool,
    mailbox: &'a mut Option<Arc<Mailbox<E>>>,
    mailbox_limit: usize,
    wake: WakeKind,
    conn: &'a ConnInfo,
    input_limit: usize,
    budget: &'a Arc<Budget>,
    /// The model is not reading the socket now (backpressure: see
    /// [`Cx::is_reading_paused`]).
    paused: bool,
    /// Requests answered in this call, and the kind of the last (for the metrics).
    answers: (u32, Answer),
    /// Refusals the session made in this call (for the metrics).
    refusals: Refusals,
}

/// Why a session refused its client in one call, as the listener's counters count it:
/// the engine adds it to the `over_budget` and `refused{reason="auth"}` counters once
/// per connection, and a wrapper passes its inner session's on with
/// [`Cx::add_refusals`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals(u8);

impl Refusals {
    /// A buffer of the session could not grow within `--max-buffered` ([`Cx::hold`]
    /// said no).
    pub const OVER_BUDGET: Refusals = Refusals(1);
    /// The client failed authentication and is closed ([`Cx::refuse_auth`]).
    pub const AUTH: Refusals = Refusals(2);

    /// Whether there is none.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every refusal of `other` is in this one.
    pub fn contains(self, other: Refusals) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Refusals {
    type Output = Refusals;
    fn bitor(self, other: Refusals) -> Refusals {
        Refusals(self.0 | other.0)
    }
}

impl<'a, E> Cx<'a, E> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        clock: &'a Clock,
        out: &'a mut Vec<u8>,
        closing: &'a mut bool,
        mailbox: &'a mut Option<Arc<Mailbox<E>>>,
        mailbox_limit: usize,
        wake: WakeKind,
        conn: &'a ConnInfo,
        input_limit: usize,
        budget: &'a Arc<Budget>,
        paused: bool,
    ) -> Self {
        Cx {
            clock,
            out,
            closing,
            mailbox,
            mailbox_limit,
            wake,
            conn,
            input_limit,
            budget,
            paused,
            answers: (0, Answer::Message),
            refusals: Refusals(0),
        }
    }

    /// Marks one request (a message, an HTTP request, a chat command) answered: its
    /// reply is written. The model times it, from the read that brought the request to
    /// the write that sends its reply, in the `kind` histogram of the metrics.
    pub fn answered(&mut self, kind: Answer) {
        self.answers = (self.answers.0 + 1, kind);
    }

    /// Requests marked answered in this call, and the kind of the last.
    pub fn answers(&self) -> (u32, Answer) {
        self.answers
    }

    /// Adds what a wrapped session marked answered ([`Cx::answers`] of the context a
    /// wrapper such as TLS or the gate gave it) to this call's answers.
    pub fn add_answers(&mut self, (n, kind): (u32, Answer)) {
        if n > 0 {
            self.answers = (self.answers.0 + n, kind);
        }
    }

    /// The refusals made in this call ([`Cx::hold`] refused, [`Cx::refuse_auth`]).
    pub fn refusals(&self) -> Refusals {
        self.refusals
    }

    /// Adds what a wrapped session refused ([`Cx::refusals`] of the context a wrapper
    /// gave it) to this call's refusals.
    pub fn add_refusals(&mut self, r: Refusals) {
        self.refusals = self.refusals | r;
    }

    /// The client failed authentication (too many bad tokens) and the session is
    /// closing it, in its protocol's way: counted as a connection refused for `auth`.
    pub fn refuse_auth(&mut self) {
        self.refusals = self.refusals | Refusals::AUTH;
    }

    /// The time of this call, as read by the model (the system clock is read only if
    /// a session asks).
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The connection this session serves.
    pub fn conn(&self) -> &ConnInfo {
        self.conn
    }

    /// Queue bytes for the client.
    pub fn send(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// The outgoing buffer itself, for encoders that write in place.
    pub fn out(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Bytes queued and not yet written to the socket.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Close the connection once everything queued is sent.
    pub fn close(&mut self) {
        *self.closing = true;
    }

    /// Whether [`Cx::close`] was called.
    pub fn is_closing(&self) -> bool {
        *self.closing
    }

    /// Whether the model has stopped reading the socket: the client leaves more than
    /// the output limit of replies unread, so whatever it sent since waits in the
    /// socket. A timer on the client's input (a request head that must arrive in
    /// time) should not run out then: the wait is the server's, and a client that
    /// never reads is ended by the write timeout.
    pub fn is_reading_paused(&self) -> bool {
        self.paused
    }

    /// The most input bytes the model will hold for this session at once.
    pub fn input_limit(&self) -> usize {
        self.input_limit
    }

    /// Says that `held` (a buffer of this session's: a message being assembled) now
    /// holds `bytes` for the client, charged to the server's `--max-buffered` budget.
    /// Returns false, changing nothing, when growing would pass the budget: the
    /// session should then tell the client the server is busy and close (the
    /// connection is counted `over_budget`).
    pub fn hold(&mut self, held: &mut Held, bytes: usize) -> bool {
        let ok = held.set(self.budget, bytes);
        if !ok {
            self.refusals = self.refusals | Refusals::OVER_BUDGET;
        }
        ok
    }

    /// A sender into this session's mailbox, made on first use. Whoever holds it can
    /// wake the session with events; the mailbox is bounded and overflowing it ends the
    /// session with [`Goodbye::SlowConsumer`].
    pub fn mailbox(&mut self) -> std::io::Result<Sender<E>> {
        if self.mailbox.is_none() {
            *self.mailbox = Some(Arc::new(Mailbox::new(self.mailbox_limit, self.wake)?));
        }
        Ok(Sender::new(
            self.mailbox.as_ref().expect("just made").clone(),
        ))
    }
}

/// The farewell of the line-oriented seed services: one `ERR` line, then close.
pub fn line_goodbye<E>(why: Goodbye, cx: &mut Cx<'_, E>) {
    cx.send(match why {
        Goodbye::Busy => b"ERR server busy\n".as_slice(),
        Goodbye::Idle => b"ERR idle timeout\n",
        Goodbye::Shutdown => b"ERR server shutting down\n",
        Goodbye::SlowConsumer => b"ERR slow-consumer\n",
        Goodbye::TooManyFromAddress => b"ERR too many connections from your address\n",
    });
    cx.close();
}

/// Logs a received message at debug level, lossily: invalid UTF-8 is shown with
/// replacement characters and never fails. Nothing is formatted unless debug is on.
///
/// Every ACK, greeting and WebSocket message passes here, and debug is usually off:
/// the level check is inlined into the session (a load and a compare) and the call
/// that logs stays out of line, so a message costs no call when nothing is logged
/// (measured: about 12 instructions per ACK round trip, BENCHMARKS.md).
#[inline(always)]
pub fn log_received(bytes: &[u8]) {
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        log_received_now(bytes);
    }
}

/// [`log_received`] once debug is known to be on.
#[cold]
#[inline(never)]
fn log_received_now(bytes: &[u8]) {
    tracing::debug!("Received: {}", String::from_utf8_lossy(bytes));
}

#[cfg(test)]
mod props {
    //! Property tests: any split of the same bytes into reads gives the same replies
    //! where the protocol is framed, the seeds' per-read counts where it is not, and
    //! never a panic.

    use super::*;
    use proptest::prelude::*;

    fn splits() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 0..8)
    }

    proptest! {
        #[test]
        fn ack_answers_each_read_once_per_1024_bytes(reads in splits()) {
            let mut h = Harness::new(ack::AckSession);
            let mut expected = 0;
            for r in &reads {
                h.feed(r);
                expected += r.len().div_ceil(ack::CHUNK);
            }
            let out = h.take_output();
            prop_assert_eq!(out, ack::REPLY.repeat(expected));
        }

        #[test]
        fn greet_answers_each_read_once_per_1024_bytes(reads in splits()) {
            let mut h = Harness::new(greet::GreetSession);
            let mut expected = 1;
            for r in &reads {
                h.feed(r);
                expected += r.len().div_ceil(ack::CHUNK);
            }
            prop_assert_eq!(h.take_output(), greet::GREETING.repeat(expected));
        }

        #[test]
        fn hello_answers_exactly_once_whatever_the_split(reads in splits()) {
            let mut h = Harness::new(hello::HelloSession);
            for r in &reads {
                h.feed(r);
            }
            h.eof();
            prop_assert_eq!(h.take_output(), hello::REPLY);
            prop_assert!(h.is_closing());
        }
    }
}
