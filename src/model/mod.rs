//! Models: the concurrency strategies that own sockets and drive sessions.
//!
//! Each model is written once and knows no service by name. They share the limits,
//! the shutdown signal, the per-listener counters and the per-connection logic in
//! [`conn`]; they differ only in how they wait: one thread for everyone (`single`), a
//! thread per client (`threads`), a fixed pool of threads (`pool`), or tokio tasks
//! (`async`).

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::service::Service;

#[path = "async.rs"]
mod async_;
mod blocking;
pub(crate) mod conn;
pub mod drain;
mod sock;
mod timer;

mod pool;
mod single;
mod threads;

pub use drain::Drain;

/// A concurrency model, as chosen with `--model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// One thread, blocking, one client at a time (seed 003 §1).
    Single,
    /// A thread per connection (seeds 000–003).
    Threads,
    /// A fixed pool of worker threads; clients beyond it wait in a bounded queue.
    Pool {
        /// Worker threads (the seed's `max_workers=10`).
        workers: usize,
    },
    /// Tokio tasks on `workers` threads; 1 is a single-threaded event loop.
    Async {
        /// Runtime worker threads.
        workers: usize,
    },
}

impl Model {
    /// The model's name as the CLI spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Model::Single => "single",
            Model::Threads => "threads",
            Model::Pool { .. } => "pool",
            Model::Async { .. } => "async",
        }
    }
}

/// Every limit of a server, with its default, in one place.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once per listener; the next client is refused with the
    /// service's busy goodbye. Under `pool` this bounds running plus queued clients.
    pub max_conns: usize,
    /// A connection with no bytes in or out for this long is told and closed.
    pub idle_timeout: Duration,
    /// A connection whose replies make no progress for this long is dropped.
    pub write_timeout: Duration,
    /// After a shutdown signal, how long connections get to finish.
    pub shutdown_timeout: Duration,
    /// Unconsumed input held per connection.
    pub max_input: usize,
    /// Unsent output above which the connection stops reading (backpressure); at
    /// most 1 GiB is used.
    pub max_output: usize,
    /// Bytes a session's mailbox holds before the session is a slow consumer.
    pub max_queue: usize,
    /// Write coalescing for pushed events: a connection written to by events less
    /// than this long ago holds the next ones until this long after that write, so a
    /// busy chat member gets many messages per write, not one write per message. A
    /// lone event is written at once; replies to a client's own input are never held.
    /// Zero writes every event at once.
    pub coalesce: Duration,
    /// Listen backlog.
    pub backlog: i32,
    /// Refused connections being told why at once; beyond this they are just closed.
    pub max_refusing: usize,
    /// Bytes held for clients across the whole server (input not yet consumed, a
    /// WebSocket message being assembled); a connection whose buffer would grow past it
    /// is told the server is busy and closed (see [`crate::base::budget`]).
    pub max_buffered: usize,
}

/// The largest `max_output` a server uses.
const MAX_OUTPUT_CAP: usize = 1 << 30;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_conns: 10_000,
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            max_input: 64 * 1024,
            max_output: 1 << 20,
            max_queue: 1 << 20,
            coalesce: Duration::from_millis(5),
            backlog: 1024,
            max_refusing: 64,
            max_buffered: crate::base::budget::DEFAULT_MAX_BUFFERED,
        }
    }
}

/// Counters of one listener. Per-connection figures are added at accept and close;
/// the per-message ones (bytes, answer durations) go to the [`Stats::meter`], whose
/// shards are per thread, so the per-message path touches no shared cache line.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections refused at `--max-conns`.
    pub refused: AtomicU64,
    /// Connections open now (served or queued).
    pub active: AtomicUsize,
    /// Connections closed.
    pub closed: AtomicU64,
    /// Bytes in and out, and the time each answer took, counted live (sharded by
    /// thread: no shared cache line per message).
    pub meter: crate::base::meter::Meter,
    /// Writes (`send(2)` calls that sent bytes), from closed connections: with
    /// `deliveries`, how well events are coalesced.
    pub writes: AtomicU64,
    /// Idle timeouts.
    pub idle_timeouts: AtomicU64,
    /// Connections dropped because they stopped reading.
    pub slow_readers: AtomicU64,
    /// Sessions whose mailbox overflowed.
    pub slow_consumers: AtomicU64,
    /// Failed `accept` calls.
    pub accept_errors: AtomicU64,
    /// Connections closed because their buffered input would pass `--max-buffered`.
    pub over_budget: AtomicU64,
    /// Connections closed, by why: indexed like [`CLOSE_REASONS`].
    pub closed_by: [AtomicU64; CLOSE_REASONS.len()],
}

