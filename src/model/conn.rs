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
//! calls themselves are in [`super::sock`], shared by every model.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::timer::{Timer, TimerTable};
use super::Listener;
use crate::base::budget::FREE;
use crate::base::mailbox::{Mailbox, WakeKind};
use crate::base::meter::{self, Answer};
use crate::base::Clock;
use crate::service::{ConnInfo, Cx, Goodbye, Session};

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

pub(crate) struct Conn<S: Session> {
    session: S,
    pub(crate) info: ConnInfo,
    /// The listener's name, limits and counters.
    listener: Arc<Listener>,
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
    /// [`Limits::coalesce`]: super::Limits::coalesce
    ///
    /// Kept as milliseconds after `opened` plus one (0: never) in four bytes: every
    /// connection carries it, and an idle one should stay small.
    events_written: u32,
    bytes_in: u64,
    bytes_out: u64,
    writes: u32,
    reason: Reason,
    /// Requests answered and not yet sent, the kind of the last, and when the read
    /// before them came (in [`meter::ticks`]): timed once their reply is written.
    answers: (u16, Answer),
    read_at: u64,
}

impl<S: Session> Conn<S> {
    pub(crate) fn new(
        session: S,
        info: ConnInfo,
        listener: Arc<Listener>,
        wake: WakeKind,
        now: Instant,
    ) -> Self {
        let mut timers = TimerTable::default();
        timers.set(
            Timer::Idle,
            now + listener.limits.idle_timeout / IDLE_QUARTERS,
            now,
        );
        Conn {
            session,
            info,
            listener,
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
            writes: 0,
            reason: Reason::Open,
            answers: (0, Answer::Message),
            read_at: 0,
        }
    }

