//! Listening sockets handed from one process to the next (the SIGUSR2 upgrade): a
//! process records the address each of its listeners was asked for, an upgrade passes
//! the listening descriptors to the new process over `exec`, and the new process takes
//! them instead of binding.
//!
//! Both processes then hold the same socket, with one accept queue: a client connecting
//! during the swap waits in that queue until one of them accepts it, and is never
//! refused, as with nginx's `NGINX` variable and systemd's `LISTEN_FDS`. The sockets
//! are named in [`ENV_FDS`] as `ASKED=FD` pairs, the address the listener was asked
//! for (so `127.0.0.1:0` in the arguments of both processes names the same socket)
//! and the descriptor number, which the new process checks is a listening socket
//! before it owns it.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// The environment variable naming the inherited listening sockets.
pub const ENV_FDS: &str = "MULTICLIENT_LISTEN_FDS";

/// Every listener bound in this process: the address asked for and the one bound.
static BOUND: Mutex<Vec<(SocketAddr, SocketAddr)>> = Mutex::new(Vec::new());

/// The sockets named in [`ENV_FDS`] and not taken yet (read at the first bind).
static INHERITED: Mutex<Option<Vec<(SocketAddr, OwnedFd)>>> = Mutex::new(None);

/// Records that the listener asked for `asked` listens on `local`.
pub(crate) fn record(asked: SocketAddr, local: SocketAddr) {
    lock(&BOUND).push((asked, local));
}

/// The socket inherited for `asked`, if the previous process passed one: the first
/// not taken yet, now close-on-exec again.
pub(crate) fn take(asked: SocketAddr) -> Option<TcpListener> {
    let mut inherited = lock(&INHERITED);
    let list = inherited.get_or_insert_with(from_env);
    let i = list.iter().position(|(a, _)| *a == asked)?;
    let (_, fd) = list.remove(i);
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    tracing::info!("{asked}: listening socket inherited, not bound");
    Some(TcpListener::from(fd))
}

/// Closes the inherited sockets that no listener took (a listener the new
/// configuration no longer has), so their clients are refused rather than left queued.
pub fn close_unused() {
    let mut inherited = lock(&INHERITED);
    let list = inherited.get_or_insert_with(from_env);
    for (asked, _) in list.drain(..) {
        tracing::info!("{asked}: inherited listening socket not used; closed");
    }
}

/// The listeners of this process still open, each with the address it was asked for,
/// as descriptors of their own (close-on-exec) to hand to a new process.
pub fn listening() -> Vec<(SocketAddr, OwnedFd)> {
    let bound = lock(&BOUND).clone();
    let mut found: Vec<(SocketAddr, usize, OwnedFd)> = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(raw) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: borrowed only to duplicate it; a descriptor closed meanwhile fails
        // the duplication, and the duplicate is checked for what it is below.
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        let Ok(fd) = borrowed.try_clone_to_owned() else {
            continue;
        };
        let Some(local) = listening_addr(fd.as_fd()) else {
            continue;
        };
        let Some(at) = bound.iter().rposition(|(_, l)| *l == local) else {
            continue;
        };
        if !found.iter().any(|&(_, b, _)| b == at) {
            found.push((bound[at].0, at, fd));
        }
    }
    // In the order they were bound, which is the order the new process binds in: two
    // listeners asked for the same address (`127.0.0.1:0` twice) get their own back.
    found.sort_by_key(|&(_, at, _)| at);
    found
        .into_iter()
        .map(|(asked, _, fd)| (asked, fd))
        .collect()
}

/// The value of [`ENV_FDS`] for `sockets` (descriptor numbers as in this process;
/// the caller keeps them open without close-on-exec in the new process).
pub fn env_value(sockets: &[(SocketAddr, OwnedFd)]) -> String {
    use std::os::fd::AsRawFd;
    sockets
        .iter()
        .map(|(asked, fd)| format!("{asked}={}", fd.as_raw_fd()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The local address of `fd` if it is a listening TCP socket.
fn listening_addr(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    if !rustix::net::sockopt::socket_acceptconn(fd).ok()? {
        return None;
    }
    if rustix::net::sockopt::socket_type(fd).ok()? != rustix::net::SocketType::STREAM {
        return None;
    }
    SocketAddr::try_from(rustix::net::getsockname(fd).ok()?).ok()
}

/// Parses [`ENV_FDS`]; an entry that does not name a listening TCP socket is logged
/// and skipped (never owned, so a stray variable cannot close someone else's file).
fn from_env() -> Vec<(SocketAddr, OwnedFd)> {
    match std::env::var(ENV_FDS) {
        Ok(value) => parse_fds(&value),
        Err(_) => Vec::new(),
    }
}

/// [`from_env`] on the variable's value.
fn parse_fds(value: &str) -> Vec<(SocketAddr, OwnedFd)> {
    use std::os::fd::AsRawFd;
    let mut list = Vec::new();
    for item in value.split(',').filter(|s| !s.is_empty()) {
        let parsed = item
            .rsplit_once('=')
            .and_then(|(a, f)| Some((a.parse::<SocketAddr>().ok()?, f.parse::<RawFd>().ok()?)));
        let Some((asked, raw)) = parsed else {
            tracing::warn!("{ENV_FDS}: {item:?} is not ADDR=FD; ignored");
            continue;
        };
        if list
            .iter()
            .any(|(_, fd): &(SocketAddr, OwnedFd)| fd.as_raw_fd() == raw)
        {
            // Owned once already: a second owner would close it twice.
            tracing::warn!("{ENV_FDS}: descriptor {raw} named twice; {item:?} ignored");
            continue;
        }
        match check(raw) {
            Ok(()) => {
                // SAFETY: the previous process left this descriptor open for this one,
                // and it is a listening socket no other part of this process owns.
                list.push((asked, unsafe { OwnedFd::from_raw_fd(raw) }));
            }
            Err(why) => tracing::warn!("{ENV_FDS}: descriptor {raw} for {asked}: {why}; ignored"),
        }
    }
    list
}

fn check(raw: RawFd) -> Result<(), String> {
    if raw < 3 {
        return Err("not a socket descriptor".into());
    }
    // SAFETY: only inspected while borrowed; see `from_env`.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_getfd(fd).map_err(|e| format!("not open ({e})"))?;
    listening_addr(fd)
        .map(|_| ())
        .ok_or_else(|| "not a listening TCP socket".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds through `bind` unless a socket for `asked` was inherited, and records it.
pub(crate) fn bind_or_take(
    asked: SocketAddr,
    bind: impl FnOnce() -> io::Result<TcpListener>,
) -> io::Result<TcpListener> {
    let listener = match take(asked) {
        Some(l) => l,
        None => bind()?,
    };
    record(asked, listener.local_addr()?);
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn a_descriptor_named_twice_is_owned_once() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // Ownership passes to what `parse_fds` returns, as from a previous process.
        let raw = l.into_raw_fd();
        let list = parse_fds(&format!("{addr}={raw},127.0.0.1:1={raw}"));
        assert_eq!(list.len(), 1, "two owners would close it twice");
        assert_eq!(list[0].0, addr);
        assert_eq!(list[0].1.as_raw_fd(), raw);
    }

    #[test]
    fn entries_that_are_not_listening_sockets_are_skipped() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let list = parse_fds(&format!(
            "127.0.0.1:1={},nonsense,127.0.0.1:2=2",
            s.as_raw_fd()
        ));
        assert!(list.is_empty());
    }
}
