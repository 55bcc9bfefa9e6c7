//! The time of one wake-up, read lazily.
//!
//! Most wake-ups (a read, a write) need no clock at all; reading it only when a timer,
//! a limit or a session asks keeps the hot path free of `clock_gettime`.

use std::time::Instant;

/// The time of one wake-up, read from the system clock only if something asks: a
/// reply on the hot path needs no clock at all.
pub struct Clock(std::cell::Cell<Option<Instant>>);

impl Clock {
    /// A clock not yet read.
    pub fn lazy() -> Clock {
        Clock(std::cell::Cell::new(None))
    }

    /// A clock fixed at `now`.
    pub fn at(now: Instant) -> Clock {
        Clock(std::cell::Cell::new(Some(now)))
    }

    /// The time of this wake-up (read once, then the same for every caller).
    pub fn now(&self) -> Instant {
        match self.0.get() {
            Some(t) => t,
            None => {
                let t = Instant::now();
                self.0.set(Some(t));
                t
            }
        }
    }
}
