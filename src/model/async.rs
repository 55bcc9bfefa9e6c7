//! `async`: tokio tasks, one per connection, on `--workers` threads (1 is a
//! single-threaded event loop like the seed's asyncio server).
//!
//! Each task waits on the socket's readiness, its mailbox, one timer and the shutdown
//! signal at once. An idle connection holds no read buffer: reads go into a
//! per-thread scratch buffer and only an unconsumed tail is kept. A short read clears
//! the socket's readiness at once, saving the extra `read` that would return EAGAIN.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::Instrument;

use super::conn::{Conn, Phase, Read_};
use super::mailbox::WakeKind;
use super::{accept_backoff, next_conn_id, Ctx, BACKOFF_START};
use crate::service::{ConnInfo, Service};

/// Per-thread read buffer shared by every connection of that thread.
const SCRATCH: usize = 64 * 1024;
/// Reads in a row on one connection before yielding to others.
const READS_PER_WAKE: usize = 16;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH_BUF.with(|b| f(&mut b.borrow_mut()))
}

pub(crate) fn runtime(workers: usize) -> io::Result<tokio::runtime::Runtime> {
    // One worker is the seed's single-threaded event loop: every task on one thread.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name("event-loop")
        .enable_all()
        .build()
}

pub(crate) fn spawn<S: Service>(
    rt: &tokio::runtime::Runtime,
    listener: TcpListener,
    ctx: Ctx<S>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let _guard = rt.enter();
    let listener = register(listener, Interest::READABLE)?;
    let live = ctx.drain.live();
    rt.spawn(async move {
        let _live = live;
        accept_loop(listener, ctx).await
    });
    Ok(())
}

/// Registers a socket with the runtime's reactor.
fn register<T: std::os::fd::AsRawFd + std::os::fd::AsFd>(
    io: T,
    interest: Interest,
) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T` owns its descriptor (a std socket), so it stays open and the same for
    // as long as the `AsyncFd` that owns `T` lives.
    unsafe { AsyncFd::register_with_interest(io, interest) }.map_err(|e| e.into_parts().1)
}

async fn accept_loop<S: Service>(listener: AsyncFd<TcpListener>, ctx: Ctx<S>) {
    let mut backoff = BACKOFF_START;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = ctx.drain.started() => return,
            r = accept(&listener) => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_START;
                let admitted = ctx.admit();
                if !admitted && !super::refusal_slot(&ctx) {
                    continue;
                }
                let c = ctx.clone();
                let id = next_conn_id();
                let span = ctx.span(id, peer);
                tokio::spawn(
                    async move {
                        serve(stream, peer, id, &c, !admitted).await;
                        if admitted {
                            c.release();
                        } else {
                            super::refusal_done(&c);
                        }
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                if let Some(wait) = accept_backoff(&e, &ctx.stats, &mut backoff) {
                    tokio::select! {
                        _ = ctx.drain.started() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

async fn accept(listener: &AsyncFd<TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    loop {
        let mut guard = listener.readable().await?;
        let flags = rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK;
        match guard
            .try_io(|l| rustix::net::acceptfrom_with(l.get_ref(), flags).map_err(io::Error::from))
        {
            Ok(Ok((fd, addr))) => {
                let stream = TcpStream::from(fd);
                let peer = addr
                    .and_then(|a| SocketAddr::try_from(a).ok())
                    .or_else(|| stream.peer_addr().ok())
                    .unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
                let _ = stream.set_nodelay(true);
                return Ok((stream, peer));
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

async fn serve<S: Service>(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    ctx: &Ctx<S>,
    refused: bool,
) {
    let _live = ctx.drain.live();
    let local = stream.local_addr().unwrap_or(peer);
    let info = ConnInfo { id, peer, local };
    let session = ctx.service.session(&info);
    let now = Instant::now();
    let mut conn = Conn::new(
        session,
        info,
        ctx.limits.clone(),
        ctx.stats.clone(),
        WakeKind::Task,
        now,
    );
    let fd = match register(stream, Interest::READABLE | Interest::WRITABLE) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("cannot register connection: {e}");
            return;
        }
    };
    conn.open(now, refused);
    let sleep = tokio::time::sleep_until(conn.next_deadline().into());
    tokio::pin!(sleep);
    let mut armed = conn.next_deadline();
    loop {
        let now = Instant::now();
        conn.resume_events(now);
        let blocked = !conn.flush(fd.get_ref(), now);
        if conn.phase() == Phase::Done {
            return;
        }
        let deadline = conn.next_deadline();
        if deadline != armed {
            armed = deadline;
            sleep.as_mut().reset(deadline.into());
        }
        // Watched even under backpressure, so an overflow is seen at once.
        let mailbox = conn.mailbox().cloned();
        let mut yield_after_input = false;
        tokio::select! {
            biased;
            _ = ctx.drain.started(), if !conn.is_draining() => {
                with_scratch(|s| conn.drain(fd.get_ref(), s, Instant::now()));
            }
            g = fd.readable(), if conn.wants_read() => {
                let Ok(mut g) = g else { return };
                let now = Instant::now();
                // Input may wake other sessions (a chat message wakes every member of
                // its room). Tokio runs a task woken from a worker in that worker's
                // LIFO slot, which other workers cannot steal: a client that never
                // stops sending would starve them. Yield after each burst.
                yield_after_input = true;
                with_scratch(|s| {
                    for _ in 0..READS_PER_WAKE {
                        match conn.read_from(g.get_inner(), s, now) {
                            // Backpressure holds within a burst too: stop reading
                            // once replies pile up.
                            Read_::Data { more: true } if conn.wants_read() => continue,
                            Read_::Data { more: true } => break,
                            Read_::Data { more: false } | Read_::WouldBlock => {
                                g.clear_ready_matching(tokio::io::Ready::READABLE);
                                break;
                            }
                            Read_::Closed => break,
                        }
                    }
                });
            }
            g = fd.writable(), if blocked => {
                let Ok(mut g) = g else { return };
                let now = Instant::now();
                if !conn.flush(g.get_inner(), now) {
                    g.clear_ready_matching(tokio::io::Ready::WRITABLE);
                }
            }
            _ = async { mailbox.as_ref().expect("guarded").notified().await }, if mailbox.is_some() => {
                conn.on_mailbox(Instant::now());
            }
            _ = &mut sleep => {
                conn.tick(Instant::now());
                // Re-arm even if the deadline did not move, or the fired timer would
                // spin.
                armed = Instant::now() - Duration::from_secs(1);
            }
        }
        if yield_after_input {
            tokio::task::yield_now().await;
        }
    }
}
