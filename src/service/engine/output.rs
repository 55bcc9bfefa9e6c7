//! What the engine gives the socket: the bytes to write, the half-close, keepalive,
//! and the goodbye that ends a connection in its protocol (on a limit or a drain).

use std::time::Duration;

use super::{Conn, Host, KeepAlive, Phase, Reason, Timer, GOODBYE_GRACE, KEEP_CAPACITY, LINGER};
use crate::base::Clock;
use crate::service::{Goodbye, Session};

impl<S: Session, L: Host> Conn<S, L> {
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

    /// Whether [`Conn::poll_transmit`] or [`Conn::poll_shutdown_write`] may have work:
    /// false (the common case, tested first on every turn of a model's loop) when there
    /// is no output and the session is not closing.
    #[inline(always)]
    pub(crate) fn may_transmit(&self) -> bool {
        self.has_output() || self.phase == Phase::Closing
    }

    /// `n` bytes of [`Conn::poll_transmit`]'s were written.
    #[inline]
    pub(crate) fn handle_sent(&mut self, n: usize) {
        // `out` is cut to what was sent long before it nears 4 GiB: reading stops at
        // `max_output` of unsent replies.
        self.out_pos += u32::try_from(n).expect("one send is below 4 GiB");
        self.bytes_out += n as u64;
        self.writes = self.writes.wrapping_add(1);
        self.active = true;
        self.timers.stop(Timer::WriteStall);
        if self.out_pos as usize >= self.out.len() {
            // A batch of replies is all sent: its bytes and answers go to the meter.
            self.report(0, n as u64, true);
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > KEEP_CAPACITY {
                self.out = Vec::new();
            }
        } else {
            self.count_out(n);
        }
    }

    /// A write would block: the client is not reading. The write-stall timer starts.
    pub(crate) fn handle_send_blocked(&mut self, clock: &Clock) {
        if !self.timers.is_set(Timer::WriteStall) {
            let due = clock.now() + self.limits.write_timeout;
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
            Some(self.limits.idle_timeout)
        } else {
            None
        }
    }

    /// Ends the connection for `why` with the session's farewell, counted as the
    /// matching reason (what the engine itself does at a limit, for a driver that
    /// decides it: a test).
    pub(crate) fn goodbye(&mut self, why: Goodbye, clock: &Clock) {
        let reason = match why {
            Goodbye::Busy | Goodbye::TooManyFromAddress => Reason::Busy,
            Goodbye::Idle => Reason::Idle,
            Goodbye::Shutdown => Reason::Shutdown,
            Goodbye::SlowConsumer => Reason::SlowConsumer,
        };
        self.say_goodbye(why, reason, clock);
    }

    pub(super) fn say_goodbye(&mut self, why: Goodbye, reason: Reason, clock: &Clock) {
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
}
