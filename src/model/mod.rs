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
pub mod drain;
pub mod inherit;
mod sock;

/// The connection engine the models drive (it lives beside the sessions, IO-free), for
/// a connection of one of our listeners.
pub(crate) mod conn {
    pub(crate) use crate::service::engine::{Phase, Shared, IDLE_QUARTERS};
    /// One connection of one of our listeners.
    pub(crate) type Conn<S> = crate::service::engine::Conn<S, super::Listener>;
}

mod pool;
mod single;
mod threads;

pub use crate::base::limits::Limits;
pub use crate::base::stats::{Stats, CLOSE_REASONS};
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

/// The largest `max_output` a server uses.
const MAX_OUTPUT_CAP: usize = 1 << 30;

/// One service listening on one address.
#[derive(Clone)]
pub struct Listening {
    /// The bound address (with the real port when 0 was asked).
    pub addr: SocketAddr,
    /// The service's name.
    pub service: String,
    /// Its counters.
    pub stats: Arc<Stats>,
    /// Connections refused at `--max-conns-per-ip`, when the listener limits them
    /// (its service behind a [`crate::service::gate::Gate`]).
    pub refused_per_ip: Option<Arc<AtomicU64>>,
    /// Its handshake counters, when the listener speaks TLS.
    pub tls: Option<Arc<crate::service::tls::TlsStats>>,
}

/// What every connection of one listener shares, whatever its service: one pointer
/// per connection instead of one per field. The engine's part (name, limits, counters,
/// budget) is reached through `Deref`.
pub(crate) struct Listener {
    /// What the engine reads.
    pub shared: conn::Shared,
    pub drain: Drain,
    /// Refused connections being told why right now.
    pub refusing: AtomicUsize,
}

impl std::ops::Deref for Listener {
    type Target = conn::Shared;
    fn deref(&self) -> &conn::Shared {
        &self.shared
    }
}

/// What a listener's accept loop needs, whatever the model.
pub(crate) struct Ctx<S: Service> {
    pub service: Arc<S>,
    pub shared: Arc<Listener>,
    /// This listener's own "stop accepting": started with the server's drain, or alone
    /// when a reload removes the listener (its connections then carry on).
    pub stop: Drain,
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
            stop: self.stop.clone(),
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
        if n >= self.limits.load().max_conns {
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
    limits: crate::base::Live<Limits>,
    drain: Drain,
    budget: Arc<crate::base::Budget>,
    runtime: Option<tokio::runtime::Runtime>,
    threads: Vec<JoinHandle<()>>,
    listening: Vec<Listening>,
    /// The "stop accepting" signal of each listener, by bound address.
    stops: Vec<(SocketAddr, Drain)>,
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
            limits: crate::base::Live::new(capped(limits.clone())),
            drain: Drain::new()?,
            budget: Arc::new(crate::base::Budget::new(limits.max_buffered)),
            runtime,
            threads: Vec::new(),
            listening: Vec::new(),
            stops: Vec::new(),
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
        let listener = inherit::bind_or_take(addr, || bind(addr, self.limits.load().backlog))?;
        let local = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let name = service.name().to_string();
        let ctx = Ctx {
            service: Arc::new(service),
            shared: Arc::new(Listener {
                shared: conn::Shared {
                    name: name.as_str().into(),
                    limits: self.limits.clone(),
                    stats: stats.clone(),
                    budget: self.budget.clone(),
                },
                drain: self.drain.clone(),
                refusing: AtomicUsize::new(0),
            }),
            stop: self.drain.follower()?,
        };
        self.stops.push((local, ctx.stop.clone()));
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
            refused_per_ip: None,
            tls: None,
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

    /// Every listener accepting now.
    pub fn listening(&self) -> &[Listening] {
        &self.listening
    }

    /// The limits in force: what the next connection gets.
    pub fn limits(&self) -> Arc<Limits> {
        self.limits.get()
    }

    /// Changes the limits at run time (a config reload): `max_conns` applies to the
    /// next accept, the rest to connections accepted from now on, the budget's limit
    /// (`max_buffered`) to every buffer that grows from now on, and the shutdown
    /// timeout to a drain that starts later. Established connections keep the
    /// timeouts and sizes they started with. The backlog of a listener is set when
    /// it binds.
    pub fn set_limits(&self, limits: Limits) {
        self.budget.set_limit(limits.max_buffered);
        self.limits.set(capped(limits));
    }

    /// Stops the listener bound to `addr` accepting: the clients already waiting in
    /// its backlog are still taken and served, then its socket is closed; its
    /// connections carry on until they end (or until the server's drain). False when
    /// no listener of this server is bound there.
    pub fn stop_listening(&mut self, addr: SocketAddr) -> bool {
        let Some(i) = self.stops.iter().position(|(a, _)| *a == addr) else {
            return false;
        };
        let (_, stop) = self.stops.remove(i);
        stop.start();
        self.listening.retain(|l| l.addr != addr);
        // The accept loop takes the clients already in the backlog and closes the
        // socket, so that the port is free when this returns (a reload may bind it
        // again for another service). Under `single` it first finishes the client it
        // is serving; that is not waited for.
        let left = stop.wait_idle(Instant::now() + STOP_WAIT);
        if left == 0 {
            tracing::info!("Stopped listening on {addr}; its connections carry on");
        } else {
            tracing::info!(
                "Stopping listening on {addr} once its current client leaves; its \
                 connections carry on"
            );
        }
        true
    }

    /// Blocks until the drain has started and every connection has finished, or the
    /// shutdown timeout has passed since the drain started. Returns how many
    /// connections were cut off by that timeout.
    pub fn wait(mut self) -> usize {
        let drain = self.drain.clone();
        drain.wait_started();
        let deadline = Instant::now() + self.limits.load().shutdown_timeout;
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

/// How long [`Server::stop_listening`] waits for the socket to close.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// `limits` as a server uses them.
fn capped(limits: Limits) -> Limits {
    Limits {
        // A connection counts its unsent output in 32 bits.
        max_output: limits.max_output.min(MAX_OUTPUT_CAP),
        ..limits
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
    let limits = ctx.limits.load();
    let n = ctx.refusing.fetch_add(1, Ordering::AcqRel);
    if n >= limits.max_refusing {
        ctx.refusing.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!("too many refusals in flight; closing a client without a word");
        false
    } else {
        tracing::info!(
            "Refusing connection: server busy ({} connections)",
            limits.max_conns
        );
        true
    }
}

pub(crate) fn refusal_done<S: Service>(ctx: &Ctx<S>) {
    ctx.refusing.fetch_sub(1, Ordering::AcqRel);
}
