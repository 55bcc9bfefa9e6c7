//! The history's process-wide budget (`--history-bytes`): the order every room's
//! messages were kept in, so the oldest of the process go first whatever their room.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::lock;
use super::memory::{Log, MemoryBroker};
use super::Publication;

/// The messages of every room's history, oldest first, for dropping the oldest when
/// the process-wide budget is exceeded. An entry whose message has left its room's
/// history otherwise (a room's own limit, the room forgotten) is dead and skipped.
#[derive(Default)]
pub(super) struct HistoryOrder {
    pub(super) queue: VecDeque<Weak<Publication>>,
    /// The queue's length after its last clean-up of dead entries.
    pub(super) live_at_compaction: usize,
}

impl MemoryBroker {
    /// Keeps `p` in its room's `log` (under the log's lock), within the room's own
    /// limit; returns whether it was kept, so that the caller, once the lock is
    /// released, applies the process-wide budget ([`MemoryBroker::keep_within_budget`]).
    pub(super) fn remember(&self, r: &mut Log, p: &Arc<Publication>) -> bool {
        if self.per_room == 0 || self.budget == 0 {
            return false;
        }
        let mut dropped = 0;
        while r.history.len() >= self.per_room {
            match r.history.pop_front() {
                Some(old) => dropped += old.cost(),
                None => break,
            }
        }
        let cost = p.cost();
        r.history.push_back(p.clone());
        r.bytes = r.bytes + cost - dropped;
        self.held.fetch_add(cost, Ordering::Relaxed);
        self.let_go(dropped);
        true
    }

    /// Notes `p`, just kept in its room's history, in the process-wide order, then
    /// drops the oldest messages of any room while the history is over its budget.
    /// Takes the order's lock and a room's log lock one after the other, never both.
    pub(super) fn keep_within_budget(&self, p: &Arc<Publication>) {
        {
            let mut order = lock(&self.order);
            order.queue.push_back(Arc::downgrade(p));
            // Dead entries (dropped by a room's own limit, or with their room) are
            // cleared once they make up half the queue, so it stays within twice
            // the messages kept.
            if order.queue.len() > 2 * order.live_at_compaction.max(1024) {
                order.queue.retain(|w| w.strong_count() > 0);
                order.live_at_compaction = order.queue.len();
            }
        }
        while self.held.load(Ordering::Relaxed) > self.budget {
            let Some(oldest) = lock(&self.order).queue.pop_front() else {
                break;
            };
            let Some(oldest) = oldest.upgrade() else {
                continue; // Gone already.
            };
            let mut logs = lock(self.shard(&oldest.room));
            let Some(r) = logs.get_mut(&oldest.room) else {
                continue;
            };
            // A room's history is in the order said: the oldest of the process is
            // at the front of its room's, unless that has dropped it already.
            if r.history.front().is_some_and(|f| Arc::ptr_eq(f, &oldest)) {
                r.history.pop_front();
                let cost = oldest.cost();
                r.bytes -= cost;
                drop(logs);
                self.let_go(cost);
            }
        }
    }

    /// History of `bytes` was let go: counted out, and once enough is, the allocator
    /// is asked to hand free memory back to the system.
    pub(super) fn let_go(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        // A connection that filled the history and left would otherwise leave the
        // process at its peak: glibc keeps freed heap unless asked.
        crate::base::trim::freed(bytes);
    }

    /// A room and its history were forgotten. Once no room keeps any history, the
    /// process-wide order is emptied and its buffer freed: its entries are `Weak`s, and
    /// a `Weak` keeps its message's small allocation alive, scattered between the
    /// freed texts, so ten thousand of them pinned a connection's burst in memory
    /// (12 MB resident with 0.9 MB in use) after every room was gone.
    pub(super) fn forgot_room(&self, history_bytes: usize) {
        self.let_go(history_bytes);
        let mut order = lock(&self.order);
        // Checked under the order's lock: a message kept meanwhile has raised the
        // count before its entry is pushed, so no live entry is dropped.
        if self.held.load(Ordering::Relaxed) == 0 {
            *order = HistoryOrder::default();
        }
    }
}
