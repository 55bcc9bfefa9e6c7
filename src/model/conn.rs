//! One connection's state, written once and driven by every model.
//!
//! A model only waits (on `poll(2)` or on tokio readiness) and then calls into this
//! type, which reads the non-blocking socket, feeds the session, writes its replies,
//! delivers its mailbox and enforces the limits: bounded input, bounded output (a
//! client that does not read stops being read), idle and write-stall timeouts, the
//! goodbye on shutdown, and a lingering close so a reply is not destroyed by a reset.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Listener;
use crate::base::budget::FREE;
use crate::base::mailbox::{Mailbox, WakeKind};
use crate::base::Clock;
use crate::service::{ConnInfo, Cx, Goodbye, Session};

/// How long a closed connection waits for the client's EOF before dropping unread
/// input (which would make the kernel answer with a reset).
const LINGER: Duration = Duration::from_secs(2);
/// How long a session may take to close after a goodbye (a WebSocket handshake
/// before its close frame, say).
const GOODBYE_GRACE: Duration = Duration::from_secs(5);
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
    /// Write side shut down; reading and discarding until the client's EOF.
    Lingering(Instant),
    /// Finished: drop the socket.
    Done,
}

/// What one read did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read_ {
    /// Bytes were read; `more` says the read filled the buffer, so more may be waiting.
    Data { more: bool },
    /// Nothing to read now.
    WouldBlock,
    /// The client closed its side, or the connection failed.
    Closed,
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
    goodbye: Option<(Goodbye, Instant)>,
    draining: bool,
    opened: Instant,
    /// Bytes moved since the last idle check.
    active: bool,
    /// Idle checks in a row that saw no bytes.
    quiet: u8,
    /// TCP keepalive was turned on (a quiet connection its session keeps).
    keepalive: bool,
    idle_check: Instant,
    stalled_since: Option<Instant>,
    /// When output made by events was last written (for [`Limits::coalesce`]).
    ///
    /// [`Limits::coalesce`]: super::Limits::coalesce
    ///
    /// Kept as milliseconds after `opened` plus one (0: never) in four bytes: every
    /// connection carries it, and an idle one should stay small.
    events_written: u32,
    /// Output made by events is held until `events_written + coalesce`.
    held: bool,
    bytes_in: u64,
    bytes_out: u64,
    writes: u32,
    reason: Reason,
}

impl<S: Session> Conn<S> {
    pub(crate) fn new(
        session: S,
        info: ConnInfo,
        listener: Arc<Listener>,
        wake: WakeKind,
        now: Instant,
    ) -> Self {
        let idle_check = now + listener.limits.idle_timeout / IDLE_QUARTERS;
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
            keepalive: false,
            idle_check,
            stalled_since: None,
            events_written: 0,
            held: false,
            bytes_in: 0,
            bytes_out: 0,
            writes: 0,
            reason: Reason::Open,
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
        self.has_output() && !(self.held && self.phase == Phase::Open)
    }

