//! The one shutdown signal shared by every listener and connection, and the count of
//! what is still alive, so the server can wait until the last connection is gone.
//!
//! Async tasks wait on a cancellation token; blocking threads poll an eventfd that turns
//! readable, for good, when the drain starts. Every accept loop and connection holds a
//! [`Live`] guard; when the last one drops, [`Drain::wait_idle`] returns.
//!
//! The same registry of async connections also drives their idle checks: one sweeper
//! task per server wakes the connections whose check is due, so a connection holds no
//! timer of its own for the check that every connection has (a tokio `Sleep` is 112
//! bytes in each task, and polling it is work on every wake-up). Connections learn that a
//! sweep happened from one word they already read per wake-up for the drain.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use std::task::Waker;

use slab::Slab;
use tokio_util::sync::CancellationToken;

/// Shutdown signal plus a count of live connections.
#[derive(Clone)]
pub struct Drain(Arc<Inner>);

struct Inner {
    started: AtomicBool,
    /// Set by [`Drain::stop_accepting`] and by [`Drain::start`]: the accept loops end.
    accept_stopped: AtomicBool,
    /// Cancelled with `accept_stopped`, for the async accept loops.
    accept_token: CancellationToken,
    /// Readable once `accept_stopped` is set, for the blocking accept loops.
    accept_fd: OwnedFd,
    /// [`STARTED`] once the drain has started, plus one [`SWEPT`] per sweep: the one word
    /// an async connection reads per wake-up to learn of either.
    signal: AtomicU32,
    token: CancellationToken,
    /// Wakers of the async connections with the time of their next idle check,
    /// registered once per connection, so that a connection only reads an atomic word
    /// per message to know about the drain and the sweeps.
    wakers: [Mutex<Slab<Entry>>; SHARDS],
    /// Whether the sweeper task runs (one per server).
    sweeping: AtomicBool,
    /// Time 0 of the due times in the registry.
    base: Instant,
    fd: OwnedFd,
    live: Mutex<usize>,
    idle: Condvar,
    /// Drains started with this one (see [`Drain::follower`]).
    followers: Mutex<Vec<Weak<Inner>>>,
}

/// Shards of the waker registry: connections register and leave without all contending
/// for one lock.
const SHARDS: usize = 16;

/// Bit of [`Drain::signal`] set once the drain has started.
pub(crate) const STARTED: u32 = 1;
/// A bit [`Drain::signal`] never sets: a reader may keep a flag of its own there in
/// the copy it compares against.
pub(crate) const SIGNAL_SPARE: u32 = 2;
/// What one sweep adds to [`Drain::signal`].
const SWEPT: u32 = 4;
/// Due time of a connection with no idle check pending.
const NEVER: u64 = u64::MAX;

/// One async connection in the registry.
struct Entry {
    waker: Waker,
    /// Its next idle check, in milliseconds after [`Inner::base`] (rounded up, so that a
    /// connection woken for it finds its check due), or [`NEVER`].
    due: u64,
}

/// An async connection's place in the drain's waker registry: its shard and key in
/// one word (plus one, so that `Option<Registration>` is a word too: it sits in every
/// connection's task).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registration(NonZeroU32);

impl Registration {
    fn new(shard: usize, key: usize) -> Registration {
        let word = u32::try_from(key * SHARDS + shard + 1).expect("fewer than 2^32 connections");
        Registration(NonZeroU32::new(word).expect("plus one"))
    }

    fn shard(self) -> usize {
        (self.0.get() - 1) as usize % SHARDS
    }

    fn key(self) -> usize {
        (self.0.get() - 1) as usize / SHARDS
    }
}

/// Held by everything the drain must wait for.
pub(crate) struct Live(Drain);

impl Live {
    /// Gives up the guard without leaving: the caller counts as alive until it calls
    /// [`Drain::leave`] itself. An async connection does so to keep the guard's pointer
    /// out of its task (it reaches the drain through its listener).
    pub(crate) fn detach(self) {
        std::mem::forget(self);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Drain {
    /// A drain not yet started.
    pub fn new() -> io::Result<Drain> {
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        let accept_fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Drain(Arc::new(Inner {
            started: AtomicBool::new(false),
            accept_stopped: AtomicBool::new(false),
            accept_token: CancellationToken::new(),
            accept_fd,
            signal: AtomicU32::new(0),
            token: CancellationToken::new(),
            wakers: std::array::from_fn(|_| Mutex::new(Slab::new())),
            sweeping: AtomicBool::new(false),
            base: Instant::now(),
            fd,
            live: Mutex::new(0),
            idle: Condvar::new(),
            followers: Mutex::new(Vec::new()),
        })))
    }

    /// Starts the drain: listeners stop accepting, sessions say goodbye. Idempotent.
    pub fn start(&self) {
        if !self.0.started.swap(true, Ordering::SeqCst) {
            self.0.signal.fetch_or(STARTED, Ordering::SeqCst);
            self.0.token.cancel();
            for shard in &self.0.wakers {
                for (_, e) in shard.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    e.waker.wake_by_ref();
                }
            }
            let _ = rustix::io::write(&self.0.fd, &1u64.to_ne_bytes());
            self.stop_accepts();
            let followers =
                std::mem::take(&mut *self.0.followers.lock().unwrap_or_else(|p| p.into_inner()));
            for f in followers.iter().filter_map(Weak::upgrade) {
                Drain(f).start();
            }
        }
    }

