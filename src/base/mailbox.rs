//! A session's mailbox: a bounded queue that other connections, timers and shared state
//! push events into, and that wakes the session's thread or task.
//!
//! The bound is in bytes (each event is sent with its cost), so a slow member of a busy
//! chat room holds at most the configured amount. Overflow is never a silent drop: the
//! mailbox is marked overflowed, the receiver is woken, and the model ends the session
//! with [`Goodbye::SlowConsumer`](crate::service::Goodbye::SlowConsumer).
//!
//! The receiver is woken only when the queue goes from empty to non-empty: it takes the
//! whole batch at once, so a burst of events costs one wake-up and one write.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Queue capacity (in events) a mailbox keeps after a burst; larger buffers are freed.
const KEEP_EVENTS: usize = 64;

/// How a model wants its sessions woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeKind {
    /// Nobody is woken: the test harness polls the mailbox itself.
    None,
    /// An async task, woken through its waker.
    Task,
    /// A thread blocked in `poll(2)` on an eventfd.
    Fd,
}

enum Wake {
    None,
    /// The task's waker, and whether a wake is pending. The waker lives here rather
    /// than in the task's future, so an idle connection's future stays small.
    Task(AtomicWaker, AtomicBool),
    Fd(OwnedFd),
}

struct Queue<E> {
    items: VecDeque<E>,
    bytes: usize,
    overflowed: bool,
    closed: bool,
}

/// The receiving end, owned by the model's connection driver.
pub struct Mailbox<E> {
    queue: Mutex<Queue<E>>,
    /// Mirrors "the queue has items or overflowed", readable without the lock.
    waiting: AtomicBool,
    limit: usize,
    wake: Wake,
}

/// Why an event was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The receiver would exceed its byte limit; it is being disconnected as a slow
    /// consumer.
    #[error("mailbox full: slow consumer")]
    Overflow,
    /// The connection has ended.
    #[error("connection closed")]
    Closed,
}

impl<E> Mailbox<E> {
    pub(crate) fn new(limit: usize, kind: WakeKind) -> io::Result<Self> {
        let wake = match kind {
            WakeKind::None => Wake::None,
            WakeKind::Task => Wake::Task(AtomicWaker::new(), AtomicBool::new(false)),
            WakeKind::Fd => Wake::Fd(rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )?),
        };
        Ok(Mailbox {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                overflowed: false,
                closed: false,
            }),
            waiting: AtomicBool::new(false),
            limit,
            wake,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<E>> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is a push or a swap), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        match &self.wake {
            Wake::None => {}
            Wake::Task(waker, pending) => {
                pending.store(true, Ordering::Release);
                waker.wake();
            }
            Wake::Fd(fd) => {
                // EAGAIN means the counter is already non-zero: the thread will wake.
                let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
            }
        }
    }

    /// Whether events (or an overflow) wait to be taken.
    pub(crate) fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire)
    }

    /// Whether the mailbox overflowed.
    pub(crate) fn is_overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Consumes a pending wake-up (the eventfd's count), so a thread that leaves
    /// events queued while its client is not reading does not wake again at once.
    pub(crate) fn reset_wake(&self) {
        if let Wake::Fd(fd) = &self.wake {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(fd, &mut buf);
        }
    }

    /// Moves every queued event into `into`; returns whether the mailbox overflowed.
    ///
    /// The queue keeps its buffer (up to a small size), so a steady stream of events
    /// costs no allocation per wake-up when `into` is a stack buffer.
    pub(crate) fn take(&self, into: &mut impl Extend<E>) -> bool {
        self.reset_wake();
        let mut q = self.lock();
        // Everything pushed so far is taken here, so the wake-up its push left is
        // spent too: without this the task would turn once more, find the mailbox
        // empty and only then wait (a push after this line sets it again).
        if let Wake::Task(_, pending) = &self.wake {
            pending.store(false, Ordering::Relaxed);
        }
        self.waiting.store(q.overflowed, Ordering::Release);
        into.extend(q.items.drain(..));
        if q.items.capacity() > KEEP_EVENTS {
            q.items = VecDeque::new();
        }
        q.bytes = 0;
        q.overflowed
    }

    /// Marks the mailbox closed: later sends fail with [`SendError::Closed`].
    pub(crate) fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        q.items.clear();
    }

    /// Ready (async models) once an event was pushed since the last ready poll or
    /// [`take`](Mailbox::take).
    pub(crate) fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        if let Wake::Task(waker, pending) = &self.wake {
            waker.register(cx.waker());
            if pending.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// The eventfd a blocking model polls, if this mailbox wakes a thread.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.wake {
            Wake::Fd(fd) => Some(fd.as_fd()),
            _ => None,
        }
    }
}

