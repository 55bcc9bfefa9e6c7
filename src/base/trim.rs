//! Handing freed heap memory back to the system, once, shortly after a burst.
//!
//! glibc keeps what a process freed in its arenas: a connection that filled the chat
//! history, or a thousand unfinished WebSocket messages, would leave the process at its
//! peak resident size long after they are gone. `malloc_trim(0)` returns the free pages.
//! It must run *after* the memory is freed, and a holder says it lets go of bytes
//! just before it drops them (an `Arc` still held by a mailbox, a buffer about to be
//! dropped by its caller). So [`freed`] only counts; once [`TRIM_AFTER`] bytes have
//! been let go it wakes one background thread, which waits [`SETTLE`] for those frees
//! to happen and then trims. One thread for the process, started on first need, asleep
//! otherwise; at most one trim per [`SETTLE`]. With jemalloc (`--features jemalloc`),
//! which returns memory by itself, and off glibc, the trim does nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Bytes let go beyond which a trim is asked for.
pub const TRIM_AFTER: usize = 8 << 20;
/// How long the trimmer waits after being asked, so the frees it was told of happen
/// first and a burst of them costs one trim.
pub const SETTLE: Duration = Duration::from_secs(1);

static FREED: AtomicUsize = AtomicUsize::new(0);
static TRIMS: AtomicUsize = AtomicUsize::new(0);
/// Whether a trim is asked for, and the trimmer's wake-up.
static WANTED: Mutex<bool> = Mutex::new(false);
static WAKE: Condvar = Condvar::new();
/// Whether the trimmer thread runs (false if it could not be started).
static STARTED: OnceLock<bool> = OnceLock::new();

/// `bytes` held for clients are being let go (they are freed now or in a moment).
/// Cheap: an atomic add, and past [`TRIM_AFTER`] a wake-up of the trimmer.
pub fn freed(bytes: usize) {
    if FREED.fetch_add(bytes, Ordering::Relaxed) + bytes < TRIM_AFTER {
        return;
    }
    FREED.store(0, Ordering::Relaxed);
    if !*STARTED.get_or_init(start) {
        return;
    }
    *WANTED.lock().unwrap_or_else(|e| e.into_inner()) = true;
    WAKE.notify_one();
}

/// Trims done so far by the background thread (for tests and metrics).
pub fn trims() -> usize {
    TRIMS.load(Ordering::Relaxed)
}

fn start() -> bool {
    let spawned = std::thread::Builder::new()
        .name("trim".into())
        .spawn(|| loop {
            {
                let mut wanted = WANTED.lock().unwrap_or_else(|e| e.into_inner());
                while !*wanted {
                    wanted = WAKE.wait(wanted).unwrap_or_else(|e| e.into_inner());
                }
                *wanted = false;
            }
            std::thread::sleep(SETTLE);
            trim();
            TRIMS.fetch_add(1, Ordering::Relaxed);
        });
    if let Err(e) = &spawned {
        tracing::warn!("cannot start the memory trimmer: {e}");
    }
    spawned.is_ok()
}

/// Returns free heap pages to the system (glibc's `malloc_trim`; elsewhere nothing).
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointer of ours
    // and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_trim_follows_enough_bytes_let_go() {
        let before = trims();
        freed(TRIM_AFTER / 2);
        freed(TRIM_AFTER / 2);
        let deadline = Instant::now() + SETTLE * 10;
        while trims() == before {
            assert!(
                Instant::now() < deadline,
                "no trim after {TRIM_AFTER} bytes let go"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
