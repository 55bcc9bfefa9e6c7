//! SIGUSR2: a zero-downtime upgrade, as nginx, HAProxy and Envoy do it.
//!
//! The running process starts the binary on disk with its own arguments as a new
//! process that inherits every listening socket, the admin listener's included
//! ([`crate::model::inherit`]), and one end of a socket pair (the readiness pipe). The
//! new process takes the sockets instead of binding, starts, and writes one byte to
//! the pipe once it serves. Only then does
//! the old process stop accepting: its accept loops end and leave the shared accept
//! queue to the new process, so no client connecting during the swap is refused or
//! reset. Its open connections go on being served until they close by themselves, and
//! those still open after `--shutdown-timeout` get the shutdown goodbye; then it exits
//! 0. If the new process exits, closes the pipe or is not ready within
//! [`READY_TIMEOUT`], the old process logs it, kills it if it still runs, and carries
//! on serving; another SIGUSR2 tries again.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::model::drain::Drain;
use crate::model::inherit;

/// The environment variable naming the descriptor on which the new process says it
/// is ready.
pub const ENV_READY: &str = "MULTICLIENT_UPGRADE_READY";

/// How long the new process has to start serving before the old one gives up on it.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The byte the new process writes once it serves.
const READY: u8 = b'R';

/// Runs upgrades for one server: at most one at a time.
#[derive(Clone)]
pub struct Upgrader {
    drain: Drain,
    /// The shutdown timeout in force when the hand-over starts (a reload may have
    /// changed it since the server started).
    shutdown_timeout: Arc<dyn Fn() -> Duration + Send + Sync>,
    busy: Arc<AtomicBool>,
}

