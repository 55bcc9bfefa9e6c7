//! The blocking side shared by `single`, `threads` and `pool`: an accept that wakes
//! on shutdown, and a connection driver for a thread of its own.
//!
//! The thread sleeps in `poll(2)` on the socket, the shutdown eventfd and, once the
//! session has one, its mailbox's eventfd, with the connection's next deadline as the
//! timeout: a thread blocked on a silent client still wakes for a chat message, a
//! timer or a shutdown, and never busy-polls.
//!
//! Once the drain has started, `single` and `pool` stop giving a thread to one client
//! at a time: each connection, once told goodbye, is parked in a [`Finishing`] set
//! that one `poll(2)` drives for all of them, and the thread takes the next client
//! from the backlog or the queue. One client that keeps its socket open (a lingering
//! close waits up to two seconds for its EOF) would otherwise hold up every client
//! behind it: measured before, `single` with 12 waiting clients answered 4 and cut
//! the rest off at the shutdown timeout; 500 clients took 13.3 s.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use super::conn::{Conn, Phase};
use super::drain::Live;
use super::sock::{self, Read_};
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
/// `None`; once the listeners are handed over to another process, `None` at once.
///
/// It tries `accept` before sleeping in `poll`: under a burst the backlog holds many
/// clients, and each is taken with one system call instead of two; `poll` is only
/// reached when the backlog is empty.
pub(crate) fn accept<S: Service>(
    listener: &TcpListener,
    ctx: &Ctx<S>,
    backoff: &mut Duration,
) -> Option<(TcpStream, SocketAddr)> {
    // The listener's own signal: the server's drain, or this listener removed.
    let drain = &ctx.stop;
    loop {
        if drain.is_accept_stopped() {
            // Handed over to another process (`Drain::stop_accepting`): the clients
            // queued are its to take.
            return if drain.is_started() {
                accept_now(listener).ok()
            } else {
                None
            };
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
                    let mut fds = [PollFd::from_borrowed_fd(drain.accept_fd(), PollFlags::IN)];
                    let _ = rustix::event::poll(&mut fds, Some(&timespec(wait)));
                }
                continue;
            }
        }
        let mut fds = [
            PollFd::from_borrowed_fd(listener.as_fd(), PollFlags::IN),
            PollFd::from_borrowed_fd(drain.accept_fd(), PollFlags::IN),
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
    serve_caught(stream, peer, ctx, refused, false);
}

/// Serves one admitted connection until it ends, or until the drain has started and
/// it has been told goodbye: it is then handed back to be finished in a
/// [`Finishing`] set, so that this thread can take the next waiting client.
pub(crate) fn serve_or_park<S: Service>(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &Ctx<S>,
) -> Option<Parked<S>> {
    serve_caught(stream, peer, ctx, false, true)
}

fn serve_caught<S: Service>(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &Ctx<S>,
    refused: bool,
    park: bool,
) -> Option<Parked<S>> {
    let run = std::panic::AssertUnwindSafe(|| serve_inner(stream, peer, ctx, refused, park));
    match std::panic::catch_unwind(run) {
        Ok(parked) => parked,
        Err(_) => {
            tracing::error!(%peer, "session panicked; connection closed");
            None
        }
    }
}

fn serve_inner<S: Service>(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &Ctx<S>,
    refused: bool,
    park: bool,
) -> Option<Parked<S>> {
    let id = next_conn_id();
    let info = ConnInfo { id, peer };
    let live = ctx.drain.live();
    let mut conn = ctx.open(info, WakeKind::Fd, refused);
    let mut scratch = [0u8; SCRATCH];
    match drive(&stream, &mut conn, ctx, &mut scratch, park) {
        Ok(true) => Some(Parked {
            sock: stream,
            conn,
            _live: live,
        }),
        Ok(false) => None,
        Err(e) => {
            tracing::error!("poll failed: {e}");
            None
        }
    }
}

/// A connection told goodbye at shutdown, waiting in a [`Finishing`] set for its
/// last bytes to go out and its client's EOF.
pub(crate) struct Parked<S: Service> {
    sock: TcpStream,
    conn: Conn<S::Session>,
    /// Counted by the drain until finished.
    _live: Live,
}

/// Connections told goodbye at shutdown, finished together by one thread: one
/// `poll(2)` over all their sockets and mailboxes, the same steps as a connection's
/// own loop in [`drive`].
pub(crate) struct Finishing<S: Service> {
    conns: Vec<Parked<S>>,
}

impl<S: Service> Default for Finishing<S> {
    fn default() -> Self {
        Finishing { conns: Vec::new() }
    }
}

