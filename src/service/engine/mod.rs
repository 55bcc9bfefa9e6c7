//! One connection's engine, written once and driven by every model, with no IO in it.
//!
//! In the manner of quinn-proto's `Connection`, a model feeds it what happened on the
//! socket ([`Conn::handle_read`], [`Conn::handle_eof`], [`Conn::handle_sent`],
//! [`Conn::handle_send_blocked`], [`Conn::handle_error`]) and the time (a [`Clock`]
//! per wake-up, [`Conn::tick`] when the next deadline comes), and polls it for what to
//! do: bytes to write ([`Conn::poll_transmit`]), whether to shut the write side down
//! ([`Conn::poll_shutdown_write`]) or to turn on TCP keepalive
//! ([`Conn::poll_keepalive`]), whether to read ([`Conn::wants_read`]) and when to wake
//! next ([`Conn::next_deadline`]). The engine feeds the session, delivers its mailbox
//! and enforces the limits: bounded input, bounded output (a client that does not read
//! stops being read), idle and write-stall timeouts, write coalescing, the goodbye on
//! shutdown, and a lingering close so a reply is not destroyed by a reset. The system
//! calls themselves are in the models (`model/sock.rs`, shared by every model).
//!
//! It lives beside the sessions rather than with the models because it is as free of
//! IO as they are: [`super::Harness`] drives this same value on plain buffers, so a
//! unit test sees the input limit, the mailbox overflow, the goodbye and the drain
//! exactly as a connection under any model does.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::base::budget::FREE;
use crate::base::mailbox::{Mailbox, WakeKind};
use crate::base::meter::{self, Answer, Report, REPORT_BYTES};
use crate::base::{Budget, Clock, Limits, Stats};
use crate::service::{ConnInfo, Cx, Goodbye, Refusals, Session};
use timer::{Timer, TimerTable};

mod deadline;
mod events;
mod output;
mod timer;

#[cfg(test)]
mod tests;

/// How long a closed connection waits for the client's EOF before dropping unread
/// input (which would make the kernel answer with a reset).
const LINGER: Duration = Duration::from_secs(2);
/// How long a session may take to close after a goodbye (a WebSocket handshake
/// before its close frame, say).
const GOODBYE_GRACE: Duration = Duration::from_secs(5);
/// A deadline far enough to mean "none".
const FAR: Duration = Duration::from_secs(86_400);
/// Largest buffer capacity kept on an idle connection; larger ones are freed.
const KEEP_CAPACITY: usize = 4096;

/// Quarters of the idle timeout: a connection is checked at each quarter and closed
/// after four quiet ones, so it is closed between 1 and 1.25 idle timeouts after its
/// last byte, without reading the clock for every message.
pub(crate) const IDLE_QUARTERS: u32 = 4;

/// Why a connection ended, as logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Still open.
    Open,
    /// The client closed (EOF) and the session finished.
    PeerClosed,
    /// The session closed the connection.
    Done,
    /// Refused at `--max-conns`.
    Busy,
    /// Idle timeout.
    Idle,
    /// Server shutdown.
    Shutdown,
    /// The client stopped reading: output stalled past the write timeout.
    SlowReader,
    /// The mailbox overflowed.
    SlowConsumer,
    /// The session neither consumed a full input buffer nor closed.
    InputLimit,
    /// Its buffered input would have passed the server's `--max-buffered`.
    OverBudget,
    /// A socket error (reset, broken pipe...).
    Error,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Open => "open",
            Reason::PeerClosed => "peer closed",
            Reason::Done => "done",
            Reason::Busy => "server busy",
            Reason::Idle => "idle timeout",
            Reason::Shutdown => "shutdown",
            Reason::SlowReader => "slow reader",
            Reason::SlowConsumer => "slow consumer",
            Reason::InputLimit => "input limit",
            Reason::OverBudget => "over the buffer budget",
            Reason::Error => "error",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading and writing.
    Open,
    /// The session closed: flush what is queued, then shut down the write side.
    Closing,
    /// Write side shut down; reading and discarding until the client's EOF (or the
    /// [`Timer::Linger`] deadline).
    Lingering,
    /// Finished: drop the socket.
    Done,
}