    /// A drain of its own that also starts when this one does (already started if
    /// this one has), and stops accepting when this one does: a listener's "stop
    /// accepting", which a reload can start alone while the server's drain (or a
    /// hand-over to another process) stops every listener's. Only its signal is used;
    /// what it counts alive is separate.
    pub(crate) fn follower(&self) -> io::Result<Drain> {
        let f = Drain::new()?;
        {
            let mut followers = self.0.followers.lock().unwrap_or_else(|p| p.into_inner());
            followers.retain(|w| w.strong_count() > 0);
            followers.push(Arc::downgrade(&f.0));
        }
        // After the push: a `start` that took the list before it is seen here.
        if self.is_started() {
            f.start();
        } else if self.is_accept_stopped() {
            f.stop_accepting();
        }
        Ok(f)
    }

    /// Blocks the calling thread until the drain starts.
    pub fn wait_started(&self) {
        let fd = self.fd();
        let mut fds = [rustix::event::PollFd::from_borrowed_fd(
            fd,
            rustix::event::PollFlags::IN,
        )];
        while !self.is_started() {
            let _ = rustix::event::poll(&mut fds, None);
        }
    }

    /// Hands the listeners over: the accept loops end without taking the clients
    /// still queued (another process sharing the listening sockets takes them), and
    /// the connections already open go on being served; [`Drain::start`] later says
    /// goodbye to those left. Idempotent.
    pub fn stop_accepting(&self) {
        self.stop_accepts();
        // Every listener's own signal follows (see [`Drain::follower`]).
        let followers = self.0.followers.lock().unwrap_or_else(|p| p.into_inner());
        for f in followers.iter().filter_map(Weak::upgrade) {
            Drain(f).stop_accepting();
        }
    }

    fn stop_accepts(&self) {
        if !self.0.accept_stopped.swap(true, Ordering::SeqCst) {
            self.0.accept_token.cancel();
            let _ = rustix::io::write(&self.0.accept_fd, &1u64.to_ne_bytes());
        }
    }

    /// Whether the accept loops were told to end ([`Drain::stop_accepting`] or
    /// [`Drain::start`]).
    pub(crate) fn is_accept_stopped(&self) -> bool {
        self.0.accept_stopped.load(Ordering::Acquire)
    }

    /// Completes when the accept loops are told to end.
    pub(crate) async fn accept_stopped(&self) {
        self.0.accept_token.cancelled().await
    }