/// Why connections close, as the names [`Stats::closed_by`] is indexed by (`eof`:
/// the client closed; `done`: the session ended it; `busy`: refused at
/// `--max-conns`; `input_limit`: a session that neither consumed a full input buffer
/// nor closed). The first entry, `open`, stays 0: a connection dropped while open
/// counts as `shutdown`.
pub const CLOSE_REASONS: [&str; 11] = [
    "open",
    "eof",
    "done",
    "busy",
    "idle",
    "shutdown",
    "slow_reader",
    "slow_consumer",
    "input_limit",
    "over_budget",
    "error",
];

/// One service listening on one address.
#[derive(Clone)]
pub struct Listening {
    /// The bound address (with the real port when 0 was asked).
    pub addr: SocketAddr,
    /// The service's name.
    pub service: String,
    /// Its counters.
    pub stats: Arc<Stats>,
}

/// What every connection of one listener shares, whatever its service: one pointer
/// per connection instead of one per field.
pub(crate) struct Listener {
    /// The service's name, for logs.
    pub name: Box<str>,
    pub limits: Arc<Limits>,
    pub stats: Arc<Stats>,
    pub drain: Drain,
    /// Refused connections being told why right now.
    pub refusing: AtomicUsize,
    /// The server's budget of bytes buffered for clients, shared by every listener.
    pub budget: Arc<crate::base::Budget>,
}

/// What a listener's accept loop needs, whatever the model.
pub(crate) struct Ctx<S: Service> {
    pub service: Arc<S>,
    pub shared: Arc<Listener>,
}

impl<S: Service> std::ops::Deref for Ctx<S> {
    type Target = Listener;
    fn deref(&self) -> &Listener {
        &self.shared
    }
}

impl<S: Service> Clone for Ctx<S> {
    fn clone(&self) -> Self {
        Ctx {
            service: self.service.clone(),
            shared: self.shared.clone(),
        }
    }
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_conn_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

impl<S: Service> Ctx<S> {
    /// Admits one more connection, or says it must be refused.
    pub(crate) fn admit(&self) -> bool {
        let n = self.stats.active.fetch_add(1, Ordering::AcqRel);
        if n >= self.limits.max_conns {
            self.stats.active.fetch_sub(1, Ordering::AcqRel);
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            true
        }
    }

    /// A new connection's state with its session opened (straight into its busy
    /// goodbye when `refused`).
    pub(crate) fn open(
        &self,
        info: crate::service::ConnInfo,
        wake: crate::base::mailbox::WakeKind,
        refused: bool,
    ) -> conn::Conn<S::Session> {
        let session = self.service.session(&info);
        let now = Instant::now();
        let mut conn = conn::Conn::new(session, info, self.shared.clone(), wake, now);
        conn.open(&crate::base::Clock::at(now), refused);
        conn
    }

