//! One connection's state, written once and driven by every model.
//!
//! A model only waits (on `poll(2)` or on tokio readiness) and then calls into this
//! type, which reads the non-blocking socket, feeds the session, writes its replies,
//! delivers its mailbox and enforces the limits: bounded input, bounded output (a
//! client that does not read stops being read), idle and write-stall timeouts, the
//! goodbye on shutdown, and a lingering close so a reply is not destroyed by a reset.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::mailbox::{Mailbox, WakeKind};
use super::{Limits, Stats};
use crate::service::{ConnInfo, Cx, Goodbye, Session};

/// How long a closed connection waits for the client's EOF before dropping unread
/// input (which would make the kernel answer with a reset).
const LINGER: Duration = Duration::from_secs(2);
/// How long a session may take to close after a goodbye (a WebSocket handshake
/// before its close frame, say).
const GOODBYE_GRACE: Duration = Duration::from_secs(5);
/// Largest buffer capacity kept on an idle connection; larger ones are freed.
const KEEP_CAPACITY: usize = 4096;

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
    limits: Arc<Limits>,
    stats: Arc<Stats>,
    wake: WakeKind,
    out: Vec<u8>,
    out_pos: usize,
    pending: Vec<u8>,
    mailbox: Option<Arc<Mailbox<S::Event>>>,
    batch: VecDeque<S::Event>,
    /// Events arrived while the session was not taking them (backpressure); their
    /// wake-up was consumed, so they are delivered when output drains.
    events_pending: bool,
    closing: bool,
    phase: Phase,
    eof: bool,
    goodbye: Option<(Goodbye, Instant)>,
    draining: bool,
    opened: Instant,
    last_active: Instant,
    idle_check: Instant,
    stalled_since: Option<Instant>,
    bytes_in: u64,
    bytes_out: u64,
    reason: Reason,
}

impl<S: Session> Conn<S> {
    pub(crate) fn new(
        session: S,
        info: ConnInfo,
        limits: Arc<Limits>,
        stats: Arc<Stats>,
        wake: WakeKind,
        now: Instant,
    ) -> Self {
        let idle_check = now + limits.idle_timeout;
        Conn {
            session,
            info,
            limits,
            stats,
            wake,
            out: Vec::new(),
            out_pos: 0,
            pending: Vec::new(),
            mailbox: None,
            batch: VecDeque::new(),
            events_pending: false,
            closing: false,
            phase: Phase::Open,
            eof: false,
            goodbye: None,
            draining: false,
            opened: now,
            last_active: now,
            idle_check,
            stalled_since: None,
            bytes_in: 0,
            bytes_out: 0,
            reason: Reason::Open,
        }
    }

