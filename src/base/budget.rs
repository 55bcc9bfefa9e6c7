//! A process-wide budget for bytes held on behalf of clients: input a session has not
//! consumed yet (a long line), a WebSocket message being assembled.
//!
//! One connection's buffers are bounded by its own limits (`--max-input`,
//! `--max-message`), but those multiply by `--max-conns`: 300 WebSocket clients each
//! holding an unfinished 1 MiB message cost 330 MB, and 10,000 of them would cost
//! 10–20 GB. The budget bounds the sum. A holder that would take it past its limit is
//! refused (told `server busy` in its protocol and closed) rather than paused: paused
//! holders keep what they hold, so a budget full of half-sent messages would pause
//! everyone for good. The one refused is the one asking to grow: it holds an
//! unfinished large buffer by construction, and finding the largest holder instead
//! would need a registry of every connection's buffers.
//!
//! Small buffers are free: the first [`FREE`] bytes of a holder are not charged, and
//! beyond them charges move in steps of [`STEP`], so the shared counter is touched
//! once per 64 KiB a buffer grows or shrinks, never per message.
//!
//! Memory given back is told to [`super::trim`], which has the allocator hand free
//! pages back to the system shortly after a burst, so the resident size falls after a
//! burst of large messages instead of staying at its peak.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes a holder keeps without charge.
pub const FREE: usize = 16 * 1024;
/// The unit charges move in.
pub const STEP: usize = 64 * 1024;
/// The default budget: 256 MiB, a fixed figure that a small server fits and a large
/// one can raise with `--max-buffered`.
pub const DEFAULT_MAX_BUFFERED: usize = 256 << 20;

/// What holding `bytes` costs: nothing up to [`FREE`], then whole [`STEP`]s.
pub fn charge_for(bytes: usize) -> usize {
    if bytes <= FREE {
        0
    } else {
        bytes.div_ceil(STEP).saturating_mul(STEP)
    }
}

/// The process-wide budget (see the module documentation).
#[derive(Debug)]
pub struct Budget {
    /// Changed at run time by a config reload ([`Budget::set_limit`]).
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the limit: holders that would grow past a lowered one are refused from
    /// now on; what is held already stays held.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Moves a holder's charge from what holding `from` bytes costs to what holding
    /// `to` bytes costs. Shrinking always succeeds; growing fails, charging nothing,
    /// when it would pass the limit.
    pub fn rehold(&self, from: usize, to: usize) -> bool {
        let (old, new) = (charge_for(from), charge_for(to));
        if new > old {
            self.take(new - old)
        } else {
            if old > new {
                self.give_back(old - new);
            }
            true
        }
    }

    fn take(&self, n: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&t| t <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        super::trim::freed(n);
    }
}

/// What one holder (a buffer of one connection) has charged to a budget; given back
/// when it drops.
#[derive(Debug, Default)]
pub struct Held {
    budget: Option<Arc<Budget>>,
    bytes: usize,
}

impl Held {
    /// Nothing held yet.
    pub fn new() -> Held {
        Held::default()
    }

    /// Bytes this holder holds now (as last set).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Says the holder now holds `bytes`. Fails, changing nothing, when growing would
    /// pass the budget's limit.
    pub fn set(&mut self, budget: &Arc<Budget>, bytes: usize) -> bool {
        if charge_for(bytes) == charge_for(self.bytes) {
            self.bytes = bytes;
            return true;
        }
        let b = self.budget.get_or_insert_with(|| budget.clone());
        if !b.rehold(self.bytes, bytes) {
            return false;
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.rehold(self.bytes, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_are_free_and_large_ones_charged_in_steps() {
        assert_eq!(charge_for(0), 0);
        assert_eq!(charge_for(FREE), 0);
        assert_eq!(charge_for(FREE + 1), STEP);
        assert_eq!(charge_for(STEP + 1), 2 * STEP);
    }

    #[test]
    fn a_lowered_limit_refuses_growth_and_keeps_what_is_held() {
        let budget = Arc::new(Budget::new(4 * STEP));
        let mut a = Held::new();
        assert!(a.set(&budget, 3 * STEP));
        budget.set_limit(2 * STEP);
        assert_eq!(budget.limit(), 2 * STEP);
        assert_eq!(budget.used(), 3 * STEP, "what is held stays held");
        let mut b = Held::new();
        assert!(
            !b.set(&budget, 2 * STEP),
            "nothing grows past the new limit"
        );
        budget.set_limit(8 * STEP);
        assert!(b.set(&budget, 2 * STEP), "a raised limit lets it grow");
    }

    #[test]
    fn a_holder_past_the_limit_is_refused_and_charged_nothing() {
        let budget = Arc::new(Budget::new(4 * STEP));
        let mut a = Held::new();
        let mut b = Held::new();
        assert!(a.set(&budget, 3 * STEP));
        assert_eq!(budget.used(), 3 * STEP);
        assert!(!b.set(&budget, 2 * STEP), "two steps more pass the limit");
        assert_eq!(budget.used(), 3 * STEP);
        assert_eq!(b.bytes(), 0);
        assert!(b.set(&budget, STEP));
        assert_eq!(budget.used(), 4 * STEP);
        drop(a);
        assert_eq!(
            budget.used(),
            STEP,
            "a dropped holder gives back its charge"
        );
        assert!(b.set(&budget, 10));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn growing_within_a_step_does_not_touch_the_counter() {
        let budget = Arc::new(Budget::new(STEP));
        let mut a = Held::new();
        assert!(a.set(&budget, FREE + 1));
        assert_eq!(budget.used(), STEP);
        // Another holder takes nothing within its free bytes, even at the limit.
        let mut b = Held::new();
        assert!(b.set(&budget, FREE));
        assert!(a.set(&budget, STEP));
        assert!(!a.set(&budget, STEP + 1));
        assert_eq!(a.bytes(), STEP);
    }
}
