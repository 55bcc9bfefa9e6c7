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
//!
//! A connection waiting with nothing queued and nothing unsent may lend its socket to
//! the senders ([`Mailbox::lend`]): an event that is already its wire bytes is then
//! written by the sender itself ([`Sender::send_or_write`]), one `send` and no wake-up,
//! as a fan-out floor does. Order holds because the socket is written under the
//! mailbox's lock and only while the queue is empty; the first send that cannot write
//! it all (a full socket buffer, an error) ends the loan and queues the event (or the
//! rest of it) for the connection, which takes its socket back whenever it wakes
//! ([`Mailbox::reclaim`]).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use super::prefetch::prefetch;

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
    /// The first queued event stands for the rest of one a sender wrote in part on
    /// the lent socket: an overflow keeps it, so the connection can finish that line
    /// before its goodbye.
    partial_front: bool,
    /// The connection's socket while it is lent to the senders (see the module
    /// documentation), with what they wrote on it.
    loan: Option<Loan>,
}

/// A socket lent to a mailbox's senders, and what they wrote on it.
struct Loan {
    /// The connection's socket: open for as long as the loan is (the contract of
    /// [`Mailbox::lend`]).
    fd: RawFd,
    /// Still writable by senders: cleared by the first send that did not write
    /// everything, after which events queue again (the tallies stay for
    /// [`Mailbox::reclaim`]).
    open: bool,
    /// Events are written at most once per `window` (the connection's write
    /// coalescing): an event sooner than that is queued, and the connection holds it.
    window: Duration,
    /// The tallies the connection takes back.
    used: Used,
}

