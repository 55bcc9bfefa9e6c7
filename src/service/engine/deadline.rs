//! Time: the next deadline a model waits for, and what happens when it comes (the idle
//! check, the write stall, the goodbye's grace, the lingering close, the end of a
//! coalescing window, the session's own timer).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Conn, Host, KeepAlive, Phase, Reason, Timer, FAR, IDLE_QUARTERS};
use crate::base::Clock;
use crate::service::{Goodbye, Session};

impl<S: Session, L: Host> Conn<S, L> {
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
        let t = self.timers.next_precise(self.opened);
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
            let t = self.limits.write_timeout;
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
            // What a connection moved without finishing a batch of replies (a long
            // upload, a partial send) reaches the meter at least this often.
            if self.unreported != (0, 0) {
                self.report_now(0, 0, false);
            }
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
                let next = now + self.limits.idle_timeout / IDLE_QUARTERS;
                self.timers.set(Timer::Idle, next, base);
            }
        }
        if self.phase == Phase::Open && self.session.deadline().is_some_and(|d| now >= d) {
            self.call(clock, |s, cx| s.timeout(cx));
        }
    }
}
