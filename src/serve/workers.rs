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
//!
//! Each worker runs its own admin listener on consecutive ports: worker `i` on the
//! admin port plus `i` (`--admin off` turns them all off).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
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
                tracing::warn!(
                    "SIGUSR2: not supported with --processes; the workers serve on \
                     (a worker killed or stopped is restarted from the binary on disk)"
                );
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
    loop {
        let started = Instant::now();
        let mut child = match spawn(slot) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("worker {}: cannot start: {e:#}", slot.index);
                if shared.stopping.load(Ordering::SeqCst) {
                    return false;
                }
                std::thread::sleep(QUICK_DEATH);
                continue;
            }
        };
        let pid = child.id();
        *slot.pid.lock().unwrap_or_else(|p| p.into_inner()) = Some(pid);
        tracing::info!("worker {} started (PID {pid})", slot.index);
        if shared.stopping.load(Ordering::SeqCst) {
            // The signal came while this one started: it was not told.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).expect("a PID"),
                rustix::process::Signal::TERM,
            );
        }
        let status = child.wait();
        *slot.pid.lock().unwrap_or_else(|p| p.into_inner()) = None;
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

/// Starts one process of worker `slot` on its sockets, its log lines prefixed.
fn spawn(slot: &Slot) -> anyhow::Result<std::process::Child> {
    let exe = super::upgrade::binary_on_disk()?;
    let keep: Vec<RawFd> = slot.sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let mut cmd = Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(ENV_WORKER, slot.index.to_string())
        .env(inherit::ENV_FDS, inherit::env_value(&slot.sockets))
        .env_remove(super::upgrade::ENV_READY)
        // Its own process group: a terminal's Ctrl-C reaches the supervisor only, which
        // passes it on once (twice would cut the drain short).
        .process_group(0)
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only clears descriptor flags and sets
    // the parent-death signal, both async-signal-safe, and reads a vector allocated
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &keep {
                rustix::io::fcntl_setfd(
                    std::os::fd::BorrowedFd::borrow_raw(fd),
                    rustix::io::FdFlags::empty(),
                )?;
            }
            // A worker outlives no supervisor (this thread waits for it until it exits).
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            Ok(())
        });
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