/// The sending end: cheap to clone, safe to use from any thread.
pub struct Sender<E>(Arc<Mailbox<E>>);

impl<E> Clone for Sender<E> {
    fn clone(&self) -> Self {
        Sender(self.0.clone())
    }
}

impl<E> Sender<E> {
    pub(crate) fn new(mailbox: Arc<Mailbox<E>>) -> Self {
        Sender(mailbox)
    }

    /// Queues `event`, counted as `cost` bytes against the mailbox's limit.
    pub fn send(&self, event: E, cost: usize) -> Result<(), SendError> {
        let mb = &*self.0;
        let was_empty;
        {
            let mut q = mb.lock();
            if q.closed {
                return Err(SendError::Closed);
            }
            if q.overflowed {
                return Err(SendError::Overflow);
            }
            if q.bytes + cost > mb.limit && !q.items.is_empty() {
                q.overflowed = true;
                q.items.clear();
                mb.waiting.store(true, Ordering::Release);
                drop(q);
                mb.notify();
                return Err(SendError::Overflow);
            }
            was_empty = q.items.is_empty();
            q.items.push_back(event);
            q.bytes += cost;
            mb.waiting.store(true, Ordering::Release);
        }
        if was_empty {
            mb.notify();
        }
        Ok(())
    }

    /// Whether the receiving connection has ended.
    pub fn is_closed(&self) -> bool {
        self.0.lock().closed
    }

    /// Whether two senders reach the same mailbox.
    pub fn same(&self, other: &Sender<E>) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_is_reported_and_sticky() {
        let mb = Arc::new(Mailbox::new(10, WakeKind::None).unwrap());
        let tx = Sender::new(mb.clone());
        tx.send(1, 6).unwrap();
        assert_eq!(tx.send(2, 6), Err(SendError::Overflow));
        assert_eq!(tx.send(3, 1), Err(SendError::Overflow));
        let mut got = VecDeque::new();
        assert!(mb.take(&mut got));
    }

    #[test]
    fn one_event_larger_than_the_limit_is_still_delivered() {
        let mb = Arc::new(Mailbox::new(10, WakeKind::None).unwrap());
        let tx = Sender::new(mb.clone());
        tx.send(1, 100).unwrap();
        let mut got = VecDeque::new();
        assert!(!mb.take(&mut got));
        assert_eq!(got, [1]);
    }

    /// A task that took its events has spent the wake-up their push left: the next
    /// `poll_notified` waits (registering the waker) instead of waking it once more for
    /// an empty mailbox; an event pushed after the take wakes it again.
    #[test]
    fn taking_the_events_spends_their_wake_up() {
        let mb = Arc::new(Mailbox::new(100, WakeKind::Task).unwrap());
        let tx = Sender::new(mb.clone());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(mb.poll_notified(&mut cx).is_pending());
        tx.send(1, 1).unwrap();
        tx.send(2, 1).unwrap();
        let mut got = VecDeque::new();
        assert!(!mb.take(&mut got));
        assert_eq!(got, [1, 2]);
        assert!(mb.poll_notified(&mut cx).is_pending());
        tx.send(3, 1).unwrap();
        assert!(mb.poll_notified(&mut cx).is_ready());
        assert!(mb.poll_notified(&mut cx).is_pending());
    }

    #[test]
    fn closed_mailbox_refuses() {
        let mb = Arc::new(Mailbox::new(10, WakeKind::Fd).unwrap());
        let tx = Sender::new(mb.clone());
        tx.send(1, 1).unwrap();
        mb.close();
        assert_eq!(tx.send(2, 1), Err(SendError::Closed));
        assert!(tx.is_closed());
    }
}
