//! The blocking side shared by `single`, `threads` and `pool`: an accept that wakes
//! on shutdown, and a connection driver for a thread of its own.
//!
//! The thread sleeps in `poll(2)` on the socket, the shutdown eventfd and, once the
//! session has one, its mailbox's eventfd, with the connection's next deadline as the
//! timeout: a thread blocked on a silent client still wakes for a chat message, a
//! timer or a shutdown, and never busy-polls.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use super::conn::{Conn, Phase, Read_};
use super::{accept_backoff, next_conn_id, Ctx, BACKOFF_START};
use crate::base::mailbox::WakeKind;
use crate::base::Clock;
use crate::service::{ConnInfo, Service};

/// Read buffer of a blocking connection, on its thread's stack.
const SCRATCH: usize = 4 * 1024;
/// Stack of a connection thread: small, so that thousands of them fit.
pub(crate) const STACK: usize = 256 * 1024;

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// Accepts one connection if one is waiting, without blocking.
pub(crate) fn accept_now(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let flags = rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK;
    let (fd, addr) = rustix::net::acceptfrom_with(listener, flags)?;
    let stream = TcpStream::from(fd);
    let peer = addr
        .and_then(|a| SocketAddr::try_from(a).ok())
        .or_else(|| stream.peer_addr().ok())
        .unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
    let _ = stream.set_nodelay(true);
    Ok((stream, peer))
}

/// Waits for the next client. Once the drain has started it only returns the clients
/// already waiting in the backlog (so their messages are answered, not reset), then
/// `None`.
///
/// It tries `accept` before sleeping in `poll`: under a burst the backlog holds many
/// clients, and each is taken with one system call instead of two; `poll` is only
/// reached when the backlog is empty.
pub(crate) fn accept<S: Service>(
    listener: &TcpListener,
    ctx: &Ctx<S>,
    backoff: &mut Duration,
) -> Option<(TcpStream, SocketAddr)> {
    let drain = &ctx.drain;
    loop {
        if drain.is_started() {
            return accept_now(listener).ok();
        }
        match accept_now(listener) {
            Ok(conn) => {
                *backoff = BACKOFF_START;
                return Some(conn);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                if let Some(wait) = accept_backoff(&e, &ctx.stats, backoff) {
                    let mut fds = [PollFd::from_borrowed_fd(drain.fd(), PollFlags::IN)];
                    let _ = rustix::event::poll(&mut fds, Some(&timespec(wait)));
                }
                continue;
            }
        }
        let mut fds = [
            PollFd::from_borrowed_fd(listener.as_fd(), PollFlags::IN),
            PollFd::from_borrowed_fd(drain.fd(), PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::error!("poll on listener failed: {e}");
                return None;
            }
        }
    }
}

/// Serves one connection on the calling thread until it ends. `refused` connections
/// are only told why (the service's busy goodbye) and closed. A panic in the session
/// ends this connection only: the thread (a pool worker, the single server's only
/// thread) goes on serving.
pub(crate) fn serve<S: Service>(stream: TcpStream, peer: SocketAddr, ctx: &Ctx<S>, refused: bool) {
    let run = std::panic::AssertUnwindSafe(|| serve_inner(stream, peer, ctx, refused));
    if std::panic::catch_unwind(run).is_err() {
        tracing::error!(%peer, "session panicked; connection closed");
    }
}

fn serve_inner<S: Service>(stream: TcpStream, peer: SocketAddr, ctx: &Ctx<S>, refused: bool) {
    let id = next_conn_id();
    let info = ConnInfo { id, peer };
    let _live = ctx.drain.live();
    let mut conn = ctx.open(info, WakeKind::Fd, refused);
    let mut scratch = [0u8; SCRATCH];
    if let Err(e) = drive(&stream, &mut conn, ctx, &mut scratch) {
        tracing::error!("poll failed: {e}");
    }
}

fn drive<S: Service>(
    sock: &TcpStream,
    conn: &mut Conn<S::Session>,
    ctx: &Ctx<S>,
    scratch: &mut [u8],
) -> io::Result<()> {
    let drain = &ctx.drain;
    loop {
        let now = Instant::now();
        let clock = Clock::at(now);
        conn.flush(sock, &clock);
        if conn.phase() == Phase::Done {
            return Ok(());
        }
        let mut sock_events = PollFlags::empty();
        if conn.wants_read() {
            sock_events |= PollFlags::IN;
        }
        if conn.wants_write() {
            sock_events |= PollFlags::OUT;
        }
        let watch_drain = !conn.is_draining();
        if conn.mail_waiting() {
            conn.on_mail(&clock);
            continue;
        }
        let mailbox = conn.mailbox().cloned();
        let mut fds = [
            PollFd::from_borrowed_fd(sock.as_fd(), sock_events),
            PollFd::from_borrowed_fd(
                drain.fd(),
                if watch_drain {
                    PollFlags::IN
                } else {
                    PollFlags::empty()
                },
            ),
            PollFd::from_borrowed_fd(drain.fd(), PollFlags::empty()),
        ];
        if let Some(fd) = mailbox.as_ref().and_then(|m| m.fd()) {
            fds[2] = PollFd::from_borrowed_fd(fd, PollFlags::IN);
        }
        let deadline = conn.next_deadline();
        let wait = deadline.saturating_duration_since(now);
        match rustix::event::poll(&mut fds, Some(&timespec(wait))) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let clock = Clock::lazy();
        let sock_ready = fds[0].revents();
        let drain_ready = watch_drain && !fds[1].revents().is_empty();
        let mail_ready = !fds[2].revents().is_empty();
        if mail_ready {
            conn.on_mail(&clock);
        }
        if !sock_ready.is_empty() && conn.wants_read() {
            // Backpressure holds within a burst too: stop once replies pile up.
            while let Read_::Data { more: true } = conn.read_from(sock, scratch, &clock) {
                if !conn.wants_read() {
                    break;
                }
            }
        } else if sock_ready.intersects(PollFlags::ERR | PollFlags::HUP) {
            // Both directions are gone while we were not reading: nothing more can be
            // read or delivered.
            conn.hang_up();
        }
        if drain_ready {
            conn.drain(sock, scratch, &clock);
        }
        conn.tick(sock, &clock);
    }
}