    fn call<R>(&mut self, clock: &Clock, f: impl FnOnce(&mut S, &mut Cx<'_, S::Event>) -> R) -> R {
        // Sessions log per message at debug level; entering the span costs as much as
        // a small reply, so it is entered only when those lines are wanted.
        let _entered = (tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG)
            .then(|| self.span().entered());
        let mut cx = Cx::new(
            clock,
            &mut self.out,
            &mut self.closing,
            &mut self.mailbox,
            self.listener.limits.max_queue,
            self.wake,
            &self.info,
            self.listener.limits.max_input,
            &self.listener.budget,
        );
        let r = f(&mut self.session, &mut cx);
        let (n, kind) = cx.answers();
        if n > 0 {
            self.count_answers(n, kind);
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

    /// `n` more requests answered and not yet sent. (Kept in two bytes: an idle
    /// connection should stay small; past 65,535 unsent, those are timed now.)
    fn count_answers(&mut self, n: u32, kind: Answer) {
        let total = u32::from(self.answers.0) + n;
        match u16::try_from(total) {
            Ok(total) => self.answers = (total, kind),
            Err(_) => {
                self.answers.0 = u16::MAX;
                self.time_answers();
                self.count_answers(total - u32::from(u16::MAX), kind);
            }
        }
    }

    /// The answers counted are sent: their durations go to the listener's meter.
    fn time_answers(&mut self) {
        let took = meter::ticks().saturating_sub(self.read_at);
        let (n, kind) = std::mem::replace(&mut self.answers, (0, Answer::Message));
        self.listener.stats.meter.answered(kind, n.into(), took);
    }

    /// The connection's log span (service, id, peer). It is made when a line is
    /// logged rather than kept for the connection's life: the lines read the same, and
    /// an idle connection holds no span in the subscriber's registry.
    pub(crate) fn span(&self) -> tracing::Span {
        tracing::info_span!("conn", svc = &*self.listener.name, id = self.info.id, peer = %self.info.peer)
    }

    /// The listener this connection belongs to.
    pub(crate) fn listener(&self) -> &Listener {
        &self.listener
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
            Phase::Open => !self.eof && self.unsent() < self.listener.limits.max_output,
            Phase::Lingering => true,
            _ => false,
        }
    }

    /// Whether mailbox events should be taken now (the same backpressure).
    pub(crate) fn wants_events(&self) -> bool {
        self.phase == Phase::Open && self.unsent() < self.listener.limits.max_output
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
        self.listener
            .limits
            .max_input
            .saturating_sub(self.pending.len())
            .max(1)
    }

    /// Bytes were read from the client: feeds the session (and delivers events pushed
    /// meanwhile).
    pub(crate) fn handle_read(&mut self, data: &[u8], clock: &Clock) {
        self.bytes_in += data.len() as u64;
        self.read_at = meter::ticks();
        self.listener.stats.meter.add_in(data.len());
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
        if consumed == 0 && self.pending.len() >= self.listener.limits.max_input && !self.closing {
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

    /// The bytes to write now, if any: queued output not held for coalescing (all of
    /// it once the session is closing).
    #[inline]
    pub(crate) fn poll_transmit(&self) -> Option<&[u8]> {
        if self.wants_write() || (self.phase == Phase::Closing && self.has_output()) {
            Some(&self.out[self.out_pos as usize..])
        } else {
            None
        }
    }

    /// `n` bytes of [`Conn::poll_transmit`]'s were written.
    #[inline]
    pub(crate) fn handle_sent(&mut self, n: usize) {
        // `out` is cut to what was sent long before it nears 4 GiB: reading stops at
        // `max_output` of unsent replies.
        self.out_pos += u32::try_from(n).expect("one send is below 4 GiB");
        self.bytes_out += n as u64;
        self.listener.stats.meter.add_out(n);
        self.writes = self.writes.wrapping_add(1);
        self.active = true;
        self.timers.stop(Timer::WriteStall);
        if self.out_pos as usize >= self.out.len() {
            if self.answers.0 > 0 {
                self.time_answers();
            }
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > KEEP_CAPACITY {
                self.out = Vec::new();
            }
        }
    }

    /// A write would block: the client is not reading. The write-stall timer starts.
    pub(crate) fn handle_send_blocked(&mut self, clock: &Clock) {
        if !self.timers.is_set(Timer::WriteStall) {
            let due = clock.now() + self.listener.limits.write_timeout;
            self.timers.set(Timer::WriteStall, due, self.opened);
        }
    }

    /// Whether the model should shut the socket's write side down now: the session
    /// closed and everything it wrote is sent.
    #[inline]
    pub(crate) fn poll_shutdown_write(&self) -> bool {
        self.phase == Phase::Closing && !self.has_output()
    }

    /// The write side was shut down: wait for the client's EOF (lingering) so that
    /// unread input does not turn the close into a reset that destroys the reply, or
    /// finish if it came already.
    pub(crate) fn handle_shut_write(&mut self, clock: &Clock) {
        if self.eof {
            self.phase = Phase::Done;
        } else {
            self.phase = Phase::Lingering;
            self.timers
                .set(Timer::Linger, clock.now() + LINGER, self.opened);
        }
    }

    /// The idle timeout to give TCP keepalive, once, when the session keeps a quiet
    /// connection: the model turns keepalive on with it.
    pub(crate) fn poll_keepalive(&mut self) -> Option<Duration> {
        if self.keepalive == KeepAlive::Due {
            self.keepalive = KeepAlive::On;
            Some(self.listener.limits.idle_timeout)
        } else {
            None
        }
    }

    /// Whether the mailbox has something for [`Conn::on_mail`] to do now: an overflow
    /// always, events only while the client keeps up with its replies.
    pub(crate) fn mail_waiting(&self) -> bool {
        self.phase == Phase::Open
            && self
                .mailbox
                .as_ref()
                .is_some_and(|mb| mb.is_waiting() && (self.wants_events() || mb.is_overflowed()))
    }

    /// The mailbox woke the connection: ends a slow consumer, or delivers the events
    /// if the client keeps up with its replies (otherwise they wait, bounded, in the
    /// mailbox).
    pub(crate) fn on_mail(&mut self, clock: &Clock) {
        let Some(mb) = self.mailbox.clone() else {
            return;
        };
        mb.reset_wake();
        if self.mail_waiting() {
            self.deliver(clock);
        }
    }

    /// Delivers the mailbox's events to the session.
    fn deliver(&mut self, clock: &Clock) {
        let Some(mb) = self.mailbox.clone() else {
            return;
        };
        // Events taken per wake-up: on the stack unless a burst is larger.
        let mut batch = smallvec::SmallVec::<[S::Event; 8]>::new();
        let overflowed = mb.take(&mut batch);
        if overflowed {
            self.listener
                .stats
                .slow_consumers
                .fetch_add(1, Ordering::Relaxed);
            let limit = self.listener.limits.max_queue;
            self.span()
                .in_scope(|| tracing::warn!("slow consumer: mailbox over {limit} bytes"));
            self.say_goodbye(Goodbye::SlowConsumer, Reason::SlowConsumer, clock);
            return;
        }
        let before = self.out.len();
        for ev in batch {
            if self.phase != Phase::Open {
                break;
            }
            self.call(clock, |s, cx| s.event(ev, cx));
        }
        if self.out.len() > before
            && !self.timers.is_set(Timer::Coalesce)
            && self.phase == Phase::Open
        {
            self.coalesce(clock);
        }
    }

    fn events_written_at(&self) -> Option<Instant> {
        (self.events_written > 0)
            .then(|| self.opened + Duration::from_millis(u64::from(self.events_written - 1)))
    }

    fn set_events_written(&mut self, now: Instant) {
        let ms = now.saturating_duration_since(self.opened).as_millis();
        self.events_written = u32::try_from(ms).unwrap_or(u32::MAX - 1) + 1;
    }

    /// Events just added output: write it at once if the last write of events was
    /// long enough ago, otherwise hold it (with whatever comes next) until
    /// `coalesce` after that write. A member of a busy room is written to at most
    /// once per `coalesce`, however many messages it gets; a quiet one at once.
    fn coalesce(&mut self, clock: &Clock) {
        let window = self.listener.limits.coalesce;
        if window.is_zero() {
            return;
        }
        let now = clock.now();
        match self.events_written_at() {
            Some(t) if now < t + window => {
                self.timers.set(Timer::Coalesce, t + window, self.opened)
            }
            _ => self.set_events_written(now),
        }
    }

    fn say_goodbye(&mut self, why: Goodbye, reason: Reason, clock: &Clock) {
        if self.goodbye.is_some() || self.phase != Phase::Open {
            return;
        }
        self.goodbye = Some(why);
        self.timers
            .set(Timer::Goodbye, clock.now() + GOODBYE_GRACE, self.opened);
        self.reason = reason;
        self.listener.budget.rehold(self.pending.len(), 0);
        self.pending = Vec::new();
        self.call(clock, |s, cx| s.goodbye(why, cx));
    }

    /// The server is shutting down: the model reads what the client already sent
    /// (while [`Conn::wants_read`]), then calls [`Conn::shutdown_goodbye`].
    pub(crate) fn begin_drain(&mut self) {
        self.draining = true;
    }

    /// Says the shutdown goodbye, after what the client sent was answered.
    pub(crate) fn shutdown_goodbye(&mut self, clock: &Clock) {
        self.say_goodbye(Goodbye::Shutdown, Reason::Shutdown, clock);
    }

    /// The next time [`Conn::tick`] must run: the earliest timer armed, the idle
    /// check only while open.
    pub(crate) fn next_deadline(&self) -> Instant {
        let precise = self.precise_deadline();
        let idle = self.idle_deadline();
        match (precise, idle) {
            (Some(p), Some(i)) => p.min(i),
            (Some(t), None) | (None, Some(t)) => t,
            // Nothing to wait for but the socket (a closing connection whose output
            // waits for the client): a day is as good as never.
            (None, None) => self.opened + FAR,
        }
    }

    /// When the next idle check is due, while the connection is open. A model may run
    /// these checks from a timer shared by many connections, and keep a timer of the
    /// connection's own only for [`Conn::precise_deadline`].
    pub(crate) fn idle_deadline(&self) -> Option<Instant> {
        if self.phase == Phase::Open {
            self.timers.get(Timer::Idle, self.opened)
        } else {
            None
        }
    }

    /// The next deadline other than the idle check: the earliest of the lingering
    /// close, the write stall, the goodbye's grace, the end of a coalescing window and
    /// the session's own timer; `None` on most connections most of the time. With
    /// [`Conn::idle_deadline`] it makes [`Conn::next_deadline`].
    pub(crate) fn precise_deadline(&self) -> Option<Instant> {
        let t = self.timers.next_of(&Timer::PRECISE, self.opened);
        if self.phase != Phase::Open {
            return t;
        }
        match (t, self.session.deadline()) {
            (Some(t), Some(d)) => Some(t.min(d)),
            (t, d) => t.or(d),
        }
    }

    /// Runs whatever timers have come due.
    pub(crate) fn tick(&mut self, clock: &Clock) {
        let now = clock.now();
        let base = self.opened;
        if self.phase == Phase::Lingering {
            if self.timers.expired(Timer::Linger, now, base) {
                self.phase = Phase::Done;
            }
            return;
        }
        if self.timers.expired(Timer::WriteStall, now, base) {
            self.listener
                .stats
                .slow_readers
                .fetch_add(1, Ordering::Relaxed);
            let t = self.listener.limits.write_timeout;
            self.span()
                .in_scope(|| tracing::warn!("slow reader: no write progress for {t:?}"));
            self.reason = Reason::SlowReader;
            self.phase = Phase::Done;
            return;
        }
        if self.timers.expired(Timer::Goodbye, now, base) && self.phase != Phase::Done {
            self.phase = Phase::Done;
            return;
        }
        if self.phase != Phase::Open {
            return;
        }
        if self.timers.expired(Timer::Coalesce, now, base) {
            // The window is over: the model writes what was held, and this write
            // starts the next window.
            self.timers.stop(Timer::Coalesce);
            self.set_events_written(now);
        }
        if self.timers.expired(Timer::Idle, now, base) {
            if std::mem::take(&mut self.active) {
                self.quiet = 0;
            } else {
                self.quiet = self.quiet.saturating_add(1);
            }
            if u32::from(self.quiet) >= IDLE_QUARTERS && self.session.idle_ok() {
                // A quiet connection the session expects: keep it, and let the
                // kernel's keepalive probes find a peer that is gone.
                self.quiet = 0;
                if self.keepalive == KeepAlive::Off {
                    self.keepalive = KeepAlive::Due;
                }
            }
            if u32::from(self.quiet) >= IDLE_QUARTERS {
                self.listener
                    .stats
                    .idle_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                self.say_goodbye(Goodbye::Idle, Reason::Idle, clock);
            } else {
                let next = now + self.listener.limits.idle_timeout / IDLE_QUARTERS;
                self.timers.set(Timer::Idle, next, base);
            }
        }
        if self.phase == Phase::Open && self.session.deadline().is_some_and(|d| now >= d) {
            self.call(clock, |s, cx| s.timeout(cx));
        }
    }
}

impl<S: Session> Drop for Conn<S> {
    fn drop(&mut self) {
        if let Some(mb) = &self.mailbox {
            mb.close();
        }
        if self.reason == Reason::Open {
            self.reason = Reason::Shutdown;
        }
        self.listener.budget.rehold(self.pending.len(), 0);
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

#[cfg(test)]
mod tests {
    //! The engine driven on plain values: no socket, no thread, the time set by hand.

    use super::*;
    use crate::base::mailbox::Sender;
    use crate::base::Budget;
    use crate::model::{Drain, Limits, Stats};
    use crate::service::ack::AckSession;
    use crate::service::greet::GreetSession;
    use crate::service::hello::{self, HelloSession};
    use crate::service::line_goodbye;
    use std::sync::atomic::AtomicUsize;

    fn listener(limits: Limits) -> Arc<Listener> {
        Arc::new(Listener {
            name: "test".into(),
            budget: Arc::new(Budget::new(limits.max_buffered)),
            limits: Arc::new(limits),
            stats: Arc::new(Stats::default()),
            drain: Drain::new().unwrap(),
            refusing: AtomicUsize::new(0),
        })
    }

    fn engine<S: Session>(session: S, limits: Limits, t0: Instant) -> Conn<S> {
        let mut c = Conn::new(
            session,
            ConnInfo::test(1),
            listener(limits),
            WakeKind::None,
            t0,
        );
        c.open(&Clock::at(t0), false);
        c
    }

    /// Everything the engine wants written now, taken as sent.
    fn sent<S: Session>(c: &mut Conn<S>) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(b) = c.poll_transmit() {
            let b = b.to_vec();
            c.handle_sent(b.len());
            v.extend(b);
        }
        v
    }

    fn at(t: Instant) -> Clock {
        Clock::at(t)
    }

    #[test]
    fn answers_are_timed_once_their_reply_is_all_sent_and_bytes_count_at_once() {
        let t0 = Instant::now();
        let mut c = engine(AckSession, Limits::default(), t0);
        let meter = |c: &Conn<AckSession>| {
            let m = &c.listener.stats.meter;
            (
                m.latency(Answer::Message).count(),
                m.bytes_in(),
                m.bytes_out(),
            )
        };
        c.handle_read(b"hello", &at(t0));
        assert_eq!(meter(&c), (0, 5, 0), "read: bytes in, nothing answered yet");
        assert_eq!(sent(&mut c), b"ACK!");
        assert_eq!(meter(&c), (1, 5, 4));

        // Three chunks, three ACKs; timed only when the last byte of them is out.
        c.handle_read(&[b'x'; 2100], &at(t0));
        assert_eq!(c.poll_transmit(), Some(&b"ACK!ACK!ACK!"[..]));
        c.handle_sent(5);
        assert_eq!(meter(&c), (1, 2105, 9));
        assert_eq!(sent(&mut c), b"CK!ACK!");
        assert_eq!(meter(&c), (4, 2105, 16));
    }

    #[test]
    fn more_unsent_answers_than_two_bytes_count_are_all_timed() {
        let t0 = Instant::now();
        let mut c = engine(AckSession, Limits::default(), t0);
        c.read_at = meter::ticks();
        c.count_answers(70_000, Answer::Message);
        c.count_answers(70_000, Answer::Message);
        c.time_answers();
        let h = c.listener.stats.meter.latency(Answer::Message);
        assert_eq!(h.count(), 140_000);
    }

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    /// Consumes nothing, ever.
    struct Hoard;
    impl Session for Hoard {
        type Event = ();
        fn read(&mut self, _input: &[u8], _cx: &mut Cx<'_, ()>) -> usize {
            0
        }
    }

    /// Writes every event it gets; its sender is taken by the test.
    #[derive(Default)]
    struct Listen {
        tx: Option<Sender<Vec<u8>>>,
    }
    impl Session for Listen {
        type Event = Vec<u8>;
        fn open(&mut self, cx: &mut Cx<'_, Vec<u8>>) {
            self.tx = Some(cx.mailbox().unwrap());
        }
        fn read(&mut self, input: &[u8], cx: &mut Cx<'_, Vec<u8>>) -> usize {
            cx.send(b"ok\n");
            input.len()
        }
        fn event(&mut self, ev: Vec<u8>, cx: &mut Cx<'_, Vec<u8>>) {
            cx.send(&ev);
        }
        fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, Vec<u8>>) {
            line_goodbye(why, cx);
        }
    }

    #[test]
    fn a_reply_is_written_and_an_eof_ends_with_a_half_close() {
        let t0 = Instant::now();
        let mut c = engine(AckSession, Limits::default(), t0);
        c.handle_read(b"hi", &at(t0));
        assert_eq!(sent(&mut c), b"ACK!");
        assert!(!c.poll_shutdown_write());
        c.handle_eof(&at(t0));
        assert_eq!(c.phase(), Phase::Closing);
        assert!(c.poll_shutdown_write());
        c.handle_shut_write(&at(t0));
        assert_eq!(c.phase(), Phase::Done, "the client's EOF came already");
        assert_eq!(c.reason, Reason::PeerClosed);
    }

    #[test]
    fn a_session_that_closes_first_lingers_for_the_clients_eof() {
        let t0 = Instant::now();
        let mut c = engine(HelloSession, Limits::default(), t0);
        c.handle_read(b"hi", &at(t0));
        assert_eq!(sent(&mut c), hello::REPLY);
        assert!(c.poll_shutdown_write());
        c.handle_shut_write(&at(t0));
        assert_eq!(c.phase(), Phase::Lingering);
        assert!(
            c.wants_read(),
            "a lingering connection reads to find the EOF"
        );
        assert_eq!(c.next_deadline(), t0 + LINGER);
        c.handle_read(b"late bytes are read and dropped", &at(t0));
        assert!(c.poll_transmit().is_none());
        c.tick(&at(t0 + LINGER - MS));
        assert_eq!(c.phase(), Phase::Lingering);
        c.tick(&at(t0 + LINGER));
        assert_eq!(c.phase(), Phase::Done);

        let mut c = engine(HelloSession, Limits::default(), t0);
        c.handle_read(b"hi", &at(t0));
        sent(&mut c);
        c.handle_shut_write(&at(t0));
        c.handle_eof(&at(t0 + MS));
        assert_eq!(c.phase(), Phase::Done, "the EOF ends the lingering at once");
    }

    #[test]
    fn input_a_session_never_consumes_is_closed_at_the_input_limit() {
        let t0 = Instant::now();
        let limits = Limits {
            max_input: 1024,
            ..Limits::default()
        };
        let mut c = engine(Hoard, limits, t0);
        c.handle_read(&[b'x'; 1000], &at(t0));
        assert_eq!(c.read_room(), 24, "what the limit leaves");
        assert_eq!(c.phase(), Phase::Open);
        c.handle_read(&[b'x'; 24], &at(t0));
        assert_eq!(c.phase(), Phase::Done);
        assert_eq!(c.reason, Reason::InputLimit);
    }

    #[test]
    fn replies_past_max_output_stop_reading_until_sent() {
        let t0 = Instant::now();
        let limits = Limits {
            max_output: 8,
            ..Limits::default()
        };
        let mut c = engine(AckSession, limits, t0);
        c.handle_read(b"a", &at(t0));
        assert!(c.wants_read());
        c.handle_read(b"b", &at(t0));
        assert!(!c.wants_read(), "8 bytes unsent: the client is not reading");
        c.handle_sent(4);
        assert!(c.wants_read());
        assert_eq!(sent(&mut c), b"ACK!");
    }

    #[test]
    fn a_stalled_write_drops_the_client_after_the_write_timeout() {
        let t0 = Instant::now();
        let limits = Limits {
            write_timeout: 3 * SEC,
            ..Limits::default()
        };
        let mut c = engine(AckSession, limits, t0);
        c.handle_read(b"a", &at(t0));
        c.handle_send_blocked(&at(t0 + SEC));
        c.handle_send_blocked(&at(t0 + 2 * SEC));
        assert_eq!(
            c.precise_deadline(),
            Some(t0 + 4 * SEC),
            "from the first stall"
        );
        c.tick(&at(t0 + 4 * SEC - MS));
        assert_eq!(c.phase(), Phase::Open);
        c.tick(&at(t0 + 4 * SEC));
        assert_eq!(c.phase(), Phase::Done);
        assert_eq!(c.reason, Reason::SlowReader);
        assert_eq!(c.listener().stats.slow_readers.load(Ordering::Relaxed), 1);

        // Progress resets the stall.
        let mut c = engine(AckSession, Limits::default(), t0);
        c.handle_read(b"a", &at(t0));
        c.handle_send_blocked(&at(t0));
        c.handle_sent(2);
        assert_eq!(c.precise_deadline(), None);
    }

    #[test]
    fn a_quiet_connection_is_told_after_four_quiet_quarters() {
        let t0 = Instant::now();
        let limits = Limits {
            idle_timeout: 4 * SEC,
            ..Limits::default()
        };
        let mut c = engine(AckSession, limits, t0);
        assert_eq!(c.next_deadline(), t0 + SEC);
        c.handle_read(b"a", &at(t0 + MS));
        sent(&mut c);
        // The first check sees that activity; four quiet ones after it end the client.
        for q in 1..=4 {
            c.tick(&at(t0 + q * SEC));
            assert!(sent(&mut c).is_empty(), "quarter {q}");
        }
        c.tick(&at(t0 + 5 * SEC));
        assert_eq!(sent(&mut c), b"ERR idle timeout\n");
        assert_eq!(c.reason, Reason::Idle);
        assert_eq!(c.listener().stats.idle_timeouts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn events_written_less_than_the_window_ago_are_held_until_it_ends() {
        let t0 = Instant::now();
        let limits = Limits {
            coalesce: 5 * MS,
            ..Limits::default()
        };
        let mut c = engine(Listen::default(), limits, t0);
        let tx = c.session.tx.clone().unwrap();
        tx.send(b"one\n".to_vec(), 4).unwrap();
        c.on_mail(&at(t0));
        assert_eq!(sent(&mut c), b"one\n", "a lone event goes at once");
        tx.send(b"two\n".to_vec(), 4).unwrap();
        c.on_mail(&at(t0 + MS));
        assert!(c.poll_transmit().is_none(), "held within the window");
        assert_eq!(c.precise_deadline(), Some(t0 + 5 * MS));
        tx.send(b"three\n".to_vec(), 6).unwrap();
        c.on_mail(&at(t0 + 2 * MS));
        c.tick(&at(t0 + 5 * MS));
        assert_eq!(sent(&mut c), b"two\nthree\n", "one write for both");

        // A reply to the client's own input is never held, and takes held events along.
        tx.send(b"four\n".to_vec(), 5).unwrap();
        c.on_mail(&at(t0 + 6 * MS));
        assert!(c.poll_transmit().is_none());
        c.handle_read(b"x", &at(t0 + 6 * MS));
        assert_eq!(sent(&mut c), b"four\nok\n");
    }

    #[test]
    fn a_mailbox_overflow_ends_a_slow_consumer() {
        let t0 = Instant::now();
        let limits = Limits {
            max_queue: 10,
            ..Limits::default()
        };
        let mut c = engine(Listen::default(), limits, t0);
        let tx = c.session.tx.clone().unwrap();
        tx.send(b"12345678".to_vec(), 8).unwrap();
        assert!(tx.send(b"12345678".to_vec(), 8).is_err());
        assert!(c.mail_waiting());
        c.on_mail(&at(t0));
        assert_eq!(sent(&mut c), b"ERR slow-consumer\n");
        assert_eq!(c.reason, Reason::SlowConsumer);
        assert_eq!(c.listener().stats.slow_consumers.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_drain_answers_what_was_read_then_says_goodbye() {
        let t0 = Instant::now();
        let mut c = engine(AckSession, Limits::default(), t0);
        c.begin_drain();
        assert!(c.is_draining());
        c.handle_read(b"last words", &at(t0));
        c.shutdown_goodbye(&at(t0));
        assert_eq!(sent(&mut c), b"ACK!ERR server shutting down\n");
        assert!(c.poll_shutdown_write());
        assert_eq!(c.reason, Reason::Shutdown);
    }

    #[test]
    fn a_refused_connection_hears_only_that_the_server_is_busy() {
        let t0 = Instant::now();
        let mut c = Conn::new(
            GreetSession,
            ConnInfo::test(1),
            listener(Limits::default()),
            WakeKind::None,
            t0,
        );
        c.open(&at(t0), true);
        assert_eq!(sent(&mut c), b"ERR server busy\n");
        assert_eq!(c.reason, Reason::Busy);
    }

    #[test]
    fn a_quiet_connection_its_session_keeps_asks_for_keepalive_once() {
        /// Keeps quiet connections.
        struct Patient;
        impl Session for Patient {
            type Event = ();
            fn read(&mut self, input: &[u8], _cx: &mut Cx<'_, ()>) -> usize {
                input.len()
            }
            fn idle_ok(&self) -> bool {
                true
            }
        }
        let t0 = Instant::now();
        let limits = Limits {
            idle_timeout: 4 * SEC,
            ..Limits::default()
        };
        let mut c = engine(Patient, limits, t0);
        for q in 1..=4 {
            assert_eq!(c.poll_keepalive(), None);
            c.tick(&at(t0 + q * SEC));
        }
        assert_eq!(c.poll_keepalive(), Some(4 * SEC));
        assert_eq!(c.poll_keepalive(), None, "once");
        assert_eq!(c.phase(), Phase::Open);
    }
}
