//! `serve --processes N`: a supervisor and N worker processes, the way past one
//! process's descriptor limit (each worker has its own).
//!
//! The supervisor binds, for every configured address, one `SO_REUSEPORT` socket per
//! worker (the kernel spreads new connections over them) and keeps them: worker `i`
//! inherits its own set ([`crate::model::inherit`]) and is the binary itself, started
//! with the same arguments and [`ENV_WORKER`]. A worker that dies is restarted on the
//! same sockets, so the clients queued on its socket wait for the new one instead of
//! being reset (closing one socket of a reuseport group resets its queue). The
//! supervisor prefixes each worker's log lines with `worker i:`, passes SIGTERM, SIGINT
//! and SIGHUP to every worker, and exits 0 once they have all drained and exited 0.
//! SIGUSR2 replaces the workers one by one: a new process on the same sockets, then
//! SIGUSR2 to the old one once the new one serves, which makes a worker stop accepting
//! and drain (see [`super::upgrade`]).
//!
//! Each worker runs its own admin listener on consecutive ports: worker `i` on the
//! admin port plus `i` (`--admin off` turns them all off).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{AdminAddr, ServeOptions, ServiceName};
use crate::model::inherit;

/// The environment variable that makes a process worker `i` of a supervisor.
pub const ENV_WORKER: &str = "MULTICLIENT_WORKER";

/// A worker that dies sooner than this after its start waits before it is restarted,
/// so a worker that cannot start does not spin.
const QUICK_DEATH: Duration = Duration::from_secs(1);

/// This process's worker number, if a supervisor started it.
pub fn worker_index() -> Option<usize> {
    std::env::var(ENV_WORKER).ok()?.parse().ok()
}

/// Adapts the options of worker `index`: its admin listener on the admin port plus
/// `index`.
pub fn as_worker(opts: &mut ServeOptions, index: usize) {
    let offset = |addr: SocketAddr| -> AdminAddr {
        let mut a = addr;
        if a.port() != 0 {
            a.set_port(a.port().saturating_add(index as u16));
        }
        AdminAddr::At(a)
    };
    opts.admin = match opts.admin {
        AdminAddr::Off => AdminAddr::Off,
        AdminAddr::At(addr) => offset(addr),
        AdminAddr::Default if index == 0 => AdminAddr::Default,
        AdminAddr::Default => match offset(super::admin::DEFAULT_ADDR.parse().expect("valid")) {
            // Like the default, skipped with a warning if taken.
            AdminAddr::At(a) => {
                if std::net::TcpListener::bind(a).is_ok() {
                    AdminAddr::At(a)
                } else {
                    tracing::warn!("No admin listener: {a} is taken");
                    AdminAddr::Off
                }
            }
            other => other,
        },
    };
}

/// One worker slot: the sockets its processes inherit and its current PID.
struct Slot {
    index: usize,
    sockets: Vec<(SocketAddr, OwnedFd)>,
    pid: Mutex<Option<u32>>,
    /// The replacement an upgrade started, which the monitor follows once the
    /// process it waits for has drained.
    next: Mutex<Option<Child>>,
}

/// What the workers' monitors share with the signal loop.
struct Shared {
    stopping: AtomicBool,
    restarts: AtomicU64,
}

