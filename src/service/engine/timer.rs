//! A connection's timers, by name, in one table whose minimum is the next deadline
//! (as quinn-proto's `TimerTable`).
//!
//! Each entry is a `u32` of milliseconds after the connection opened, rounded up, plus
//! one (0: not armed): every connection carries the table, and an idle one should
//! stay small (five `Option<Instant>`s would be 80 bytes; this is 20). A deadline is
//! therefore at most a millisecond late, never early; one more than 49 days after the
//! connection opened is kept at that far end.

use std::time::{Duration, Instant};

/// The engine's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The next idle check (a quarter of the idle timeout after the last one).
    Idle = 0,
    /// Output has made no progress since the write started to block: the slow-reader
    /// drop.
    WriteStall = 1,
    /// A goodbye was said: the session's grace to finish its protocol's close.
    Goodbye = 2,
    /// The write side is shut down: how long to wait for the client's EOF.
    Linger = 3,
    /// Output made by events is held until the coalescing window ends.
    Coalesce = 4,
}
// Every timer but `Idle` is "precise" (see `TimerTable::next_precise`): the ones a
// connection rarely has, which a model may keep a timer of its own for (the idle check
// can come from a shared sweep). `Idle` is slot 0, so they are the slots after it.

const COUNT: usize = 5;

/// When each [`Timer`] is due (see the module documentation).
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable([u32; COUNT]);

impl TimerTable {
    /// Arms `timer` for `at` (counted from `base`, the connection's opening).
    #[inline]
    pub(crate) fn set(&mut self, timer: Timer, at: Instant, base: Instant) {
        let ms = at
            .saturating_duration_since(base)
            .as_nanos()
            .div_ceil(1_000_000);
        self.0[timer as usize] = u32::try_from(ms).map_or(u32::MAX, |ms| ms.saturating_add(1));
    }

    /// Disarms `timer`.
    #[inline]
    pub(crate) fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = 0;
    }

    /// Whether `timer` is armed.
    #[inline]
    pub(crate) fn is_set(&self, timer: Timer) -> bool {
        self.0[timer as usize] != 0
    }

    /// When `timer` is due, if armed.
    #[inline]
    pub(crate) fn get(&self, timer: Timer, base: Instant) -> Option<Instant> {
        match self.0[timer as usize] {
            0 => None,
            v => Some(base + Duration::from_millis(u64::from(v - 1))),
        }
    }

    /// Whether `timer` is armed and due at `now`.
    #[inline]
    pub(crate) fn expired(&self, timer: Timer, now: Instant, base: Instant) -> bool {
        self.get(timer, base).is_some_and(|t| now >= t)
    }

    /// The earliest armed timer but [`Timer::Idle`]: the precise ones.
    ///
    /// Asked on every wake-up of every connection, and most have none armed: that is
    /// one test of the four slots or'ed together.
    #[inline]
    pub(crate) fn next_precise(&self, base: Instant) -> Option<Instant> {
        let [_idle, rest @ ..] = &self.0;
        if rest.iter().fold(0, |any, &v| any | v) == 0 {
            return None;
        }
        let min = rest.iter().filter(|&&v| v != 0).min()?;
        Some(base + Duration::from_millis(u64::from(min - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_deadline_is_the_earliest_armed_timer() {
        let base = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next_precise(base), None);
        t.set(Timer::Linger, base + Duration::from_secs(2), base);
        t.set(Timer::WriteStall, base + Duration::from_secs(30), base);
        t.set(Timer::Idle, base + Duration::from_secs(1), base);
        assert_eq!(
            t.next_precise(base),
            Some(base + Duration::from_secs(2)),
            "the idle check is not a precise timer"
        );
        t.stop(Timer::Linger);
        assert!(!t.is_set(Timer::Linger));
        assert_eq!(t.next_precise(base), Some(base + Duration::from_secs(30)));
        assert!(t.expired(Timer::Idle, base + Duration::from_secs(1), base));
        assert!(!t.expired(Timer::Idle, base + Duration::from_millis(999), base));
    }

    #[test]
    fn a_deadline_is_rounded_up_to_the_millisecond_never_early() {
        let base = Instant::now();
        let mut t = TimerTable::default();
        let at = base + Duration::from_micros(1500);
        t.set(Timer::Goodbye, at, base);
        assert_eq!(
            t.get(Timer::Goodbye, base),
            Some(base + Duration::from_millis(2))
        );
        t.set(Timer::Goodbye, base, base);
        assert_eq!(
            t.get(Timer::Goodbye, base),
            Some(base),
            "at opening is armed too"
        );
        t.set(
            Timer::Goodbye,
            base + Duration::from_secs(100 * 86_400),
            base,
        );
        assert!(t.get(Timer::Goodbye, base).unwrap() > base + Duration::from_secs(49 * 86_400));
        // Exactly `u32::MAX` ms after opening: kept at the far end too, not wrapped to
        // "unarmed" (nor an overflow).
        let far = base + Duration::from_millis(u64::from(u32::MAX - 1));
        t.set(
            Timer::Linger,
            base + Duration::from_millis(u64::from(u32::MAX)),
            base,
        );
        assert_eq!(t.get(Timer::Linger, base), Some(far));
        assert_eq!(t.next_precise(base), Some(far));
        t.stop(Timer::Goodbye);
        t.stop(Timer::Linger);
        assert_eq!(t.next_precise(base), None);
    }
}
