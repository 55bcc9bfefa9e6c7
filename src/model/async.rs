//! `async`: tokio tasks, one per connection, on `--workers` threads (1 is a
//! single-threaded event loop like the seed's asyncio server).
//!
//! Each task waits on the socket's readiness, its mailbox, its timers and the shutdown
//! signal at once. An idle connection holds no read buffer: reads go into a
//! per-thread scratch buffer and only an unconsumed tail is kept. A short read clears
//! the socket's readiness at once, saving the extra `read` that would return EAGAIN.
//!
//! The idle check every connection has runs from one sweeper per server (see
//! [`super::drain`]), not from a timer in each task; a task makes a timer of its own
//! (boxed, outside the task) only while it has a precise deadline: a lingering close, a
//! stalled write, a goodbye's grace or its session's timer. An idle ACK connection is
//! then a 280-byte future in a 384-byte tokio task (it was 400 in 512).

use std::cell::RefCell;
use std::io;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::io::Ready;
use tokio::time::Sleep;

use super::conn::{Conn, Phase, IDLE_QUARTERS};
use super::drain::{Registration, SIGNAL_SPARE, STARTED};
use super::sock::{self, Read_};
use super::{accept_backoff, next_conn_id, Ctx, BACKOFF_START};
use crate::base::mailbox::WakeKind;
use crate::base::Clock;
use crate::service::{ConnInfo, Service, Session};

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
    ctx.drain
        .start_sweeper(ctx.limits.load().idle_timeout / IDLE_QUARTERS);
    let closed = ctx.stop.live();
    rt.spawn(async move {
        // Dropped after `accept_loop` has closed the socket.
        let _closed = closed;
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
            // The listener's own signal: the server's drain, this listener removed by
            // a reload, or the listeners handed over to another process.
            _ = ctx.stop.accept_stopped() => {
                // Handed over: the clients queued are the new process's to take.
                if !ctx.stop.is_started() {
                    return;
                }
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
                        _ = ctx.stop.accept_stopped() => return,
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
    /// connection, its socket and its place in the listener: readiness and the mailbox
    /// keep their wakers in their own state, the idle check is the sweeper's, and a
    /// timer exists only while a precise deadline does.
    struct Task<S: Service> {
        // Dropped by hand, before the task leaves the drain's count, so that the
        // connection's close is logged before the drain can finish.
        conn: ManuallyDrop<Conn<S::Session>>,
        fd: AsyncFd<TcpStream>,
        timer: Option<Pin<Box<Sleep>>>,
        // The timer was polled since it was last armed or moved: its waker, the
        // task's own for the task's whole life, is registered, so until it fires it
        // need not be polled again (each poll costs about a hundred instructions, on
        // every wake-up of a connection with a precise deadline, such as a
        // WebSocket's ping check).
        timer_polled: bool,
        drain: Option<Registration>,
        // The drain's signal word as last seen (drain started, sweeps), and in its
        // spare bit whether the connection was admitted (or is being refused): one
        // word, where a separate flag would cost the task 8 bytes.
        seen: u32,
    }

    impl<S: Service> PinnedDrop for Task<S> {
        fn drop(this: Pin<&mut Self>) {
            // Gives back the connection's place (or its refusal slot).
            let this = this.project();
            let listener = this.conn.listener();
            if *this.seen & ADMITTED != 0 {
                listener.stats.active.fetch_sub(1, Ordering::AcqRel);
            } else {
                listener.refusing.fetch_sub(1, Ordering::AcqRel);
            }
            if let Some(r) = this.drain.take() {
                listener.drain.unregister(r);
            }
            let drain = listener.drain.clone();
            // SAFETY: `conn` is dropped here once and never used again: this is the
            // task's drop.
            unsafe { ManuallyDrop::drop(this.conn) };
            drain.leave();
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
        // The task leaves the drain's count in its drop.
        live.detach();
        Some(Task {
            conn: ManuallyDrop::new(conn),
            fd,
            timer: None,
            timer_polled: false,
            drain: None,
            // Sweeps before this connection are none of its business; a started drain is.
            seen: (ctx.drain.signal() & !STARTED) | if admitted { ADMITTED } else { 0 },
        })
    }
}

/// Arms, moves or drops a connection's own timer to match its precise deadline, never
/// in the past (a timer that fired stays ready: re-armed at its own deadline it would
/// fire again at once, so a deadline that does not move on is retried a millisecond
/// later).
///
/// Most waits have neither a precise deadline nor a timer: that test is inlined, and
/// the call (some 17 instructions of frame per ACK round trip) made only otherwise.
/// A timer made or moved is marked not `polled` (see [`timer_fired`]).
#[inline(always)]
fn sync_timer(
    timer: &mut Option<Pin<Box<Sleep>>>,
    polled: &mut bool,
    due: Option<Instant>,
    clock: &Clock,
) {
    if due.is_some() || timer.is_some() {
        move_timer(timer, polled, due, clock);
    }
}

/// [`sync_timer`] with a deadline or a timer.
#[inline(never)]
fn move_timer(
    timer: &mut Option<Pin<Box<Sleep>>>,
    polled: &mut bool,
    due: Option<Instant>,
    clock: &Clock,
) {
    match (due, timer.as_mut()) {
        (None, None) => {}
        (None, Some(_)) => *timer = None,
        (Some(d), None) => {
            let d = d.max(clock.now() + Duration::from_millis(1));
            *timer = Some(Box::pin(tokio::time::sleep_until(d.into())));
            *polled = false;
        }
        (Some(d), Some(t)) => {
            let armed = t.deadline().into_std();
            if d == armed {
                return;
            }
            let d = if d < armed {
                d.max(clock.now() + Duration::from_millis(1))
            } else {
                d
            };
            if d != armed {
                t.as_mut().reset(d.into());
                *polled = false;
            }
        }
    }
}

/// Polls the connection's timer if it may have news: once after it was armed or
/// moved (which registers the task's waker with it) and again once it fired. Polled
/// without tokio's cooperative budget: a poll the budget turned away would leave the
/// timer unarmed while `polled` says otherwise.
fn timer_fired(
    timer: &mut Option<Pin<Box<Sleep>>>,
    polled: &mut bool,
    cx: &mut Context<'_>,
) -> bool {
    let Some(t) = timer.as_mut() else {
        return false;
    };
    if *polled && !t.is_elapsed() {
        return false;
    }
    *polled = true;
    let mut t = tokio::task::unconstrained(t.as_mut());
    Pin::new(&mut t).poll(cx).is_ready()
}

/// The bit of a task's `seen` word that says the connection was admitted: the drain's
/// signal never sets it.
const ADMITTED: u32 = SIGNAL_SPARE;

/// Turns of the loop below in one poll before yielding to other connections.
const TURNS_PER_POLL: usize = 32;

impl<S: Service> Future for Task<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let conn: &mut Conn<S::Session> = this.conn;
        if conn.is_lent() {
            // Woken: the socket is the task's again before anything is read or written.
            conn.reclaim();
        }
        if this.drain.is_none() {
            let r = conn
                .listener()
                .drain
                .register(conn.info.id, cx.waker(), conn.idle_deadline());
            *this.drain = Some(r);
        }
        // The clock is read only if something on this wake-up needs the time.
        let clock = Clock::lazy();
        // A deadline found past is run at most once per poll: a session that leaves
        // its deadline in the past is ticked once a millisecond, not in a busy loop.
        let mut ticked = false;
        // The socket's read readiness was found not ready on this poll: the waker is
        // registered with the reactor, which wakes the task when data comes, so later
        // turns need not ask again (a mailbox wake-up would otherwise ask on each).
        let mut read_armed = false;
        for _ in 0..TURNS_PER_POLL {
            let blocked = !sock::flush(conn, this.fd.get_ref(), &clock);
            if conn.phase() == Phase::Done {
                return Poll::Ready(());
            }
            let signal = conn.listener().drain.signal();
            if signal != *this.seen & !ADMITTED {
                // The drain started, or a sweep ran: rare, one load per turn otherwise.
                let before = std::mem::replace(this.seen, signal | (*this.seen & ADMITTED));
                if signal & STARTED != 0 && !conn.is_draining() {
                    with_scratch(|s| sock::drain(conn, this.fd.get_ref(), s, &clock));
                }
                if (signal ^ before) & !(STARTED | ADMITTED) != 0
                    && clock.now() >= conn.next_deadline()
                {
                    sock::tick(conn, this.fd.get_ref(), &clock);
                    if let Some(r) = *this.drain {
                        conn.listener().drain.reschedule(r, conn.idle_deadline());
                    }
                }
                continue;
            }
            if conn.wants_read() && !read_armed {
                let ready = this.fd.poll_read_ready(cx);
                read_armed = ready.is_pending();
                if let Poll::Ready(g) = ready {
                    let Ok(mut g) = g else { return Poll::Ready(()) };
                    with_scratch(|s| {
                        for _ in 0..READS_PER_WAKE {
                            match sock::read(conn, g.get_inner(), s, &clock) {
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
                    if !sock::flush(conn, g.get_inner(), &clock) {
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
            // Nothing else to do: wait, with a timer only for a precise deadline.
            let precise = conn.precise_deadline();
            if !ticked && precise.is_some_and(|d| d <= clock.now()) {
                // Due already (a coalescing window that ended while this task ran or
                // waited for a worker): run it now. Arming a timer for it would floor
                // it into the future on every poll, and it would never fire.
                ticked = true;
                sock::tick(conn, this.fd.get_ref(), &Clock::lazy());
                if let Some(r) = *this.drain {
                    conn.listener().drain.reschedule(r, conn.idle_deadline());
                }
                continue;
            }
            sync_timer(this.timer, this.timer_polled, precise, &clock);
            if timer_fired(this.timer, this.timer_polled, cx) {
                // A fresh clock: the one of this poll may predate the timer's
                // deadline, and `tick` would find nothing due.
                sock::tick(conn, this.fd.get_ref(), &Clock::lazy());
                if let Some(r) = *this.drain {
                    conn.listener().drain.reschedule(r, conn.idle_deadline());
                }
                // Fired: re-armed (or dropped) on the next turn, never in the past.
                let floor = clock.now() + Duration::from_millis(1);
                let due = conn.precise_deadline().map(|d| d.max(floor));
                sync_timer(this.timer, this.timer_polled, due, &clock);
                continue;
            }
            if <S::Session as Session>::LENDS {
                // SAFETY: `fd` is the connection's socket, and it is closed after the
                // connection (whose drop closes the mailbox, ending the loan): the
                // task's drop drops `conn` by hand before its fields.
                unsafe { conn.lend(this.fd.get_ref().as_raw_fd()) };
            }
            return Poll::Pending;
        }
        // A busy connection had its turns: let the others run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ack::Ack;

    /// An idle connection's memory is mostly its task: tokio allocates the future in a
    /// cell aligned to 128 bytes, with 104 bytes of its own (header, scheduler, id, the
    /// stage's tag, trailer), so a future of up to 280 bytes takes 384 and one byte
    /// more takes 512. This keeps an ACK connection's future on the small side.
    #[test]
    fn an_ack_connection_future_fits_a_384_byte_task_cell() {
        let size = std::mem::size_of::<Task<Ack>>();
        assert!(size <= 280, "Task<Ack> is {size} bytes");
        // tokio's layout (1.54, runtime/task/core.rs): `#[repr(C)] enum Stage
        // { Running(T), Finished(Result<Output, JoinError>), Consumed }` inside a
        // `#[repr(C, align(128))] Cell { Header (32 bytes), Core { scheduler (8), id (8),
        // stage }, Trailer (48) }`.
        #[allow(dead_code)]
        #[repr(C)]
        enum Stage<T> {
            Running(T),
            Finished(Result<(), tokio::task::JoinError>),
            Consumed,
        }
        #[allow(dead_code)]
        #[repr(C, align(128))]
        struct Cell<T> {
            header: [u64; 4],
            scheduler: u64,
            id: u64,
            stage: Stage<T>,
            trailer: [u64; 6],
        }
        assert_eq!(std::mem::size_of::<Cell<Task<Ack>>>(), 384);
    }
}
