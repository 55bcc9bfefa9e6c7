//! The `--max-rate` token bucket of a chat member: up to the rate's worth of commands
//! in a burst, refilled continuously.

use std::time::Instant;

/// A token bucket for `--max-rate`: up to `per_sec` commands in a burst, refilled at
/// `per_sec` a second.
#[derive(Debug)]
pub(super) struct Rate {
    per_sec: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Rate {
    pub(super) fn new(per_sec: u32) -> Rate {
        Rate {
            per_sec: per_sec as f64,
            tokens: per_sec as f64,
            last: None,
        }
    }

    pub(super) fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.per_sec).min(self.per_sec);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