    /// Readable once the accept loops are told to end.
    pub(crate) fn accept_fd(&self) -> BorrowedFd<'_> {
        self.0.accept_fd.as_fd()
    }

    /// Whether [`Drain::start`] was called.
    pub fn is_started(&self) -> bool {
        self.0.started.load(Ordering::Acquire)
    }

    /// Completes when the drain starts.
    pub(crate) async fn started(&self) {
        self.0.token.cancelled().await
    }

    /// [`STARTED`] if the drain has started, plus a count of sweeps: a connection that
    /// sees this word change has something to look at (one atomic load per wake-up).
    pub(crate) fn signal(&self) -> u32 {
        self.0.signal.load(Ordering::Acquire)
    }

    /// Registers a task's waker, woken when the drain starts and when `idle_due` comes
    /// (see [`Drain::sweep`]). A task's waker stays valid for its whole life, so one
    /// registration per connection is enough; the task calls [`Drain::unregister`]
    /// when it ends.
    pub(crate) fn register(
        &self,
        id: u64,
        waker: &Waker,
        idle_due: Option<Instant>,
    ) -> Registration {
        let shard = id as usize % SHARDS;
        let key = self.0.wakers[shard]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Entry {
                waker: waker.clone(),
                due: self.due(idle_due),
            });
        Registration::new(shard, key)
    }

    /// Sets when a registered connection's next idle check is due (`None`: none).
    pub(crate) fn reschedule(&self, r: Registration, idle_due: Option<Instant>) {
        let due = self.due(idle_due);
        let mut slab = self.0.wakers[r.shard()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(e) = slab.get_mut(r.key()) {
            e.due = due;
        }
    }

    fn due(&self, at: Option<Instant>) -> u64 {
        match at {
            Some(t) => {
                let d = t.saturating_duration_since(self.0.base);
                // Rounded up: woken at or after this millisecond, the check is due.
                (d.as_nanos().div_ceil(1_000_000)).min(u128::from(NEVER - 1)) as u64
            }
            None => NEVER,
        }
    }

    /// Starts the idle sweeper on the current runtime unless it runs already: every
    /// `period` at the most (a quarter of the idle timeout: no check is due later than
    /// that after it was set), and no more often than every `period / 16` (capped at a
    /// second), it wakes the connections whose idle check is due. A check therefore runs
    /// at most that granularity late. It stops when the drain starts, when idle
    /// checks no longer matter.
    pub(crate) fn start_sweeper(&self, period: Duration) {
        if self.0.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let period = period.max(Duration::from_millis(1));
        let grain = (period / 16).clamp(Duration::from_millis(1), Duration::from_secs(1));
        let drain = self.clone();
        tokio::spawn(async move {
            loop {
                let now = Instant::now();
                let next = drain.sweep(now);
                let until = match next {
                    Some(t) => t.clamp(now + grain, now + period),
                    None => now + period,
                };
                tokio::select! {
                    biased;
                    _ = drain.started() => return,
                    _ = tokio::time::sleep_until(until.into()) => {}
                }
            }
        });
    }

    /// Wakes every connection whose idle check is due at `now`, after counting one
    /// sweep in [`Drain::signal`] so that each of them, woken, knows to look. Returns
    /// when the next check is due.
    fn sweep(&self, now: Instant) -> Option<Instant> {
        let now_ms = now.saturating_duration_since(self.0.base).as_millis() as u64;
        let mut next = NEVER;
        let mut counted = false;
        for shard in &self.0.wakers {
            let mut slab = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (_, e) in slab.iter_mut() {
                if e.due <= now_ms {
                    if !counted {
                        self.0.signal.fetch_add(SWEPT, Ordering::AcqRel);
                        counted = true;
                    }
                    // The connection sets its next check after this one.
                    e.due = NEVER;
                    e.waker.wake_by_ref();
                } else {
                    next = next.min(e.due);
                }
            }
        }
        (next != NEVER).then(|| self.0.base + Duration::from_millis(next))
    }

    /// Leaves the waker registry.
    pub(crate) fn unregister(&self, r: Registration) {
        let mut slab = self.0.wakers[r.shard()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        slab.try_remove(r.key());
    }

    /// Readable once the drain has started; never reset.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.fd.as_fd()
    }

    /// Counts one more thing to wait for until the guard drops.
    pub(crate) fn live(&self) -> Live {
        *self.0.live.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Live(self.clone())
    }

    /// Ends what a [`Live::detach`]ed guard counted.
    pub(crate) fn leave(&self) {
        let mut n = self.0.live.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }

    /// How many accept loops and connections are still alive.
    pub fn live_count(&self) -> usize {
        *self.0.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until nothing is alive or `until` passes; returns what is still alive.
    pub fn wait_idle(&self, until: Instant) -> usize {
        let mut n = self.0.live.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            let now = Instant::now();
            if now >= until {
                break;
            }
            n = self
                .0
                .idle
                .wait_timeout(n, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn a_follower_starts_with_its_drain_but_not_the_other_way_round() {
        let server = Drain::new().unwrap();
        let one = server.follower().unwrap();
        let two = server.follower().unwrap();
        one.start();
        assert!(one.is_started());
        assert!(
            !server.is_started(),
            "one listener stopped is not a shutdown"
        );
        assert!(!two.is_started());
        drop(two);
        let three = server.follower().unwrap();
        server.start();
        assert!(three.is_started(), "the shutdown stops every listener");
        let late = server.follower().unwrap();
        assert!(
            late.is_started(),
            "a listener added during the drain never accepts"
        );
        late.wait_started();
    }

    #[test]
    fn a_sweep_wakes_only_the_connections_whose_check_is_due() {
        let drain = Drain::new().unwrap();
        let now = Instant::now();
        let (due, due_waker) = counter();
        let (later, later_waker) = counter();
        let (never, never_waker) = counter();
        drain.register(1, &due_waker, Some(now - Duration::from_millis(1)));
        let r = drain.register(2, &later_waker, Some(now + Duration::from_secs(60)));
        drain.register(3, &never_waker, None);
        let before = drain.signal();

        let next = drain.sweep(now).expect("one check is still pending");
        assert_eq!(due.0.load(Ordering::SeqCst), 1);
        assert_eq!(later.0.load(Ordering::SeqCst), 0);
        assert_eq!(never.0.load(Ordering::SeqCst), 0);
        assert_ne!(
            drain.signal(),
            before,
            "the woken connection must see a sweep"
        );
        assert_eq!(drain.signal() & (STARTED | SIGNAL_SPARE), 0);
        let want = now + Duration::from_secs(60);
        assert!(next >= want && next <= want + Duration::from_millis(1));

        // A woken connection is not woken again until it sets its next check.
        assert!(drain.sweep(now + Duration::from_secs(1)).is_some());
        assert_eq!(due.0.load(Ordering::SeqCst), 1);

        // Rescheduled earlier, the other one is due at the next sweep.
        drain.reschedule(r, Some(now));
        assert_eq!(drain.sweep(now + Duration::from_millis(1)), None);
        assert_eq!(later.0.load(Ordering::SeqCst), 1);

        drain.start();
        assert_eq!(drain.signal() & STARTED, STARTED);
        assert_eq!(
            never.0.load(Ordering::SeqCst),
            1,
            "the drain wakes everyone"
        );
    }
}