impl Upgrader {
    /// An upgrader that hands over from the server of `drain`, its clients given
    /// `shutdown_timeout()` (read when the hand-over starts) to leave.
    pub fn new(
        drain: Drain,
        shutdown_timeout: impl Fn() -> Duration + Send + Sync + 'static,
    ) -> Upgrader {
        Upgrader {
            drain,
            shutdown_timeout: Arc::new(shutdown_timeout),
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    /// SIGUSR2: starts the new process and, once it is ready, drains this one; on a
    /// thread of its own, so that the signal loop goes on answering SIGTERM.
    pub fn start(&self) {
        if self.drain.is_started() {
            tracing::warn!("SIGUSR2: already shutting down; no upgrade");
            return;
        }
        if self.busy.swap(true, Ordering::SeqCst) {
            tracing::warn!("SIGUSR2: an upgrade is already under way");
            return;
        }
        let this = self.clone();
        if super::workers::worker_index().is_some() {
            // A worker's supervisor started its replacement, which serves already.
            let spawned = std::thread::Builder::new()
                .name("upgrade".into())
                .spawn(move || this.hand_over(None));
            if let Err(e) = spawned {
                tracing::error!("SIGUSR2: no thread to hand over: {e}");
            }
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("upgrade".into())
            .spawn(move || match start_new() {
                Ok(pid) => this.hand_over(Some(pid)),
                Err(e) => {
                    // Free before the log line: a SIGUSR2 sent by someone who read it
                    // tries again rather than finding an upgrade "under way".
                    this.busy.store(false, Ordering::SeqCst);
                    tracing::error!("SIGUSR2: upgrade failed, serving on: {e:#}");
                }
            });
        if let Err(e) = spawned {
            self.busy.store(false, Ordering::SeqCst);
            tracing::error!("SIGUSR2: upgrade failed, serving on: no thread: {e}");
        }
    }

    /// The new process serves: stop accepting, let the clients finish within the
    /// shutdown timeout, then say goodbye to those left (which ends [`run`](super::run)).
    fn hand_over(&self, pid: Option<u32>) {
        match pid {
            Some(pid) => tracing::info!(
                "SIGUSR2: new process {pid} is ready; process {} stops accepting and drains",
                std::process::id()
            ),
            None => tracing::info!(
                "SIGUSR2: replaced by the supervisor; process {} stops accepting and drains",
                std::process::id()
            ),
        }
        self.drain.stop_accepting();
        let left = self
            .drain
            .wait_idle(Instant::now() + (self.shutdown_timeout)());
        if left > 0 {
            tracing::info!("{left} connections still open after the shutdown timeout");
        }
        self.drain.start();
    }
}

/// Starts the binary on disk with this process's arguments and listening sockets, and
/// waits until it says it is ready. Returns its PID.
fn start_new() -> anyhow::Result<u32> {
    let exe = binary_on_disk()?;
    let sockets = inherit::listening();
    if sockets.is_empty() {
        bail!("no listening socket to hand over");
    }
    let (reader, writer) =
        std::os::unix::net::UnixStream::pair().context("creating the readiness pipe")?;
    let mut keep: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    keep.push(writer.as_raw_fd());
    let mut cmd = Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(inherit::ENV_FDS, inherit::env_value(&sockets))
        .env(ENV_READY, writer.as_raw_fd().to_string());
    // SAFETY: between fork and exec the closure only clears a descriptor flag and
    // blocks signals, both async-signal-safe, and reads a vector allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &keep {
                rustix::io::fcntl_setfd(BorrowedFd::borrow_raw(fd), rustix::io::FdFlags::empty())?;
            }
            super::sigmask::block_in_child()
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    drop(writer);
    drop(sockets);
    tracing::info!(
        "SIGUSR2: started {} as process {}; waiting until it is ready",
        exe.display(),
        child.id()
    );
    match wait_ready(reader, &mut child, READY_TIMEOUT) {
        Ok(()) => Ok(child.id()),
        Err(e) => {
            // A process this one started: stop it and reap it.
            let _ = child.kill();
            let _ = child.wait();
            Err(e.context(format!("new process {}", child.id())))
        }
    }
}

/// Waits for the ready byte on `reader`, while `child` runs, until `timeout`.
pub(crate) fn wait_ready(
    mut reader: std::os::unix::net::UnixStream,
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<()> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited ({status}) before it was ready");
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("not ready within {timeout:?}");
        }
        let wait = (deadline - now).min(Duration::from_millis(200));
        let ts = Timespec {
            tv_sec: wait.as_secs() as _,
            tv_nsec: wait.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(&reader, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => bail!("poll on the readiness pipe: {e}"),
        }
        let mut byte = [0u8; 1];
        match reader.read(&mut byte) {
            Ok(1) if byte[0] == READY => return Ok(()),
            Ok(_) => bail!("closed its readiness pipe without being ready"),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => bail!("reading the readiness pipe: {e}"),
        }
    }
}

/// The executable on disk: the path this process was started from, even if that file
/// was replaced since (which is the point of an upgrade).
pub(crate) fn binary_on_disk() -> anyhow::Result<PathBuf> {
    let link = std::fs::read_link("/proc/self/exe")
        .or_else(|_| std::env::current_exe())
        .context("finding the executable")?;
    let s = link.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => link,
    })
}

/// Called once the server serves: if an upgrading process started this one, tells it
/// so, and closes the inherited sockets no listener took.
pub fn notify_ready() {
    inherit::close_unused();
    let Ok(value) = std::env::var(ENV_READY) else {
        return;
    };
    let Ok(raw) = value.parse::<RawFd>() else {
        tracing::warn!("{ENV_READY}={value:?} is not a descriptor; ignored");
        return;
    };
    // SAFETY: only inspected while borrowed.
    let open = raw > 2 && rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(raw) }).is_ok();
    if !open {
        tracing::warn!("{ENV_READY}: descriptor {raw} is not open; ignored");
        return;
    }
    // SAFETY: the upgrading process left this pipe open for this one, and nothing
    // else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    match rustix::io::write(fd.as_fd(), &[READY]) {
        Ok(_) => tracing::info!("Ready: told the previous process to hand over"),
        Err(e) => tracing::warn!("could not tell the previous process we are ready: {e}"),
    }
}
