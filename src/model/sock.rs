//! The system calls between a socket and a connection's engine ([`Conn`]), shared by
//! every model: a model only waits (in `poll(2)` or on tokio readiness) and then calls
//! these, which move bytes and report to the engine what happened.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use super::conn::{Conn, Phase};
use crate::base::Clock;
use crate::service::Session;

/// What one read did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read_ {
    /// Bytes were read; `more` says the read filled the buffer, so more may be waiting.
    Data { more: bool },
    /// Nothing to read now.
    WouldBlock,
    /// The client closed its side, or the connection failed.
    Closed,
}

/// The socket's descriptor, for rustix. `TcpStream::as_fd` is a call into the
/// standard library that is never inlined (three instructions and a call per read and
/// per send, measured on the ACK round trip); `as_raw_fd` is inlined to one load.
#[inline(always)]
fn fd(sock: &TcpStream) -> BorrowedFd<'_> {
    // SAFETY: the descriptor is `sock`'s own and stays open while `sock` is borrowed,
    // which the returned lifetime ties it to.
    unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) }
}

/// Reads once from the socket into `scratch` and hands the bytes to the engine.
/// Inlined into the model's read loop: as a call of its own, its frame cost some 18
/// instructions per ACK round trip.
#[inline(always)]
pub(crate) fn read<S: Session>(
    conn: &mut Conn<S>,
    sock: &TcpStream,
    scratch: &mut [u8],
    clock: &Clock,
) -> Read_ {
    let buf_len = conn.read_room().min(scratch.len());
    let buf = &mut scratch[..buf_len];
    let n = loop {
        match rustix::net::recv(fd(sock), &mut *buf, rustix::net::RecvFlags::empty())
            .map_err(io::Error::from)
        {
            Ok((n, _)) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read_::WouldBlock,
            Err(e) => {
                conn.handle_error(e);
                return Read_::Closed;
            }
        }
    };
    if n == 0 {
        conn.handle_eof(clock);
        return Read_::Closed;
    }
    // Input is taken while open, and read (to find the EOF) while lingering.
    let more = n == buf_len && matches!(conn.phase(), Phase::Open | Phase::Lingering);
    conn.handle_read(&buf[..n], clock);
    Read_::Data { more }
}

/// Writes as much of the engine's output as the socket takes, and shuts the write side
/// down once a closing session's output is all sent. Returns false when the socket
/// would block.
///
/// A model flushes on every turn of its loop, most often with nothing to write (before
/// a read, and after the reply is sent): that test is inlined, and the call, whose
/// frame saves and restores six registers, is made only when there is work (about 15
/// instructions per ACK round trip with 10 connections; BENCHMARKS.md, "Within the
/// 2%").
#[inline(always)]
pub(crate) fn flush<S: Session>(conn: &mut Conn<S>, sock: &TcpStream, clock: &Clock) -> bool {
    if !conn.may_transmit() {
        return true;
    }
    flush_some(conn, sock, clock)
}

/// [`flush`] with output to write or a write side to shut.
#[inline(never)]
fn flush_some<S: Session>(conn: &mut Conn<S>, sock: &TcpStream, clock: &Clock) -> bool {
    while let Some(bytes) = conn.poll_transmit() {
        // Raw send(2) with MSG_NOSIGNAL: no SIGPIPE from a client that has gone.
        match rustix::net::send(fd(sock), bytes, rustix::net::SendFlags::NOSIGNAL)
            .map_err(io::Error::from)
        {
            Ok(0) => {
                conn.handle_error(io::ErrorKind::WriteZero.into());
                return true;
            }
            Ok(n) => conn.handle_sent(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.handle_send_blocked(clock);
                return false;
            }
            Err(e) => {
                conn.handle_error(e);
                return true;
            }
        }
    }
    if conn.poll_shutdown_write() {
        let _ = sock.shutdown(Shutdown::Write);
        conn.handle_shut_write(clock);
    }
    true
}

/// The server is shutting down: reads what the client already sent (so it is
/// answered), then the engine says goodbye.
pub(crate) fn drain<S: Session>(
    conn: &mut Conn<S>,
    sock: &TcpStream,
    scratch: &mut [u8],
    clock: &Clock,
) {
    conn.begin_drain();
    while conn.wants_read() {
        match read(conn, sock, scratch, clock) {
            Read_::Data { more: true } => continue,
            _ => break,
        }
    }
    conn.shutdown_goodbye(clock);
}

/// Runs the engine's timers that have come due, and turns on TCP keepalive if it
/// asks.
pub(crate) fn tick<S: Session>(conn: &mut Conn<S>, sock: &TcpStream, clock: &Clock) {
    conn.tick(clock);
    if let Some(idle) = conn.poll_keepalive() {
        set_keepalive(sock, idle);
    }
}

/// Turns on TCP keepalive: the first probe after `idle` without traffic, then one every
/// 15 s, and the connection fails after 4 unanswered probes. Best effort: a socket that
/// refuses it is only kept without probes, which is logged.
fn set_keepalive(sock: &TcpStream, idle: Duration) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle.max(Duration::from_secs(1)))
        .with_interval(Duration::from_secs(15))
        .with_retries(4);
    if let Err(e) = socket2::SockRef::from(sock).set_tcp_keepalive(&ka) {
        tracing::warn!("cannot turn on TCP keepalive: {e}");
    }
}