/// Where a connection stands with TCP keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeepAlive {
    /// Not wanted.
    Off,
    /// Wanted: the model turns it on when it polls for it.
    Due,
    /// Turned on.
    On,
}

/// What the connections of one listener share, as far as the engine is concerned: its
/// service's name (for the log span), the limits, the counters and the server's budget
/// of buffered bytes. One pointer per connection reaches all of them.
pub(crate) struct Shared {
    /// The service's name, for logs.
    pub(crate) name: Box<str>,
    /// The server's limits, changed by a config reload: each connection takes them
    /// once, when it opens, and admission reads `max_conns` per accept.
    pub(crate) limits: crate::base::Live<Limits>,
    /// The listener's counters.
    pub(crate) stats: Arc<Stats>,
    /// The server's budget of bytes buffered for clients, shared by every listener.
    pub(crate) budget: Arc<Budget>,
}

/// Whatever a connection points at for its listener's [`Shared`] part: the model's
/// listener (which adds its shutdown signal and refusal count), or [`Shared`] alone
/// under the [`super::Harness`]. Generic rather than a trait object: the engine reads
/// its limits on every message.
pub(crate) trait Host: std::ops::Deref<Target = Shared> {}

impl<T: std::ops::Deref<Target = Shared>> Host for T {}

/// [`Shared`] on its own, for a connection with no model around it.
pub(crate) struct Alone(pub(crate) Shared);

impl std::ops::Deref for Alone {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// One connection: its session, buffers, timers and how it stands (see the module
/// documentation).
pub(crate) struct Conn<S: Session, L: Host> {
    session: S,
    pub(crate) info: ConnInfo,
    /// The listener's name and counters.
    listener: Arc<L>,
    /// The limits in force when the connection opened: a reload changes them for the
    /// connections that open after it, and never under a connection's feet.
    limits: Arc<Limits>,
    wake: WakeKind,
    out: Vec<u8>,
    /// Bytes of `out` already sent (`out` stays far below 4 GiB: `--max-output`
    /// stops reading long before).
    out_pos: u32,
    pending: Vec<u8>,
    mailbox: Option<Arc<Mailbox<S::Event>>>,
    closing: bool,
    phase: Phase,
    eof: bool,
    /// The goodbye said, if one was (its grace is [`Timer::Goodbye`]).
    goodbye: Option<Goodbye>,
    draining: bool,
    opened: Instant,
    /// Bytes moved since the last idle check.
    active: bool,
    /// Idle checks in a row that saw no bytes.
    quiet: u8,
    /// TCP keepalive for a quiet connection its session keeps: not wanted, wanted
    /// (for [`Conn::poll_keepalive`]), or turned on.
    keepalive: KeepAlive,
    /// Every deadline of the connection but its session's own, by name.
    timers: TimerTable,
    /// When output made by events was last written (for [`Limits::coalesce`]).
    ///
    ///
    /// Kept as milliseconds after `opened` plus one (0: never) in four bytes: every
    /// connection carries it, and an idle one should stay small.
    events_written: u32,
    bytes_in: u64,
    bytes_out: u64,
    /// Bytes read and written that the listener's meter has not been told of yet, each
    /// under [`REPORT_BYTES`] (see [`Conn::report`]).
    unreported: (u32, u32),
    writes: u32,
    reason: Reason,
    /// Requests answered and not yet sent, the kind of the last, and when the read
    /// before them came (in [`meter::ticks`]): timed once their reply is written.
    answers: (u16, Answer),
    read_at: u64,
    /// The socket is lent to the mailbox's senders ([`Conn::lend`]).
    lent: bool,
}

impl<S: Session, L: Host> Conn<S, L> {
    pub(crate) fn new(
        session: S,
        info: ConnInfo,
        listener: Arc<L>,
        wake: WakeKind,
        now: Instant,
    ) -> Self {
        let limits = listener.limits.get();
        let mut timers = TimerTable::default();
        timers.set(Timer::Idle, now + limits.idle_timeout / IDLE_QUARTERS, now);
        Conn {
            session,
            info,
            listener,
            limits,
            wake,
            out: Vec::new(),
            out_pos: 0,
            pending: Vec::new(),
            mailbox: None,
            closing: false,
            phase: Phase::Open,
            eof: false,
            goodbye: None,
            draining: false,
            opened: now,
            active: false,
            quiet: 0,
            keepalive: KeepAlive::Off,
            timers,
            events_written: 0,
            bytes_in: 0,
            bytes_out: 0,
            unreported: (0, 0),
            writes: 0,
            reason: Reason::Open,
            answers: (0, Answer::Message),
            read_at: 0,
            lent: false,
        }
    }