/// Runs `n` workers of `opts` until a signal, then waits for them to drain. Returns
/// the exit status: 0 when every worker exited 0.
pub fn supervise(opts: &ServeOptions, n: usize) -> anyhow::Result<i32> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
    let chat = opts
        .services
        .iter()
        .chain(&opts.tls_services)
        .any(|&(name, _)| {
            name == ServiceName::Chat
                || (name == ServiceName::Http && ServiceName::Chat.runs_under(opts.model))
        });
    if chat && opts.service.chat.redis.is_none() {
        bail!(
            "--processes {n} serves the chat (the chat service, or http's /chat) from {n} \
             separate processes: give them one chat with --redis URL, or leave the chat out \
             (--service NAME for the others)"
        );
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2])
        .context("installing signal handlers")?;
    let addrs: Vec<SocketAddr> = opts
        .services
        .iter()
        .chain(&opts.tls_services)
        .map(|&(_, a)| a)
        .collect();
    let mut sets: Vec<Vec<(SocketAddr, OwnedFd)>> = (0..n).map(|_| Vec::new()).collect();
    for &asked in &addrs {
        let mut at = asked;
        for set in sets.iter_mut() {
            let socket = bind_reuseport(at, opts.limits.backlog)
                .with_context(|| format!("cannot listen on {at}"))?;
            at = socket.local_addr()?;
            set.push((asked, OwnedFd::from(socket)));
        }
        tracing::info!("Listening on {at} ({n} reuseport sockets, one per worker)");
    }
    let shared = Arc::new(Shared {
        stopping: AtomicBool::new(false),
        restarts: AtomicU64::new(0),
    });
    let slots: Vec<Arc<Slot>> = sets
        .into_iter()
        .enumerate()
        .map(|(index, sockets)| {
            Arc::new(Slot {
                index,
                sockets,
                pid: Mutex::new(None),
                next: Mutex::new(None),
            })
        })
        .collect();
    let monitors: Vec<_> = slots
        .iter()
        .map(|slot| {
            let (slot, shared) = (slot.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("worker-{}", slot.index))
                .spawn(move || monitor(&slot, &shared))
        })
        .collect::<Result<_, _>>()?;
    // Upgrades run on a thread that lives as long as this process: the replacements
    // it starts get SIGTERM when the thread that started them ends.
    let (upgrades, requests) = std::sync::mpsc::channel::<()>();
    {
        let (slots, shared) = (slots.clone(), shared.clone());
        std::thread::Builder::new()
            .name("upgrade".into())
            .spawn(move || {
                while requests.recv().is_ok() {
                    // Signals that came during one upgrade ask for no second one.
                    while requests.try_recv().is_ok() {}
                    replace_all(&slots, &shared);
                }
            })?;
    }
    let send = |sig: rustix::process::Signal| {
        for slot in &slots {
            if let Some(pid) = *slot.pid.lock().unwrap_or_else(|p| p.into_inner()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, sig);
                }
            }
        }
    };
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                tracing::info!("SIGHUP: passed to every worker");
                send(rustix::process::Signal::HUP);
            }
            SIGUSR2 => {
                tracing::info!("SIGUSR2: replacing every worker, one after another");
                let _ = upgrades.send(());
            }
            _ if !shared.stopping.swap(true, Ordering::SeqCst) => {
                tracing::info!(
                    "Signal {sig}: every worker shuts down gracefully (again to exit at once)"
                );
                send(rustix::process::Signal::TERM);
                break;
            }
            _ => {}
        }
    }
    // A second signal while the workers drain: they exit at once, and so does this.
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                tracing::warn!("Second signal: every worker exits now");
                std::process::exit(super::EXIT_INTERRUPTED);
            }
        });
    let mut ok = true;
    for m in monitors {
        ok &= m.join().unwrap_or(false);
    }
    let restarts = shared.restarts.load(Ordering::Relaxed);
    tracing::info!("All workers exited ({restarts} restarts)");
    Ok(if ok { 0 } else { 1 })
}

/// Keeps worker `slot` running until the supervisor stops; returns whether its last
/// process exited 0.
fn monitor(slot: &Slot, shared: &Shared) -> bool {
    let mut adopted: Option<Child> = None;
    loop {
        let started = Instant::now();
        let mut child = match adopted.take() {
            Some(child) => child,
            None => match spawn(slot, None) {
                Ok(child) => {
                    let pid = child.id();
                    *lock(&slot.pid) = Some(pid);
                    tracing::info!("worker {} started (PID {pid})", slot.index);
                    if shared.stopping.load(Ordering::SeqCst) {
                        // The signal came while this one started: it was not told.
                        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                            let _ =
                                rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                        }
                    }
                    child
                }
                Err(e) => {
                    tracing::error!("worker {}: cannot start: {e:#}", slot.index);
                    if shared.stopping.load(Ordering::SeqCst) {
                        return false;
                    }
                    std::thread::sleep(QUICK_DEATH);
                    continue;
                }
            },
        };
        let pid = child.id();
        let status = child.wait();
        if let Some(next) = lock(&slot.next).take() {
            tracing::info!(
                "worker {} (PID {pid}) handed over to PID {} and exited",
                slot.index,
                next.id()
            );
            adopted = Some(next);
            continue;
        }
        {
            let mut current = lock(&slot.pid);
            if *current == Some(pid) {
                *current = None;
            }
        }
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("worker {} (PID {pid}): {e}", slot.index);
                return false;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            tracing::info!("worker {} (PID {pid}) exited: {status}", slot.index);
            return status.success();
        }
        let n = shared.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        let how = match status.signal() {
            Some(sig) => format!("killed by signal {sig}"),
            None => format!("{status}"),
        };
        tracing::warn!(
            "worker {} (PID {pid}) died ({how}); restarting it ({n} restarts so far)",
            slot.index
        );
        if started.elapsed() < QUICK_DEATH {
            std::thread::sleep(QUICK_DEATH);
        }
    }
}