    fn call<R>(&mut self, now: Instant, f: impl FnOnce(&mut S, &mut Cx<'_, S::Event>) -> R) -> R {
        let mut cx = Cx::new(
            now,
            &mut self.out,
            &mut self.closing,
            &mut self.mailbox,
            self.limits.max_queue,
            self.wake,
            &self.info,
            self.limits.max_input,
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

    /// Starts the session. A refused connection is opened straight into its goodbye.
    pub(crate) fn open(&mut self, now: Instant, refused: bool) {
        tracing::info!("Accepted connection from {}", self.info.peer);
        self.call(now, |s, cx| s.open(cx));
        if refused {
            self.say_goodbye(Goodbye::Busy, Reason::Busy, now);
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    pub(crate) fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Whether the socket should be read now: not while closing, and not while the
    /// client leaves more than `max_output` of replies unread (backpressure).
    pub(crate) fn wants_read(&self) -> bool {
        match self.phase {
            Phase::Open => !self.eof && self.out.len() - self.out_pos < self.limits.max_output,
            Phase::Lingering(_) => true,
            _ => false,
        }
    }

    /// Whether mailbox events should be taken now (the same backpressure).
    pub(crate) fn wants_events(&self) -> bool {
        self.phase == Phase::Open && self.out.len() - self.out_pos < self.limits.max_output
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
        now: Instant,
    ) -> Read_ {
        let room = self
            .limits
            .max_input
            .saturating_sub(self.pending.len())
            .max(1);
        let buf_len = room.min(scratch.len());
        let buf = &mut scratch[..buf_len];
        let n = loop {
            match (&*sock).read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read_::WouldBlock,
                Err(e) => {
                    self.fail(e);
                    return Read_::Closed;
                }
            }
        };
        if n == 0 {
            self.on_eof(now);
            return Read_::Closed;
        }
        self.bytes_in += n as u64;
        self.last_active = now;
        if let Phase::Lingering(_) = self.phase {
            return Read_::Data { more: n == buf_len };
        }
        if self.phase != Phase::Open {
            return Read_::Data { more: false };
        }
        self.on_input(&buf[..n], now);
        // Events pushed while this input was handled (a chat member's own messages) are
        // taken between reads: a client that sends fast and reads its replies is not
        // mistaken for a slow consumer because its input came in one long burst.
        if self.mailbox.is_some() && self.wants_events() {
            self.deliver(now);
        }
        Read_::Data { more: n == buf_len }
    }

    fn on_input(&mut self, data: &[u8], now: Instant) {
        let consumed;
        if self.pending.is_empty() {
            consumed = self.call(now, |s, cx| s.read(data, cx)).min(data.len());
            if consumed < data.len() && !self.closing {
                self.pending.extend_from_slice(&data[consumed..]);
            }
        } else {
            self.pending.extend_from_slice(data);
            let pending = std::mem::take(&mut self.pending);
            let n = self
                .call(now, |s, cx| s.read(&pending, cx))
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
        if consumed == 0 && self.pending.len() >= self.limits.max_input && !self.closing {
            tracing::warn!("session consumed none of a full input buffer; closing");
            self.reason = Reason::InputLimit;
            self.phase = Phase::Done;
        }
    }

    fn on_eof(&mut self, now: Instant) {
        self.eof = true;
        match self.phase {
            Phase::Open => {
                self.call(now, |s, cx| s.eof(cx));
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
        tracing::debug!("connection error: {e}");
        if self.reason == Reason::Open || self.phase == Phase::Open {
            self.reason = Reason::Error;
        }
        self.phase = Phase::Done;
    }

    /// Writes as much queued output as the socket takes, and half-closes once a closing
    /// session's output is all sent. Returns false when the socket would block.
    pub(crate) fn flush(&mut self, sock: &TcpStream, now: Instant) -> bool {
        if self.has_output() || self.phase == Phase::Closing {
            self.write_to(sock, now).is_ok()
        } else {
            true
        }
    }

    fn write_to(&mut self, sock: &TcpStream, now: Instant) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match (&*sock).write(&self.out[self.out_pos..]) {
                Ok(0) => {
                    self.fail(io::ErrorKind::WriteZero.into());
                    return Ok(());
                }
                Ok(n) => {
                    self.out_pos += n;
                    self.bytes_out += n as u64;
                    self.last_active = now;
                    self.stalled_since = None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled_since.get_or_insert(now);
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
                Phase::Lingering(now + LINGER)
            };
        }
        Ok(())
    }

    /// The mailbox woke the connection. Under backpressure the events stay queued (and
    /// are delivered by [`Conn::resume_events`]), but an overflow is acted on at once:
    /// a client that never reads is a slow consumer, not only a slow reader.
    pub(crate) fn on_mailbox(&mut self, now: Instant) {
        if self.wants_events() {
            self.events_pending = false;
            self.deliver(now);
        } else if let Some(mb) = self.mailbox.clone() {
            if mb.clear_wake() {
                self.deliver(now);
            } else {
                self.events_pending = true;
            }
        }
    }

    /// Delivers events held back by backpressure once output has drained.
    pub(crate) fn resume_events(&mut self, now: Instant) {
        if self.events_pending && self.wants_events() {
            self.events_pending = false;
            self.deliver(now);
        }
    }

    /// Delivers the mailbox's events to the session.
    pub(crate) fn deliver(&mut self, now: Instant) {
        let Some(mb) = self.mailbox.clone() else {
            return;
        };
        let overflowed = mb.take(&mut self.batch);
        if overflowed {
            self.batch.clear();
            if self.phase != Phase::Open || self.goodbye.is_some() {
                return; // Already told and counted: the overflow flag stays set.
            }
            self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "slow consumer: mailbox over {} bytes",
                self.limits.max_queue
            );
            self.say_goodbye(Goodbye::SlowConsumer, Reason::SlowConsumer, now);
            return;
        }
        while let Some(ev) = self.batch.pop_front() {
            if self.phase != Phase::Open {
                self.batch.clear();
                break;
            }
            self.call(now, |s, cx| s.event(ev, cx));
        }
        if self.batch.capacity() > 64 {
            self.batch = VecDeque::new();
        }
    }

    fn say_goodbye(&mut self, why: Goodbye, reason: Reason, now: Instant) {
        if self.goodbye.is_some() || self.phase != Phase::Open {
            return;
        }
        self.goodbye = Some((why, now + GOODBYE_GRACE));
        self.reason = reason;
        self.pending.clear();
        self.call(now, |s, cx| s.goodbye(why, cx));
    }

    /// The server is shutting down: answer what the client already sent, then say
    /// goodbye.
    pub(crate) fn drain(&mut self, sock: &TcpStream, scratch: &mut [u8], now: Instant) {
        self.draining = true;
        while self.wants_read() {
            match self.read_from(sock, scratch, now) {
                Read_::Data { more: true } => continue,
                _ => break,
            }
        }
        self.say_goodbye(Goodbye::Shutdown, Reason::Shutdown, now);
    }

    /// The next time [`Conn::tick`] must run.
    pub(crate) fn next_deadline(&self) -> Instant {
        let mut t = match self.phase {
            Phase::Lingering(until) => until,
            _ => self.idle_check,
        };
        if let Some(since) = self.stalled_since {
            t = t.min(since + self.limits.write_timeout);
        }
        if let Some((_, until)) = self.goodbye {
            t = t.min(until);
        }
        if self.phase == Phase::Open {
            if let Some(d) = self.session.deadline() {
                t = t.min(d);
            }
        }
        t
    }

    /// Runs whatever timers have come due.
    pub(crate) fn tick(&mut self, now: Instant) {
        if let Phase::Lingering(until) = self.phase {
            if now >= until {
                self.phase = Phase::Done;
            }
            return;
        }
        if let Some(since) = self.stalled_since {
            if now >= since + self.limits.write_timeout {
                self.stats.slow_readers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "slow reader: no write progress for {:?}",
                    self.limits.write_timeout
                );
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
        if now >= self.idle_check {
            let due = self.last_active + self.limits.idle_timeout;
            if now >= due {
                self.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                self.say_goodbye(Goodbye::Idle, Reason::Idle, now);
            } else {
                self.idle_check = due;
            }
        }
        if self.phase == Phase::Open && self.session.deadline().is_some_and(|d| now >= d) {
            self.call(now, |s, cx| s.timeout(cx));
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
        let s = &self.stats;
        s.bytes_in.fetch_add(self.bytes_in, Ordering::Relaxed);
        s.bytes_out.fetch_add(self.bytes_out, Ordering::Relaxed);
        s.closed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            duration = ?self.opened.elapsed(),
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            reason = %self.reason,
            "Closed connection"
        );
    }
}
