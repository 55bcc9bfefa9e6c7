//! Events pushed into a session's mailbox: delivered between reads while the client
//! keeps up, the slow consumer ended on overflow, and the output they make coalesced
//! into one write per window.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Conn, Host, Phase, Reason, Timer};
use crate::base::Clock;
use crate::service::{Goodbye, Session};

impl<S: Session, L: Host> Conn<S, L> {
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
    pub(super) fn deliver(&mut self, clock: &Clock) {
        let Some(mb) = self.mailbox.clone() else {
            return;
        };
        // Events taken per wake-up: on the stack unless a burst is larger.
        let mut batch = smallvec::SmallVec::<[S::Event; 8]>::new();
        let overflowed = mb.take(&mut batch);
        if overflowed {
            // At most the rest of a line a sender wrote in part on the lent socket:
            // finished before the goodbye, so the client reads whole lines.
            for ev in batch {
                self.call(clock, |s, cx| s.event(ev, cx));
            }
            self.listener
                .stats
                .slow_consumers
                .fetch_add(1, Ordering::Relaxed);
            let limit = self.limits.max_queue;
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

    pub(super) fn events_written_at(&self) -> Option<Instant> {
        (self.events_written > 0)
            .then(|| self.opened + Duration::from_millis(u64::from(self.events_written - 1)))
    }

    pub(super) fn set_events_written(&mut self, now: Instant) {
        let ms = now.saturating_duration_since(self.opened).as_millis();
        self.events_written = u32::try_from(ms).unwrap_or(u32::MAX - 1) + 1;
    }

    /// Events just added output: write it at once if the last write of events was
    /// long enough ago, otherwise hold it (with whatever comes next) until
    /// `coalesce` after that write. A member of a busy room is written to at most
    /// once per `coalesce`, however many messages it gets; a quiet one at once.
    fn coalesce(&mut self, clock: &Clock) {
        let window = self.limits.coalesce;
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
}
