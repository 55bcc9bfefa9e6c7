//! The one shutdown signal shared by every listener and connection, and the count of
//! what is still alive, so the server can wait until the last connection is gone.
//!
//! Async tasks wait on a cancellation token; blocking threads poll an eventfd that turns
//! readable, for good, when the drain starts. Every accept loop and connection holds a
//! [`Live`] guard; when the last one drops, [`Drain::wait_idle`] returns.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use std::task::Waker;

use slab::Slab;
use tokio_util::sync::CancellationToken;

/// Shutdown signal plus a count of live connections.
#[derive(Clone)]
pub struct Drain(Arc<Inner>);

struct Inner {
    started: AtomicBool,
    token: CancellationToken,
    /// Wakers of the async connections, registered once per connection, so that a
    /// connection only reads an atomic flag per message to know about the drain.
    wakers: [Mutex<Slab<Waker>>; SHARDS],
    fd: OwnedFd,
    live: Mutex<usize>,
    idle: Condvar,
}

/// Shards of the waker registry: connections register and leave without all contending
/// for one lock.
const SHARDS: usize = 16;

/// An async connection's place in the drain's waker registry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registration {
    shard: u32,
    key: u32,
}

/// Held by everything the drain must wait for.
pub(crate) struct Live(Drain);

impl Live {
    /// The drain this guard counts for.
    pub(crate) fn drain(&self) -> &Drain {
        &self.0
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut n = self.0 .0.live.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            self.0 .0.idle.notify_all();
        }
    }
}

impl Drain {
    /// A drain not yet started.
    pub fn new() -> io::Result<Drain> {
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Drain(Arc::new(Inner {
            started: AtomicBool::new(false),
            token: CancellationToken::new(),
            wakers: std::array::from_fn(|_| Mutex::new(Slab::new())),
            fd,
            live: Mutex::new(0),
            idle: Condvar::new(),
        })))
    }

    /// Starts the drain: listeners stop accepting, sessions say goodbye. Idempotent.
    pub fn start(&self) {
        if !self.0.started.swap(true, Ordering::SeqCst) {
            self.0.token.cancel();
            for shard in &self.0.wakers {
                for (_, w) in shard.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    w.wake_by_ref();
                }
            }
            let _ = rustix::io::write(&self.0.fd, &1u64.to_ne_bytes());
        }
    }

    /// Whether [`Drain::start`] was called.
    pub fn is_started(&self) -> bool {
        self.0.started.load(Ordering::Acquire)
    }

    /// Completes when the drain starts.
    pub(crate) async fn started(&self) {
        self.0.token.cancelled().await
    }

    /// Registers a task's waker, woken when the drain starts. A task's waker stays
    /// valid for its whole life, so one registration per connection is enough; the
    /// task calls [`Drain::unregister`] when it ends.
    pub(crate) fn register(&self, id: u64, waker: &Waker) -> Registration {
        let shard = id as usize % SHARDS;
        let key = self.0.wakers[shard]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(waker.clone());
        Registration {
            shard: shard as u32,
            key: key as u32,
        }
    }

    /// Leaves the waker registry.
    pub(crate) fn unregister(&self, r: Registration) {
        let mut slab = self.0.wakers[r.shard as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        slab.try_remove(r.key as usize);
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