    /// Whether the socket should be read now: not while closing, and not while the
    /// client leaves more than `max_output` of replies unread (backpressure).
    pub(crate) fn wants_read(&self) -> bool {
        match self.phase {
            Phase::Open => !self.eof && self.unsent() < self.listener.limits.max_output,
            Phase::Lingering(_) => true,
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

    /// Reads once from the socket into `scratch` and feeds the session.
    pub(crate) fn read_from(
        &mut self,
        sock: &TcpStream,
        scratch: &mut [u8],
        clock: &Clock,
    ) -> Read_ {
        let room = self
            .listener
            .limits
            .max_input
            .saturating_sub(self.pending.len())
            .max(1);
        let buf_len = room.min(scratch.len());
        let buf = &mut scratch[..buf_len];
        let n = loop {
            match rustix::net::recv(sock, &mut *buf, rustix::net::RecvFlags::empty())
                .map_err(io::Error::from)
            {
                Ok((n, _)) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read_::WouldBlock,
                Err(e) => {
                    self.fail(e);
                    return Read_::Closed;
                }
            }
        };
        if n == 0 {
            self.on_eof(clock);
            return Read_::Closed;
        }
        self.bytes_in += n as u64;
        self.active = true;
        if let Phase::Lingering(_) = self.phase {
            return Read_::Data { more: n == buf_len };
        }
        if self.phase != Phase::Open {
            return Read_::Data { more: false };
        }
        self.on_input(&buf[..n], clock);
        // Events pushed while this input was handled (a chat member's own messages) are
        // taken between reads: a client that sends fast and reads its replies is not
        // mistaken for a slow consumer because its input came in one long burst.
        if self.mail_waiting() {
            self.deliver(clock);
        }
        Read_::Data { more: n == buf_len }
    }

    fn on_input(&mut self, data: &[u8], clock: &Clock) {
        // Replies go at once, and take any held events with them.
        self.held = false;
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

    fn on_eof(&mut self, clock: &Clock) {
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
            Phase::Lingering(_) => self.phase = Phase::Done,
            _ => {}
        }
    }

    /// The socket reported a hang-up while it was not being read.
    pub(crate) fn hang_up(&mut self) {
        self.fail(io::ErrorKind::ConnectionReset.into());
    }

    fn fail(&mut self, e: io::Error) {
        self.span()
            .in_scope(|| tracing::debug!("connection error: {e}"));
        if self.reason == Reason::Open || self.phase == Phase::Open {
            self.reason = Reason::Error;
        }
        self.phase = Phase::Done;
    }

    /// Writes as much queued output as the socket takes, and half-closes once a closing
    /// session's output is all sent. Returns false when the socket would block.
    pub(crate) fn flush(&mut self, sock: &TcpStream, clock: &Clock) -> bool {
        if self.wants_write() || self.phase == Phase::Closing {
            self.write_to(sock, clock).is_ok()
        } else {
            true
        }
    }

    fn write_to(&mut self, sock: &TcpStream, clock: &Clock) -> io::Result<()> {
        while (self.out_pos as usize) < self.out.len() {
            // Raw send(2) with MSG_NOSIGNAL: no SIGPIPE from a client that has gone.
            match rustix::net::send(
                sock,
                &self.out[self.out_pos as usize..],
                rustix::net::SendFlags::NOSIGNAL,
            )
            .map_err(io::Error::from)
            {
                Ok(0) => {
                    self.fail(io::ErrorKind::WriteZero.into());
                    return Ok(());
                }
                Ok(n) => {
                    // `out` is cut to what was sent long before it nears 4 GiB: reading
                    // stops at `max_output` of unsent replies.
                    self.out_pos += u32::try_from(n).expect("one send is below 4 GiB");
                    self.bytes_out += n as u64;
                    self.writes = self.writes.wrapping_add(1);
                    self.active = true;
                    self.stalled_since = None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled_since.get_or_insert_with(|| clock.now());
                    return Err(e);
                }
                Err(e) => {
                    self.fail(e);
                    return Ok(());
                }
            }
        }
        self.out.clear();
        self.out_pos = 0;
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
        if self.phase == Phase::Closing {
            // Everything is sent: half-close, then wait for the client's EOF so unread
            // input does not turn the close into a reset that destroys the reply.
            let _ = sock.shutdown(Shutdown::Write);
            self.phase = if self.eof {
                Phase::Done
            } else {
                Phase::Lingering(clock.now() + LINGER)
            };
        }
        Ok(())
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
        if self.out.len() > before && !self.held && self.phase == Phase::Open {
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
            Some(t) if now < t + window => self.held = true,
            _ => self.set_events_written(now),
        }
    }

    fn say_goodbye(&mut self, why: Goodbye, reason: Reason, clock: &Clock) {
        if self.goodbye.is_some() || self.phase != Phase::Open {
            return;
        }
        self.goodbye = Some((why, clock.now() + GOODBYE_GRACE));
        self.reason = reason;
        self.listener.budget.rehold(self.pending.len(), 0);
        self.pending = Vec::new();
        self.call(clock, |s, cx| s.goodbye(why, cx));
    }

    /// The server is shutting down: answer what the client already sent, then say
    /// goodbye.
    pub(crate) fn drain(&mut self, sock: &TcpStream, scratch: &mut [u8], clock: &Clock) {
        self.draining = true;
        while self.wants_read() {
            match self.read_from(sock, scratch, clock) {
                Read_::Data { more: true } => continue,
                _ => break,
            }
        }
        self.say_goodbye(Goodbye::Shutdown, Reason::Shutdown, clock);
    }

    /// The next time [`Conn::tick`] must run.
    pub(crate) fn next_deadline(&self) -> Instant {
        match self.precise_deadline() {
            Some(t) => t.min(self.idle_check),
            None => self.idle_check,
        }
    }

    /// When the next idle check is due, while the connection is open. A model may run
    /// these checks from a timer shared by many connections, and keep a timer of the
    /// connection's own only for [`Conn::precise_deadline`].
    pub(crate) fn idle_deadline(&self) -> Option<Instant> {
        (self.phase == Phase::Open).then_some(self.idle_check)
    }

    /// The next deadline other than the idle check (lingering close, write stall,
    /// goodbye grace, the end of a coalescing window, the session's own timer): `None` on most connections most of the
    /// time. With [`Conn::idle_deadline`] it makes [`Conn::next_deadline`].
    pub(crate) fn precise_deadline(&self) -> Option<Instant> {
        let mut t = match self.phase {
            Phase::Lingering(until) => Some(until),
            _ => None,
        };
        let mut earliest = |d: Instant| t = Some(t.map_or(d, |t: Instant| t.min(d)));
        if let Some(since) = self.stalled_since {
            earliest(since + self.listener.limits.write_timeout);
        }
        if let Some((_, until)) = self.goodbye {
            earliest(until);
        }
        if self.held {
            if let Some(w) = self.events_written_at() {
                earliest(w + self.listener.limits.coalesce);
            }
        }
        if self.phase == Phase::Open {
            if let Some(d) = self.session.deadline() {
                earliest(d);
            }
        }
        t
    }

    /// Runs whatever timers have come due.
    pub(crate) fn tick(&mut self, sock: &TcpStream, clock: &Clock) {
        let now = clock.now();
        if let Phase::Lingering(until) = self.phase {
            if now >= until {
                self.phase = Phase::Done;
            }
            return;
        }
        if let Some(since) = self.stalled_since {
            if now >= since + self.listener.limits.write_timeout {
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
        }
        if let Some((_, until)) = self.goodbye {
            if now >= until && self.phase != Phase::Done {
                self.phase = Phase::Done;
                return;
            }
        }
        if self.phase != Phase::Open {
            return;
        }
        if self.held
            && self
                .events_written_at()
                .is_none_or(|w| now >= w + self.listener.limits.coalesce)
        {
            // The window is over: the model writes what was held, and this write
            // starts the next window.
            self.held = false;
            self.set_events_written(now);
        }
        if now >= self.idle_check {
            if std::mem::take(&mut self.active) {
                self.quiet = 0;
            } else {
                self.quiet = self.quiet.saturating_add(1);
            }
            if u32::from(self.quiet) >= IDLE_QUARTERS && self.session.idle_ok() {
                // A quiet connection the session expects: keep it, and let the
                // kernel's keepalive probes find a peer that is gone.
                self.quiet = 0;
                if !self.keepalive {
                    self.keepalive = true;
                    set_keepalive(sock, self.listener.limits.idle_timeout);
                }
            }
            if u32::from(self.quiet) >= IDLE_QUARTERS {
                self.listener
                    .stats
                    .idle_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                self.say_goodbye(Goodbye::Idle, Reason::Idle, clock);
            } else {
                self.idle_check = now + self.listener.limits.idle_timeout / IDLE_QUARTERS;
            }
        }
        if self.phase == Phase::Open && self.session.deadline().is_some_and(|d| now >= d) {
            self.call(clock, |s, cx| s.timeout(cx));
        }
    }
}

/// Turns on TCP keepalive: the first probe after `idle` without traffic, then one every
/// 15 s, and the connection fails after 4 unanswered probes. Best effort: a socket that
/// refuses it is only kept without probes, which is logged.
fn set_keepalive(sock: &TcpStream, idle: Duration) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle.max(Duration::from_secs(1)))
        .with_interval(Duration::from_secs(15))
        .with_retries(4);
    if let Err(e) = socket2::SockRef::from(sock).set_tcp_keepalive(&ka) {
        tracing::warn!("cannot turn on TCP keepalive: {e}");
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
        s.bytes_in.fetch_add(self.bytes_in, Ordering::Relaxed);
        s.bytes_out.fetch_add(self.bytes_out, Ordering::Relaxed);
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