    pub(crate) fn release(&self) {
        self.stats.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Logs an accept error and says how long to back off before the next accept:
/// resource exhaustion (out of descriptors or memory) backs off exponentially up to a
/// second, per-connection failures (the client gave up) retry at once.
pub(crate) fn accept_backoff(
    e: &io::Error,
    stats: &Stats,
    backoff: &mut Duration,
) -> Option<Duration> {
    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
    match e.raw_os_error() {
        Some(libc_errno) if is_resource_error(libc_errno) => {
            tracing::warn!("accept failed: {e}; backing off {:?}", *backoff);
            let d = *backoff;
            *backoff = (*backoff * 2).min(Duration::from_secs(1));
            Some(d)
        }
        _ => {
            tracing::debug!("accept failed: {e}");
            None
        }
    }
}

fn is_resource_error(errno: i32) -> bool {
    use rustix::io::Errno;
    let e = Errno::from_raw_os_error(errno);
    e == Errno::MFILE || e == Errno::NFILE || e == Errno::NOBUFS || e == Errno::NOMEM
}

/// The first backoff after a resource error.
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(10);

/// A server: one model, one set of limits, one shutdown signal, any number of
/// listeners.
///
/// ```no_run
/// use multiclient::model::{Limits, Model, Server};
/// use multiclient::service::ack::Ack;
/// let mut server = Server::new(Model::Threads, Limits::default()).unwrap();
/// let l = server.listen("127.0.0.1:0", Ack).unwrap();
/// println!("ack on {}", l.addr);
/// server.drain().start();
/// server.wait();
/// ```
pub struct Server {
    model: Model,
    limits: Arc<Limits>,
    drain: Drain,
    budget: Arc<crate::base::Budget>,
    runtime: Option<tokio::runtime::Runtime>,
    threads: Vec<JoinHandle<()>>,
    listening: Vec<Listening>,
}

impl Server {
    /// A server with no listener yet. The async model starts its runtime here.
    pub fn new(model: Model, limits: Limits) -> io::Result<Server> {
        let runtime = match model {
            Model::Async { workers } => Some(async_::runtime(workers)?),
            _ => None,
        };
        Ok(Server {
            model,
            limits: Arc::new(Limits {
                // A connection counts its unsent output in 32 bits.
                max_output: limits.max_output.min(MAX_OUTPUT_CAP),
                ..limits
            }),
            drain: Drain::new()?,
            budget: Arc::new(crate::base::Budget::new(limits.max_buffered)),
            runtime,
            threads: Vec::new(),
            listening: Vec::new(),
        })
    }

    /// Binds `addr` and serves `service` on it under this server's model.
    pub fn listen<S: Service>(
        &mut self,
        addr: impl ToSocketAddrs,
        service: S,
    ) -> io::Result<Listening> {
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
        let listener = bind(addr, self.limits.backlog)?;
        let local = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let name = service.name().to_string();
        let ctx = Ctx {
            service: Arc::new(service),
            shared: Arc::new(Listener {
                name: name.as_str().into(),
                limits: self.limits.clone(),
                stats: stats.clone(),
                drain: self.drain.clone(),
                refusing: AtomicUsize::new(0),
                budget: self.budget.clone(),
            }),
        };
        tracing::info!("Listening on {local} ({name}, {})", self.model.name());
        match self.model {
            Model::Single => self.threads.push(single::spawn(listener, ctx)?),
            Model::Threads => self.threads.push(threads::spawn(listener, ctx)?),
            Model::Pool { workers } => self.threads.extend(pool::spawn(listener, ctx, workers)?),
            Model::Async { .. } => {
                let rt = self.runtime.as_ref().expect("async model has a runtime");
                async_::spawn(rt, listener, ctx)?;
            }
        }
        let l = Listening {
            addr: local,
            service: name,
            stats,
        };
        self.listening.push(l.clone());
        Ok(l)
    }

    /// The model this server runs (services that cannot run under one refuse it).
    pub fn model(&self) -> Model {
        self.model
    }

    /// The shutdown signal: `server.drain().start()` begins a graceful shutdown.
    pub fn drain(&self) -> Drain {
        self.drain.clone()
    }

    /// The budget of bytes buffered for clients that every listener shares.
    pub fn budget(&self) -> Arc<crate::base::Budget> {
        self.budget.clone()
    }

    /// Every listener so far.
    pub fn listening(&self) -> &[Listening] {
        &self.listening
    }

    /// Blocks until the drain has started and every connection has finished, or the
    /// shutdown timeout has passed since the drain started. Returns how many
    /// connections were cut off by that timeout.
    pub fn wait(mut self) -> usize {
        let drain = self.drain.clone();
        {
            let fd = drain.fd();
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            while !drain.is_started() {
                let _ = rustix::event::poll(&mut fds, None);
            }
        }
        let deadline = Instant::now() + self.limits.shutdown_timeout;
        let left = drain.wait_idle(deadline);
        if left > 0 {
            tracing::warn!("shutdown timeout: cutting off {left} connections");
        } else {
            tracing::info!("All connections closed");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_millis(100));
        }
        if left == 0 {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
        left
    }
}

/// A listening socket with our backlog and `SO_REUSEADDR`, so a restarted server
/// binds at once.
fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Takes one of the `max_refusing` slots for telling a refused client why.
pub(crate) fn refusal_slot<S: Service>(ctx: &Ctx<S>) -> bool {
    let n = ctx.refusing.fetch_add(1, Ordering::AcqRel);
    if n >= ctx.limits.max_refusing {
        ctx.refusing.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!("too many refusals in flight; closing a client without a word");
        false
    } else {
        tracing::info!(
            "Refusing connection: server busy ({} connections)",
            ctx.limits.max_conns
        );
        true
    }
}

pub(crate) fn refusal_done<S: Service>(ctx: &Ctx<S>) {
    ctx.refusing.fetch_sub(1, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::conn::Reason;
    use super::CLOSE_REASONS;

    #[test]
    fn close_reason_names_follow_the_reasons_they_count() {
        let named = [
            (Reason::Open, "open"),
            (Reason::PeerClosed, "eof"),
            (Reason::Done, "done"),
            (Reason::Busy, "busy"),
            (Reason::Idle, "idle"),
            (Reason::Shutdown, "shutdown"),
            (Reason::SlowReader, "slow_reader"),
            (Reason::SlowConsumer, "slow_consumer"),
            (Reason::InputLimit, "input_limit"),
            (Reason::OverBudget, "over_budget"),
            (Reason::Error, "error"),
        ];
        assert_eq!(named.len(), CLOSE_REASONS.len());
        for (reason, name) in named {
            assert_eq!(CLOSE_REASONS[reason as usize], name, "{reason:?}");
        }
    }
}