/// What senders wrote on a lent socket ([`Mailbox::reclaim`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Used {
    /// Bytes written.
    pub bytes: u64,
    /// `send` calls that wrote something.
    pub writes: u32,
    /// When events were last written: the lender's own last write of events, or the
    /// senders' latest.
    pub last: Option<Instant>,
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
                partial_front: false,
                loan: None,
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

    /// Moves every queued event into `into`; returns whether the mailbox overflowed
    /// (then `into` gets at most the rest of an event a sender wrote in part, which
    /// must go out before anything else).
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
        q.partial_front = false;
        into.extend(q.items.drain(..));
        if q.items.capacity() > KEEP_EVENTS {
            q.items = VecDeque::new();
        }
        q.bytes = 0;
        q.overflowed
    }

    /// Marks the mailbox closed: later sends fail with [`SendError::Closed`]. A lent
    /// socket is given back (unwritten from here on).
    pub(crate) fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        q.items.clear();
        q.loan = None;
    }

    /// Lends the connection's socket `fd` to the senders, if nothing is queued: events
    /// that are their wire bytes are then written on it by [`Sender::send_or_write`]
    /// (at most once per `window` after `last`, the connection's last write of
    /// events) until the connection [`reclaim`](Mailbox::reclaim)s it. Returns whether
    /// it was lent.
    ///
    /// # Safety
    ///
    /// `fd` must stay an open socket of this connection until `reclaim` or
    /// [`close`](Mailbox::close) has returned, and the connection must write nothing on
    /// it meanwhile (senders write it under the mailbox's lock, with `MSG_DONTWAIT`).
    pub(crate) unsafe fn lend(&self, fd: RawFd, window: Duration, last: Option<Instant>) -> bool {
        let mut q = self.lock();
        if q.closed || q.overflowed || !q.items.is_empty() {
            return false;
        }
        let used = Used {
            last,
            ..Used::default()
        };
        q.loan = Some(Loan {
            fd,
            open: true,
            window,
            used,
        });
        true
    }

    /// Takes the lent socket back: from now on senders queue. Returns what they wrote
    /// on it, if anything.
    pub(crate) fn reclaim(&self) -> Option<Used> {
        let loan = self.lock().loan.take()?;
        (loan.used.writes > 0).then_some(loan.used)
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

    /// Asks the CPU to bring the mailbox (its lock, queue and loan) into the cache,
    /// ahead of a [`send`](Sender::send) or [`send_or_write`](Sender::send_or_write)
    /// to it: a fan-out calls it for the next member while the current one's send is
    /// in the kernel, which leaves the next mailbox cold otherwise. A hint only.
    #[inline(always)]
    pub(crate) fn prefetch(&self) {
        prefetch(Arc::as_ptr(&self.0));
    }

    /// Queues `event`, counted as `cost` bytes against the mailbox's limit.
    pub fn send(&self, event: E, cost: usize) -> Result<(), SendError> {
        let mb = &*self.0;
        let mut q = mb.lock();
        let queued = Self::queue(mb, &mut q, event, cost);
        drop(q);
        Self::wake(mb, queued)?;
        Ok(())
    }

    /// Writes `bytes`, an event's wire form, on the connection's socket if it is lent
    /// ([`Mailbox::lend`]) and takes all of it now; otherwise queues `event(n)` like
    /// [`send`](Sender::send), where `n` bytes were written (0, or the first part of
    /// a send cut short: the event must then stand for the rest), counted as `cost`
    /// less `n` bytes. Returns whether the event was written.
    pub fn send_or_write(
        &self,
        bytes: &[u8],
        now: Instant,
        event: impl FnOnce(usize) -> E,
        cost: usize,
    ) -> Result<bool, SendError> {
        let mb = &*self.0;
        let mut q = mb.lock();
        let mut written = 0;
        if q.items.is_empty() && !q.closed && !q.overflowed {
            if let Some(loan) = q.loan.as_mut().filter(|l| l.open) {
                if loan.used.last.is_none_or(|t| now >= t + loan.window) {
                    // SAFETY: the connection keeps the socket open while it is lent
                    // (`Mailbox::lend`), and the lock is held.
                    let fd = unsafe { BorrowedFd::borrow_raw(loan.fd) };
                    let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
                    // An error (a full buffer, a reset) ends the loan like a short
                    // send: the connection meets it itself when it writes the event.
                    if let Ok(n) = rustix::net::send(fd, bytes, flags) {
                        written = n;
                        loan.used.bytes += n as u64;
                        loan.used.writes += 1;
                        loan.used.last = Some(now);
                        if n == bytes.len() {
                            return Ok(true);
                        }
                    }
                    loan.open = false;
                }
            }
        }
        let queued = Self::queue(mb, &mut q, event(written), cost.saturating_sub(written));
        if written > 0 {
            // Queued first: the loan was only ever open over an empty queue.
            q.partial_front = true;
        }
        drop(q);
        Self::wake(mb, queued)?;
        Ok(false)
    }

    /// Wakes the receiver, outside the lock, if [`Sender::queue`] says so.
    fn wake(
        mb: &Mailbox<E>,
        (queued, wake): (Result<(), SendError>, bool),
    ) -> Result<(), SendError> {
        if wake {
            mb.notify();
        }
        queued
    }

    /// Queues `event` under the lock; returns the outcome and whether the receiver
    /// must be woken (the queue was empty, or it overflowed just now).
    fn queue(
        mb: &Mailbox<E>,
        q: &mut Queue<E>,
        event: E,
        cost: usize,
    ) -> (Result<(), SendError>, bool) {
        if q.closed {
            return (Err(SendError::Closed), false);
        }
        if q.overflowed {
            return (Err(SendError::Overflow), false);
        }
        if q.bytes + cost > mb.limit && !q.items.is_empty() {
            q.overflowed = true;
            q.items.truncate(usize::from(q.partial_front));
            mb.waiting.store(true, Ordering::Release);
            return (Err(SendError::Overflow), true);
        }
        let was_empty = q.items.is_empty();
        q.items.push_back(event);
        q.bytes += cost;
        mb.waiting.store(true, Ordering::Release);
        (Ok(()), was_empty)
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

    /// A prefetch is only a hint: it reads nothing the program sees, so no address
    /// makes it fault, not even null, a freed block or the top of the address space.
    #[test]
    fn a_prefetch_never_faults_and_changes_nothing() {
        prefetch(std::ptr::null::<[u8; 256]>());
        prefetch((usize::MAX - 100) as *const [u8; 512]);
        let freed = Box::into_raw(Box::new([7u8; 200]));
        // SAFETY: the box was made just above and is freed once.
        drop(unsafe { Box::from_raw(freed) });
        prefetch(freed);
        let mb = Arc::new(Mailbox::new(10, WakeKind::None).unwrap());
        let tx = Sender::new(mb.clone());
        tx.prefetch();
        tx.send(1, 6).unwrap();
        let mut got = Vec::new();
        mb.take(&mut got);
        assert_eq!(got, vec![1]);
    }

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

    /// A lent socket takes whole events at once, no wake-up and nothing queued; the
    /// first event it cannot take whole is written in part, the rest queued (as the
    /// event made for what was written) and the loan ended, so the events after it
    /// queue behind it however much room the socket has again; the connection takes
    /// back the tallies of what was written.
    #[test]
    fn a_lent_socket_is_written_until_it_fills_then_events_queue_behind_the_rest() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mb = Arc::new(Mailbox::new(1 << 30, WakeKind::Task).unwrap());
        let tx = Sender::new(mb.clone());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(mb.poll_notified(&mut cx).is_pending());
        let t0 = Instant::now();
        // SAFETY: `ours` outlives the loan (reclaimed below, before it is dropped).
        assert!(unsafe { mb.lend(ours.as_raw_fd(), Duration::ZERO, None) });
        let event = [7u8; 1000];
        let mut whole = 0;
        let mut cut = None;
        for i in 0..10_000 {
            let sent = tx
                .send_or_write(&event, t0, |n| (i, n), event.len())
                .unwrap();
            if !sent {
                cut = Some(i);
                break;
            }
            whole += 1;
            assert!(
                mb.poll_notified(&mut cx).is_pending(),
                "no wake-up for a write"
            );
        }
        let cut = cut.expect("the socket filled up");
        assert!(whole > 0);
        // Room again, but the loan ended: the next events queue behind the rest.
        let mut drained = vec![0u8; whole * 1000 + 1000];
        peer.set_nonblocking(true).unwrap();
        let n = peer.read(&mut drained).unwrap();
        assert!(!tx
            .send_or_write(&event, t0, |n| (cut + 1, n), 1000)
            .unwrap());
        assert!(mb.poll_notified(&mut cx).is_ready(), "queued events wake");
        let mut got = VecDeque::new();
        assert!(!mb.take(&mut got));
        let (i, from) = got[0];
        assert_eq!(i, cut);
        assert_eq!(got[1], (cut + 1, 0));
        let used = mb.reclaim().expect("the senders wrote");
        assert_eq!(used.bytes as usize, whole * 1000 + from);
        assert_eq!(used.writes as usize, whole + usize::from(from > 0));
        assert_eq!(used.last, Some(t0));
        // What was written is what the peer reads: every whole event, then `from`.
        let mut all = drained[..n].to_vec();
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(k) = peer.read(&mut buf) {
            all.extend_from_slice(&buf[..k]);
        }
        assert_eq!(all.len(), whole * 1000 + from);
        assert!(mb.reclaim().is_none(), "reclaimed once");
    }

    /// An overflow drops what is queued but the rest of a line a sender wrote in
    /// part: the connection finishes that line before its goodbye.
    #[test]
    fn an_overflow_keeps_the_rest_of_a_line_written_in_part() {
        use std::os::fd::AsRawFd;
        // TCP: a send into a nearly full buffer writes what fits.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _peer = listener.accept().unwrap();
        let mb = Arc::new(Mailbox::new(100_000, WakeKind::None).unwrap());
        let tx = Sender::new(mb.clone());
        let t0 = Instant::now();
        // SAFETY: `ours` outlives the loan (the mailbox is closed before it drops).
        assert!(unsafe { mb.lend(ours.as_raw_fd(), Duration::ZERO, None) });
        let event = vec![1u8; 50_000];
        let mut cut = None;
        for i in 0..1000 {
            if !tx
                .send_or_write(&event, t0, |n| (i, n), event.len())
                .unwrap()
            {
                cut = Some(i);
                break;
            }
        }
        let cut = cut.expect("the socket filled up");
        let mut got = VecDeque::new();
        let mut next = cut + 1;
        while tx.send((next, 0), event.len()).is_ok() {
            next += 1;
        }
        assert!(mb.take(&mut got), "overflowed");
        // A loopback TCP buffer takes part of a 50 kB send before it is full.
        assert_eq!(got.len(), 1, "only the rest is kept: {got:?}");
        assert_eq!(got[0].0, cut);
        assert!(got[0].1 > 0, "written in part: {got:?}");
        mb.close();
    }

    /// A lent socket is written at most once per window after the connection's last
    /// write of events: an event sooner than that is queued for the connection,
    /// which holds it for its own coalescing.
    #[test]
    fn a_lent_socket_keeps_the_write_window() {
        use std::os::fd::AsRawFd;
        let (ours, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mb = Arc::new(Mailbox::new(1 << 20, WakeKind::None).unwrap());
        let tx = Sender::new(mb.clone());
        let t0 = Instant::now();
        let window = Duration::from_millis(5);
        // SAFETY: `ours` outlives the loan (the mailbox is closed before it drops).
        assert!(unsafe { mb.lend(ours.as_raw_fd(), window, Some(t0)) });
        assert!(!tx.send_or_write(b"a\n", t0 + window / 2, |n| n, 2).unwrap());
        mb.take(&mut VecDeque::new());
        // SAFETY: as above.
        assert!(unsafe { mb.lend(ours.as_raw_fd(), window, Some(t0)) });
        assert!(tx.send_or_write(b"b\n", t0 + window, |n| n, 2).unwrap());
        assert!(!tx.send_or_write(b"c\n", t0 + window, |n| n, 2).unwrap());
        mb.close();
        assert!(mb.reclaim().is_none(), "a closed mailbox holds no loan");
    }

    /// Nothing is lent while events wait, and a closed mailbox refuses as before.
    #[test]
    fn a_socket_is_not_lent_over_waiting_events() {
        use std::os::fd::AsRawFd;
        let (ours, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mb = Arc::new(Mailbox::new(1 << 20, WakeKind::None).unwrap());
        let tx = Sender::new(mb.clone());
        tx.send(1, 1).unwrap();
        // SAFETY: nothing is lent.
        assert!(!unsafe { mb.lend(ours.as_raw_fd(), Duration::ZERO, None) });
        mb.close();
        assert_eq!(
            tx.send_or_write(b"x", Instant::now(), |_| 2, 1),
            Err(SendError::Closed)
        );
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