impl<S: Service> Finishing<S> {
    /// Takes a parked connection and sends what it can at once.
    pub(crate) fn push(&mut self, parked: Parked<S>, ctx: &Ctx<S>) {
        self.conns.push(parked);
        self.turn(ctx, Some(Duration::ZERO));
    }

    /// Drives every parked connection until each has finished (each is bounded by its
    /// own lingering, write-stall and goodbye timers).
    pub(crate) fn run(&mut self, ctx: &Ctx<S>) {
        while !self.conns.is_empty() {
            self.turn(ctx, None);
        }
    }

    /// One round: writes, ends finished connections, waits at most `wait` (or until
    /// the earliest deadline) for any of them, and handles what came.
    fn turn(&mut self, ctx: &Ctx<S>, wait: Option<Duration>) {
        let run = std::panic::AssertUnwindSafe(|| self.turn_inner(ctx, wait));
        if std::panic::catch_unwind(run).is_err() {
            // Which session panicked is unknown: end them all rather than spin on it.
            tracing::error!(
                "session panicked while finishing; closing {} connections",
                self.conns.len()
            );
            for _ in self.conns.drain(..) {
                ctx.release();
            }
        }
    }

    fn turn_inner(&mut self, ctx: &Ctx<S>, wait: Option<Duration>) {
        let now = Instant::now();
        let clock = Clock::at(now);
        let mut i = 0;
        while i < self.conns.len() {
            let p = &mut self.conns[i];
            sock::flush(&mut p.conn, &p.sock, &clock);
            if p.conn.mail_waiting() {
                p.conn.on_mail(&clock);
                continue;
            }
            if p.conn.phase() == Phase::Done {
                self.conns.swap_remove(i);
                ctx.release();
            } else {
                i += 1;
            }
        }
        if self.conns.is_empty() {
            return;
        }
        let mailboxes: Vec<_> = self
            .conns
            .iter()
            .map(|p| p.conn.mailbox().cloned())
            .collect();
        let mut deadline = None::<Instant>;
        let mut fds = Vec::with_capacity(self.conns.len() * 2);
        for (p, mb) in self.conns.iter().zip(&mailboxes) {
            let mut events = PollFlags::empty();
            if p.conn.wants_read() {
                events |= PollFlags::IN;
            }
            if p.conn.wants_write() {
                events |= PollFlags::OUT;
            }
            fds.push(PollFd::from_borrowed_fd(p.sock.as_fd(), events));
            fds.push(match mb.as_ref().and_then(|m| m.fd()) {
                Some(fd) => PollFd::from_borrowed_fd(fd, PollFlags::IN),
                None => PollFd::from_borrowed_fd(p.sock.as_fd(), PollFlags::empty()),
            });
            let d = p.conn.next_deadline();
            deadline = Some(deadline.map_or(d, |t| t.min(d)));
        }
        let mut timeout = deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(now));
        if let Some(w) = wait {
            timeout = timeout.min(w);
        }
        match rustix::event::poll(&mut fds, Some(&timespec(timeout))) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::error!("poll failed while finishing: {e}");
                return;
            }
        }
        let ready: Vec<_> = fds
            .chunks(2)
            .map(|pair| (pair[0].revents(), !pair[1].revents().is_empty()))
            .collect();
        drop(fds);
        let clock = Clock::lazy();
        let mut scratch = [0u8; SCRATCH];
        for (p, (sock_ready, mail_ready)) in self.conns.iter_mut().zip(ready) {
            if mail_ready {
                p.conn.on_mail(&clock);
            }
            if !sock_ready.is_empty() && p.conn.wants_read() {
                while let Read_::Data { more: true } =
                    sock::read(&mut p.conn, &p.sock, &mut scratch, &clock)
                {
                    if !p.conn.wants_read() {
                        break;
                    }
                }
            } else if sock_ready.intersects(PollFlags::ERR | PollFlags::HUP) {
                p.conn.hang_up();
            }
            sock::tick(&mut p.conn, &p.sock, &clock);
        }
    }
}

/// Runs one connection. Returns true when it was parked: `park` was asked, the drain
/// started and the connection has been told goodbye.
fn drive<S: Service>(
    sock: &TcpStream,
    conn: &mut Conn<S::Session>,
    ctx: &Ctx<S>,
    scratch: &mut [u8],
    park: bool,
) -> io::Result<bool> {
    let drain = &ctx.drain;
    loop {
        let now = Instant::now();
        let clock = Clock::at(now);
        sock::flush(conn, sock, &clock);
        if conn.phase() == Phase::Done {
            return Ok(false);
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
            while let Read_::Data { more: true } = sock::read(conn, sock, scratch, &clock) {
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
            sock::drain(conn, sock, scratch, &clock);
            if park {
                return Ok(true);
            }
        }
        sock::tick(conn, sock, &clock);
    }
}