/// SIGUSR2: each worker in turn is replaced by a new process of the binary on disk on
/// the same sockets; once the new one is ready the old one is sent SIGUSR2, stops
/// accepting and drains. A replacement that fails stops the upgrade there.
fn replace_all(slots: &[Arc<Slot>], shared: &Shared) {
    for slot in slots {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Some(old) = *lock(&slot.pid) else {
            tracing::warn!("worker {}: not running; not replaced", slot.index);
            continue;
        };
        match replace(slot) {
            Ok(child) => {
                let new = child.id();
                *lock(&slot.next) = Some(child);
                *lock(&slot.pid) = Some(new);
                tracing::info!(
                    "worker {}: PID {new} is ready; PID {old} stops accepting and drains",
                    slot.index
                );
                if let Some(pid) = rustix::process::Pid::from_raw(old as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::USR2);
                }
            }
            Err(e) => {
                tracing::error!(
                    "worker {}: upgrade failed, the workers serve on: {e:#}",
                    slot.index
                );
                return;
            }
        }
    }
}

/// Starts a replacement for `slot` and waits until it serves.
fn replace(slot: &Slot) -> anyhow::Result<Child> {
    let (reader, writer) =
        std::os::unix::net::UnixStream::pair().context("creating the readiness pipe")?;
    let mut child = spawn(slot, Some(&writer))?;
    drop(writer);
    match super::upgrade::wait_ready(reader, &mut child, super::upgrade::READY_TIMEOUT) {
        Ok(()) => Ok(child),
        Err(e) => {
            // A process this one started: stop it and reap it.
            let _ = child.kill();
            let _ = child.wait();
            Err(e.context(format!("new process {}", child.id())))
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts one process of worker `slot` on its sockets, its log lines prefixed; with
/// `ready`, the descriptor on which it says it serves.
fn spawn(slot: &Slot, ready: Option<&std::os::unix::net::UnixStream>) -> anyhow::Result<Child> {
    let exe = super::upgrade::binary_on_disk()?;
    let mut keep: Vec<RawFd> = slot.sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    keep.extend(ready.map(|r| r.as_raw_fd()));
    let mut cmd = Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(ENV_WORKER, slot.index.to_string())
        .env(inherit::ENV_FDS, inherit::env_value(&slot.sockets))
        .env_remove(super::upgrade::ENV_READY)
        // Its own process group: a terminal's Ctrl-C reaches the supervisor only, which
        // passes it on once (twice would cut the drain short).
        .process_group(0)
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only clears descriptor flags, blocks
    // signals and sets the parent-death signal, all async-signal-safe, and reads a vector allocated
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &keep {
                rustix::io::fcntl_setfd(
                    std::os::fd::BorrowedFd::borrow_raw(fd),
                    rustix::io::FdFlags::empty(),
                )?;
            }
            // Signals wait until the worker handles them (see super::sigmask).
            super::sigmask::block_in_child()?;
            // A worker outlives no supervisor (this thread waits for it until it exits).
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            Ok(())
        });
    }
    if let Some(r) = ready {
        cmd.env(super::upgrade::ENV_READY, r.as_raw_fd().to_string());
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stderr = child.stderr.take().expect("piped");
    let index = slot.index;
    std::thread::Builder::new()
        .name(format!("worker-{index}-log"))
        .spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(std::io::stderr().lock(), "{}", name_line(index, &line));
            }
        })?;
    Ok(child)
}

/// A worker's log line, named: `worker i: ` before a text line, a `"worker":i` field
/// first in a JSON one.
fn name_line(index: usize, line: &str) -> String {
    match line.strip_prefix('{') {
        Some(rest) => format!("{{\"worker\":{index},{rest}"),
        None => format!("worker {index}: {line}"),
    }
}

/// A listening socket that other sockets may share its address with (`SO_REUSEPORT`).
fn bind_reuseport(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::name_line;

    #[test]
    fn a_worker_log_line_is_named_in_text_and_in_json() {
        assert_eq!(name_line(2, "INFO hello"), "worker 2: INFO hello");
        assert_eq!(
            name_line(1, "{\"level\":\"INFO\"}"),
            "{\"worker\":1,\"level\":\"INFO\"}"
        );
    }
}
