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
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::io::Ready;
use tokio::time::Sleep;

use super::conn::{Clock, Conn, Phase, Read_};
use super::drain::{Live, Registration};
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
            _ = ctx.drain.started() => {
                // Clients already in the backlog get their messages answered, not a reset.
                match super::blocking::accept_now(listener.get_ref()) {
                    Ok(conn) => Ok(conn),
                    Err(_) => return,
                }
            }
            r = accept(&listener) => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_START;
                let admitted = ctx.admit();
                if !admitted && !super::refusal_slot(&ctx) {
                    continue;
                }
                let id = next_conn_id();
                // A panic in a session ends its own task only; tokio reports it and
                // the slot is given back as the task unwinds.
                if let Some(task) = Task::new(stream, ConnInfo { id, peer }, &ctx, admitted) {
                    tokio::spawn(task);
                }
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
        match guard.try_io(|l| super::blocking::accept_now(l.get_ref())) {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

pin_project_lite::pin_project! {
    /// One connection's task, written as a plain future so that it holds exactly the
    /// connection, its socket, one timer and its place in the listener: readiness and
    /// the mailbox keep their wakers in their own state, not in the future.
    struct Task<S: Service> {
        conn: Conn<S::Session>,
        fd: AsyncFd<TcpStream>,
        #[pin]
        sleep: Sleep,
        drain: Option<Registration>,
        admitted: bool,
        // Last: the drain waits for this guard, so the connection's close is logged
        // first.
        live: Live,
    }

    impl<S: Service> PinnedDrop for Task<S> {
        fn drop(this: Pin<&mut Self>) {
            // Gives back the connection's place (or its refusal slot).
            let this = this.project();
            let listener = this.conn.listener();
            if *this.admitted {
                listener.stats.active.fetch_sub(1, Ordering::AcqRel);
            } else {
                listener.refusing.fetch_sub(1, Ordering::AcqRel);
            }
            if let Some(r) = this.drain.take() {
                listener.drain.unregister(r);
            }
        }
    }
}

impl<S: Service> Task<S> {
    fn new(stream: TcpStream, info: ConnInfo, ctx: &Ctx<S>, admitted: bool) -> Option<Self> {
        let live = ctx.drain.live();
        let fd = match register(stream, Interest::READABLE | Interest::WRITABLE) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!("cannot register connection: {e}");
                if admitted {
                    ctx.release();
                } else {
                    super::refusal_done(ctx);
                }
                return None;
            }
        };
        let conn = ctx.open(info, WakeKind::Task, !admitted);
        let deadline = conn.next_deadline();
        Some(Task {
            conn,
            fd,
            sleep: tokio::time::sleep_until(deadline.into()),
            drain: None,
            admitted,
            live,
        })
    }
}

/// Turns of the loop below in one poll before yielding to other connections.
const TURNS_PER_POLL: usize = 32;

impl<S: Service> Future for Task<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let conn = this.conn;
        if this.drain.is_none() {
            *this.drain = Some(this.live.drain().register(conn.info.id, cx.waker()));
        }
        let drain = this.live.drain();
        // The clock is read only if something on this wake-up needs the time.
        let clock = Clock::lazy();
        for _ in 0..TURNS_PER_POLL {
            let blocked = !conn.flush(this.fd.get_ref(), &clock);
            if conn.phase() == Phase::Done {
                return Poll::Ready(());
            }
            let deadline = conn.next_deadline();
            if deadline != this.sleep.deadline().into_std() {
                this.sleep.as_mut().reset(deadline.into());
            }
            if !conn.is_draining() && drain.is_started() {
                with_scratch(|s| conn.drain(this.fd.get_ref(), s, &clock));
                continue;
            }
            if conn.wants_read() {
                if let Poll::Ready(g) = this.fd.poll_read_ready(cx) {
                    let Ok(mut g) = g else { return Poll::Ready(()) };
                    with_scratch(|s| {
                        for _ in 0..READS_PER_WAKE {
                            match conn.read_from(g.get_inner(), s, &clock) {
                                // Backpressure holds within a burst too: stop reading
                                // (keeping the readiness) once replies pile up.
                                Read_::Data { more: true } if conn.wants_read() => continue,
                                Read_::Data { more: true } => break,
                                Read_::Data { more: false } | Read_::WouldBlock => {
                                    g.clear_ready_matching(Ready::READABLE);
                                    break;
                                }
                                Read_::Closed => break,
                            }
                        }
                    });
                    if conn.mailbox().is_some() {
                        // This input may have woken other sessions (a chat message
                        // wakes its whole room); tokio runs a task woken from a worker
                        // in a slot other workers cannot steal, so a client that never
                        // stops sending would starve them. Yield after each burst.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    continue;
                }
            }
            if blocked {
                if let Poll::Ready(g) = this.fd.poll_write_ready(cx) {
                    let Ok(mut g) = g else { return Poll::Ready(()) };
                    if !conn.flush(g.get_inner(), &clock) {
                        g.clear_ready_matching(Ready::WRITABLE);
                    }
                    continue;
                }
            }
            if conn.mail_waiting() {
                conn.on_mail(&clock);
                continue;
            }
            if let Some(mb) = conn.mailbox() {
                if mb.poll_notified(cx).is_ready() {
                    conn.on_mail(&clock);
                    continue;
                }
            }
            if this.sleep.as_mut().poll(cx).is_ready() {
                conn.tick(this.fd.get_ref(), &clock);
                // Re-arm at once, and never in the past: a fired timer left as it is
                // would fire again at once.
                let floor = clock.now() + Duration::from_millis(1);
                this.sleep
                    .as_mut()
                    .reset(conn.next_deadline().max(floor).into());
                continue;
            }
            return Poll::Pending;
        }
        // A busy connection had its turns: let the others run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