    #[inline]
    fn call<R>(&mut self, clock: &Clock, f: impl FnOnce(&mut S, &mut Cx<'_, S::Event>) -> R) -> R {
        // Sessions log per message at debug level; entering the span costs as much as
        // a small reply, so it is entered only when those lines are wanted, out of
        // line: an `Option` of an entered span, even `None`, is dropped by a call of
        // about a dozen instructions per message (measured, BENCHMARKS.md).
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            return self.call_in_span(clock, f);
        }
        self.call_now(clock, f)
    }

    /// [`Conn::call`] with the connection's span entered, for debug logging.
    #[cold]
    #[inline(never)]
    fn call_in_span<R>(
        &mut self,
        clock: &Clock,
        f: impl FnOnce(&mut S, &mut Cx<'_, S::Event>) -> R,
    ) -> R {
        let _entered = self.span().entered();
        self.call_now(clock, f)
    }

    #[inline(always)]
    fn call_now<R>(
        &mut self,
        clock: &Clock,
        f: impl FnOnce(&mut S, &mut Cx<'_, S::Event>) -> R,
    ) -> R {
        let paused = self.phase == Phase::Open && self.unsent() >= self.limits.max_output;
        let mut cx = Cx::new(
            clock,
            &mut self.out,
            &mut self.closing,
            &mut self.mailbox,
            self.limits.max_queue,
            self.wake,
            &self.info,
            self.limits.max_input,
            &self.listener.budget,
            paused,
        );
        let r = f(&mut self.session, &mut cx);
        let (n, kind) = cx.answers();
        let refusals = cx.refusals();
        if n > 0 {
            self.count_answers(n, kind);
        }
        if !refusals.is_empty() {
            self.count_refusals(refusals);
        }
        if self.closing && self.phase == Phase::Open {
            self.phase = Phase::Closing;
            if self.reason == Reason::Open {
                self.reason = if self.eof {
                    Reason::PeerClosed
                } else {
                    Reason::Done
                };
            }
        }
        r
    }

    /// The session refused its client: a buffer of its own past `--max-buffered`
    /// (counted `over_budget`, and the close's reason, once per connection, whether
    /// the engine's pending input or a session's buffer passed it), or a failed
    /// authentication.
    #[cold]
    fn count_refusals(&mut self, r: Refusals) {
        let stats = &self.listener.stats;
        if r.contains(Refusals::OVER_BUDGET) && self.reason != Reason::OverBudget {
            stats.over_budget.fetch_add(1, Ordering::Relaxed);
            if matches!(
                self.reason,
                Reason::Open | Reason::Done | Reason::PeerClosed
            ) {
                self.reason = Reason::OverBudget;
            }
        }
        if r.contains(Refusals::AUTH) {
            stats.refused_auth.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `n` more requests answered and not yet sent. (Kept in two bytes: an idle
    /// connection should stay small; past 65,535 unsent, those are timed now.)
    fn count_answers(&mut self, n: u32, kind: Answer) {
        let total = u32::from(self.answers.0) + n;
        match u16::try_from(total) {
            Ok(total) => self.answers = (total, kind),
            Err(_) => {
                self.answers.0 = u16::MAX;
                self.report_now(0, 0, true);
                self.count_answers(total - u32::from(u16::MAX), kind);
            }
        }
    }

    /// Tells the listener's meter, in one visit, the bytes moved since the last report
    /// plus `more_in` and `more_out`, and, once `sent` (the replies of the answers
    /// counted are all written), those answers and how long they took since the read
    /// before them. A connection reports when a batch of replies is all sent, at its
    /// idle checks, when [`REPORT_BYTES`] are unreported, and when it closes: per
    /// message, the meter costs one shard lookup, not one per read, send and answer.
    #[inline(always)]
    pub(super) fn report(&mut self, more_in: u64, more_out: u64, sent: bool) {
        let (bytes_in, bytes_out) = std::mem::take(&mut self.unreported);
        let mut r = Report {
            bytes_in: u64::from(bytes_in) + more_in,
            bytes_out: u64::from(bytes_out) + more_out,
            answers: 0,
            kind: Answer::Message,
            took: 0,
        };
        if sent && self.answers.0 > 0 {
            // The kind stays: it is read only with a count above zero.
            let (n, kind) = self.answers;
            self.answers.0 = 0;
            r.answers = n.into();
            r.kind = kind;
            r.took = meter::ticks().saturating_sub(self.read_at);
        }
        self.listener.stats.meter.report(r);
    }

    /// [`Conn::report`] off the per-message path (kept out of line there).
    #[cold]
    #[inline(never)]
    pub(super) fn report_now(&mut self, more_in: u64, more_out: u64, sent: bool) {
        self.report(more_in, more_out, sent);
    }

    /// `n` more bytes read, reported at once if that makes [`REPORT_BYTES`].
    #[inline]
    fn count_in(&mut self, n: usize) {
        let unreported = u64::from(self.unreported.0) + n as u64;
        if unreported < REPORT_BYTES {
            self.unreported.0 = unreported as u32;
        } else {
            self.report_now(n as u64, 0, false);
        }
    }

    /// `n` more bytes written, reported at once if that makes [`REPORT_BYTES`].
    #[inline]
    pub(super) fn count_out(&mut self, n: usize) {
        let unreported = u64::from(self.unreported.1) + n as u64;
        if unreported < REPORT_BYTES {
            self.unreported.1 = unreported as u32;
        } else {
            self.report_now(0, n as u64, false);
        }
    }

    /// The connection's log span (service, id, peer). It is made when a line is
    /// logged rather than kept for the connection's life: the lines read the same, and
    /// an idle connection holds no span in the subscriber's registry.
    pub(crate) fn span(&self) -> tracing::Span {
        tracing::info_span!("conn", svc = &*self.listener.name, id = self.info.id, peer = %self.info.peer)
    }

    /// The listener this connection belongs to.
    pub(crate) fn listener(&self) -> &L {
        &self.listener
    }

    /// The listener, to change, while this connection is the only one pointing at it.
    pub(crate) fn listener_mut(&mut self) -> Option<&mut L> {
        Arc::get_mut(&mut self.listener)
    }

    /// Starts the session. A refused connection goes straight into its busy goodbye
    /// without the session's `open`: a greeting (or a chat welcome and its guest nick)
    /// would promise a conversation the server is not going to have.
    pub(crate) fn open(&mut self, clock: &Clock, refused: bool) {
        self.span()
            .in_scope(|| tracing::info!("Accepted connection from {}", self.info.peer));
        if refused {
            self.say_goodbye(Goodbye::Busy, Reason::Busy, clock);
        } else {
            self.call(clock, |s, cx| s.open(cx));
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The session this connection drives.
    pub(crate) fn session(&self) -> &S {
        &self.session
    }

    /// The session this connection drives, to change.
    pub(crate) fn session_mut(&mut self) -> &mut S {
        &mut self.session
    }

    /// Whether the connection is ending: the session closed, or the engine ended it.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing || self.phase != Phase::Open
    }

    /// Why the connection ended (or [`Reason::Open`]).
    pub(crate) fn reason(&self) -> Reason {
        self.reason
    }

    pub(crate) fn has_output(&self) -> bool {
        (self.out_pos as usize) < self.out.len()
    }

    /// Bytes queued and not yet sent.
    fn unsent(&self) -> usize {
        self.out.len() - self.out_pos as usize
    }

    /// Whether there is output to write now (not held for coalescing).
    pub(crate) fn wants_write(&self) -> bool {
        self.has_output() && !(self.timers.is_set(Timer::Coalesce) && self.phase == Phase::Open)
    }

    /// Whether the socket should be read now: not while closing, and not while the
    /// client leaves more than `max_output` of replies unread (backpressure).
    pub(crate) fn wants_read(&self) -> bool {
        match self.phase {
            Phase::Open => !self.eof && self.unsent() < self.limits.max_output,
            Phase::Lingering => true,
            _ => false,
        }
    }

    /// Whether mailbox events should be taken now (the same backpressure).
    pub(crate) fn wants_events(&self) -> bool {
        self.phase == Phase::Open && self.unsent() < self.limits.max_output
    }

    pub(crate) fn mailbox(&self) -> Option<&Arc<Mailbox<S::Event>>> {
        self.mailbox.as_ref()
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining
    }

    /// How many bytes to read now: what the input limit leaves room for (at least
    /// one, so that a full buffer still sees its EOF or its next byte).
    pub(crate) fn read_room(&self) -> usize {
        self.limits
            .max_input
            .saturating_sub(self.pending.len())
            .max(1)
    }

    /// The connection goes to wait: lends its socket `fd` to the mailbox's senders if
    /// nothing is unsent, nothing held for coalescing, no goodbye said and the session
    /// agrees ([`Session::may_lend`]). The model calls [`Conn::reclaim`] as soon as it
    /// wakes, before anything else.
    ///
    /// # Safety
    ///
    /// `fd` is this connection's socket, kept open until [`Conn::reclaim`] or the
    /// connection's drop (which closes the mailbox) has returned.
    pub(crate) unsafe fn lend(&mut self, fd: std::os::fd::RawFd) {
        let Some(mb) = &self.mailbox else {
            return;
        };
        if self.phase != Phase::Open
            || self.goodbye.is_some()
            || self.draining
            || self.has_output()
            || self.timers.is_set(Timer::Coalesce)
            || !self.session.may_lend()
        {
            return;
        }
        let last = self.events_written_at();
        // SAFETY: the caller's promise.
        self.lent = unsafe { mb.lend(fd, self.limits.coalesce, last) };
    }

    /// Whether the socket is lent ([`Conn::lend`]).
    #[inline(always)]
    pub(crate) fn is_lent(&self) -> bool {
        self.lent
    }

    /// Takes the socket back from the mailbox's senders, counting what they wrote on
    /// it as this connection's output.
    pub(crate) fn reclaim(&mut self) {
        self.lent = false;
        let Some(used) = self.mailbox.as_ref().and_then(|mb| mb.reclaim()) else {
            return;
        };
        self.bytes_out += used.bytes;
        self.writes = self.writes.wrapping_add(used.writes);
        self.active = true;
        self.count_out(used.bytes as usize);
        if let Some(t) = used.last {
            self.set_events_written(t);
        }
    }

    /// Bytes were read from the client: feeds the session (and delivers events pushed
    /// meanwhile).
    pub(crate) fn handle_read(&mut self, data: &[u8], clock: &Clock) {
        self.bytes_in += data.len() as u64;
        self.read_at = meter::ticks();
        self.count_in(data.len());
        self.active = true;
        if self.phase != Phase::Open {
            // Lingering: read only to find the client's EOF. Closing: nothing more is
            // taken in.
            return;
        }
        self.on_input(data, clock);
        // Events pushed while this input was handled (a chat member's own messages) are
        // taken between reads: a client that sends fast and reads its replies is not
        // mistaken for a slow consumer because its input came in one long burst.
        if self.mail_waiting() {
            self.deliver(clock);
        }
    }

    fn on_input(&mut self, data: &[u8], clock: &Clock) {
        // Replies go at once, and take any held events with them.
        self.timers.stop(Timer::Coalesce);
        let before = self.pending.len();
        let consumed;
        if self.pending.is_empty() {
            consumed = self.call(clock, |s, cx| s.read(data, cx)).min(data.len());
            if consumed < data.len() && !self.closing {
                self.pending.extend_from_slice(&data[consumed..]);
            }
        } else {
            self.pending.extend_from_slice(data);
            let pending = std::mem::take(&mut self.pending);
            let n = self
                .call(clock, |s, cx| s.read(&pending, cx))
                .min(pending.len());
            self.pending = pending;
            self.pending.drain(..n);
            consumed = n;
            if self.closing {
                self.pending.clear();
            }
        }
        if self.pending.is_empty() && self.pending.capacity() > KEEP_CAPACITY {
            self.pending = Vec::new();
        }
        let after = self.pending.len();
        if after != before && (after > FREE || before > FREE) {
            self.charge_pending(before, clock);
        }
        if consumed == 0 && self.pending.len() >= self.limits.max_input && !self.closing {
            self.span().in_scope(|| {
                tracing::warn!("session consumed none of a full input buffer; closing")
            });
            self.reason = Reason::InputLimit;
            self.phase = Phase::Done;
        }
    }

    /// Moves the budget's charge for pending input from `before` bytes to what is
    /// pending now. Past the budget, the connection is told the server is busy (its
    /// pending input dropped and given back) and closed.
    fn charge_pending(&mut self, before: usize, clock: &Clock) {
        let budget = &self.listener.budget;
        if budget.rehold(before, self.pending.len()) {
            return;
        }
        budget.rehold(before, 0);
        self.pending = Vec::new();
        self.listener
            .stats
            .over_budget
            .fetch_add(1, Ordering::Relaxed);
        let limit = budget.limit();
        self.span().in_scope(|| {
            tracing::warn!("buffered input over the server's budget of {limit} bytes; closing")
        });
        if self.goodbye.is_some() || self.phase != Phase::Open {
            self.reason = Reason::OverBudget;
            self.phase = Phase::Done;
        } else {
            self.say_goodbye(Goodbye::Busy, Reason::OverBudget, clock);
        }
    }

    /// The client closed its sending side (a read returned 0).
    pub(crate) fn handle_eof(&mut self, clock: &Clock) {
        self.eof = true;
        match self.phase {
            Phase::Open => {
                self.call(clock, |s, cx| s.eof(cx));
                if self.phase == Phase::Open {
                    // The session keeps the connection half-open: it can still send.
                    return;
                }
                if self.reason == Reason::Done {
                    self.reason = Reason::PeerClosed;
                }
            }
            Phase::Lingering => self.phase = Phase::Done,
            _ => {}
        }
    }

    /// The socket reported a hang-up while it was not being read.
    pub(crate) fn hang_up(&mut self) {
        self.handle_error(io::ErrorKind::ConnectionReset.into());
    }

    /// A read or a write failed (reset, broken pipe...): the connection is over.
    pub(crate) fn handle_error(&mut self, e: io::Error) {
        self.span()
            .in_scope(|| tracing::debug!("connection error: {e}"));
        if self.reason == Reason::Open || self.phase == Phase::Open {
            self.reason = Reason::Error;
        }
        self.phase = Phase::Done;
    }
}

impl<S: Session, L: Host> Drop for Conn<S, L> {
    fn drop(&mut self) {
        if self.lent {
            // What the senders wrote belongs in the close's tallies.
            self.reclaim();
        }
        if let Some(mb) = &self.mailbox {
            mb.close();
        }
        if self.reason == Reason::Open {
            self.reason = Reason::Shutdown;
        }
        self.listener.budget.rehold(self.pending.len(), 0);
        if self.unreported != (0, 0) {
            self.report_now(0, 0, false);
        }
        let s = &self.listener.stats;
        s.writes
            .fetch_add(u64::from(self.writes), Ordering::Relaxed);
        s.closed.fetch_add(1, Ordering::Relaxed);
        s.closed_by[self.reason as usize].fetch_add(1, Ordering::Relaxed);
        self.span().in_scope(|| {
            tracing::info!(
                duration = ?self.opened.elapsed(),
                bytes_in = self.bytes_in,
                bytes_out = self.bytes_out,
                reason = %self.reason,
                "Closed connection"
            )
        });
    }
}
