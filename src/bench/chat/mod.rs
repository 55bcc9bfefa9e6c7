//! The chat workload (`bench chat`): fan-out through the chat service's line protocol.
//!
//! `--members` connections take their `WELCOME`, each joins one of `--rooms` rooms
//! (member `i` joins room `i % rooms`) and reads everything the server sends. The
//! first `--senders` members (default: one per room) also publish, together at
//! `--rate` messages per second, open loop. Each message's text carries its sender, a
//! per-sender sequence number and its intended send time (`m <sender> <seq> <µs>`),
//! so every receiver checks that it gets every message of its room exactly once and
//! in each sender's order, and measures send-to-delivery latency from the intended
//! send time (a stalled server delays the schedule and shows in the percentiles, no
//! coordinated omission). A sender ends with `e <sender> <count>`; a member missing
//! any of the `count` messages counts each as an error.
//!
//! Before the measured phase the join storm (every join is an event to the room's
//! earlier members) is flushed: each room's first sender says one warm-up message
//! and the run waits until every member has read it, so the server's CPU sampled
//! from there on is the cost of the messages only. At the end every member stays
//! connected until all have read the senders' end marks, and the server is sampled
//! before anyone leaves (leaving is another storm, of `PART`s).
//!
//! Members read in large batches (whatever the socket holds, parsed line by line in
//! place) and record latencies into one of a few shared histograms per batch, so the
//! tester stays far cheaper per delivery than the server it measures.
//!
//! One file per concern: this one has the options, the shared state and the driver
//! (connect, warm up, measure, release); [`report`] what a run measured, `member` a
//! receiving member's read loop and checks, `sender` a publishing member's schedule.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use hdrhistogram::Histogram;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::proc;
use super::report::{histogram, Latency, ServerUse};
use super::run::default_threads;

mod member;
pub mod report;
mod sender;

pub use report::{ChatErrors, ChatReport};

/// Connections being opened at once, so a large run does not overflow the server's
/// listen backlog.
const CONNECTING: usize = 256;
/// Longest line a member accepts; the server's lines are far shorter.
const MAX_LINE: usize = 64 * 1024;
/// A member's read buffer starts this large and grows only while one read fills it.
const READ_BUF: usize = 8 * 1024;
/// Latency histograms shared by the members (member `i` uses `i % HISTS`): one per
/// member would cost hundreds of MiB at 10,000 members.
const HISTS: usize = 64;

/// Options of `bench chat`.
#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// The chat server (default 127.0.0.1:7000).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Connections, all members of a room.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Rooms; member `i` joins room `i % rooms`.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Members that also publish (default: one per room), spread over the rooms.
    #[arg(long)]
    pub senders: Option<usize>,
    /// Messages per second, all senders together (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Seconds the setup (connect, join, warm-up) may take.
    #[arg(long, default_value_t = 120.0)]
    pub setup_timeout: f64,
    /// Seconds after the last send for every member to read every message.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Room names are this prefix and a number.
    #[arg(long, default_value = "bench")]
    pub room_prefix: String,
    /// Spread connections over source addresses 127.0.0.1..=127.0.0.N.
    #[arg(long, default_value_t = 1)]
    pub src_ips: u8,
    /// The options every workload shares (`--server-pid`, `--threads`, `--json`).
    #[command(flatten)]
    pub tester: super::TesterArgs,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// The chat server.
    pub addr: SocketAddr,
    /// Connections.
    pub members: usize,
    /// Rooms.
    pub rooms: usize,
    /// Members that publish.
    pub senders: usize,
    /// Total messages per second.
    pub rate: f64,
    /// Sending time.
    pub duration: Duration,
    /// Bound on connect + join + warm-up.
    pub setup_timeout: Duration,
    /// Bound on the delivery of the last messages after sending stops.
    pub drain_timeout: Duration,
    /// Room name prefix.
    pub room_prefix: String,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N.
    pub src_ips: u8,
    /// The server's PID.
    pub server_pid: Option<u32>,
    /// Tester threads.
    pub threads: usize,
}

impl ChatConfig {
    /// A run of `members` in `rooms` on `addr` with one sender per room and defaults.
    pub fn new(addr: SocketAddr, members: usize, rooms: usize) -> ChatConfig {
        ChatConfig {
            addr,
            members,
            rooms,
            senders: rooms,
            rate: 100.0,
            duration: Duration::from_secs(5),
            setup_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(10),
            room_prefix: "bench".into(),
            src_ips: 1,
            server_pid: None,
            threads: default_threads(),
        }
    }
}

impl ChatArgs {
    /// The run these options describe.
    pub fn config(&self) -> anyhow::Result<ChatConfig> {
        let d = |v: f64, what: &str| {
            Duration::try_from_secs_f64(v).map_err(|e| anyhow::anyhow!("{what}: {e}"))
        };
        let mut c = ChatConfig::new(
            self.addr.unwrap_or_else(|| ([127, 0, 0, 1], 7000).into()),
            self.members,
            self.rooms,
        );
        c.senders = self.senders.unwrap_or(self.rooms);
        c.rate = self.rate;
        c.duration = d(self.secs, "--secs")?;
        c.setup_timeout = d(self.setup_timeout, "--setup-timeout")?;
        c.drain_timeout = d(self.timeout, "--timeout")?;
        c.room_prefix = self.room_prefix.clone();
        c.src_ips = self.src_ips;
        c.server_pid = self.tester.server_pid;
        c.threads = self.tester.threads.unwrap_or_else(default_threads);
        Ok(c)
    }
}

/// Counters shared by every member and sender task.
#[derive(Default)]
struct Shared {
    joined: AtomicUsize,
    warm: AtomicUsize,
    /// Members that stopped reading: all end marks read, dropped, or failed.
    finished: AtomicUsize,
    deliveries: AtomicU64,
    slow_drops: AtomicU64,
    missed_by_dropped: AtomicU64,
    missing: AtomicU64,
    dup: AtomicU64,
    wrong: AtomicU64,
    conn: AtomicU64,
    timeout: AtomicU64,
    /// Microseconds since the run's origin of the latest delivery.
    last_delivery_us: AtomicU64,
    /// Set when a setup step failed: everyone gives up.
    abort: AtomicBool,
    /// Why the first member that failed its setup failed.
    first_failure: Mutex<Option<String>>,
}

/// The run's phases, broadcast to every task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Setup,
    /// Everyone joined: the senders say their warm-up message.
    WarmUp,
    /// Every member read the warm-up: the senders publish.
    Send,
    /// The drain timed out: members stop waiting and count what is missing.
    Stop,
    /// Everything measured: close.
    Release,
}

/// Per-sender facts members need: its room, and how many messages it sent (final
/// once the sender is done).
struct SenderInfo {
    room: usize,
    sent: AtomicU64,
}

struct Ctx {
    cfg: ChatConfig,
    origin: Instant,
    shared: Shared,
    hists: Vec<Mutex<Histogram<u64>>>,
    senders: Vec<SenderInfo>,
    phase: watch::Receiver<Phase>,
}

impl Ctx {
    fn room_name(&self, room: usize) -> String {
        format!("{}{}", self.cfg.room_prefix, room)
    }
    fn us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

/// Runs `bench chat` and returns what it measured.
pub fn run_chat(cfg: &ChatConfig) -> anyhow::Result<ChatReport> {
    anyhow::ensure!(cfg.rooms > 0, "--rooms must be at least 1");
    anyhow::ensure!(
        cfg.senders >= cfg.rooms && cfg.senders <= cfg.members,
        "--senders must be at least --rooms (a sender per room) and at most --members"
    );
    anyhow::ensure!(
        cfg.rate > 0.0 && cfg.rate.is_finite(),
        "--rate must be positive"
    );
    anyhow::ensure!(
        cfg.src_ips > 0 && cfg.src_ips < 255,
        "--src-ips must be 1..=254"
    );
    anyhow::ensure!(
        !cfg.room_prefix.is_empty()
            && crate::hub::valid_room(&format!("{}{}", cfg.room_prefix, cfg.rooms)),
        "--room-prefix must make valid room names"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(drive(cfg.clone()))
}

async fn drive(cfg: ChatConfig) -> anyhow::Result<ChatReport> {
    let (phase_tx, phase) = watch::channel(Phase::Setup);
    let senders = (0..cfg.senders)
        .map(|j| SenderInfo {
            room: j % cfg.rooms,
            sent: AtomicU64::new(0),
        })
        .collect();
    let ctx = Arc::new(Ctx {
        hists: (0..HISTS).map(|_| Mutex::new(histogram())).collect(),
        origin: Instant::now(),
        shared: Shared::default(),
        senders,
        phase,
        cfg,
    });
    let cfg = &ctx.cfg;
    let setup_deadline = ctx.origin + cfg.setup_timeout;
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let mut tasks = Vec::with_capacity(cfg.members);
    for i in 0..cfg.members {
        tasks.push(tokio::spawn(member::member(ctx.clone(), i, gate.clone())));
    }
    let sh = &ctx.shared;
    let all = cfg.members;
    let reached = |c: &AtomicUsize| c.load(Ordering::Relaxed) >= all;
    let failed = || sh.abort.load(Ordering::Relaxed);
    let ok = wait_until(setup_deadline, || reached(&sh.joined) || failed()).await;
    anyhow::ensure!(
        ok && !failed(),
        "setup failed: {} of {all} members joined ({} connection errors, first: {})",
        sh.joined.load(Ordering::Relaxed),
        sh.conn.load(Ordering::Relaxed),
        first_failure(sh)
    );
    let _ = phase_tx.send(Phase::WarmUp);
    let ok = wait_until(setup_deadline, || reached(&sh.warm) || failed()).await;
    anyhow::ensure!(
        ok && !failed(),
        "warm-up failed: {} of {all} members read it ({} connection errors, {} slow-consumer drops, first failure: {})",
        sh.warm.load(Ordering::Relaxed),
        sh.conn.load(Ordering::Relaxed),
        sh.slow_drops.load(Ordering::Relaxed),
        first_failure(sh)
    );
    let setup_secs = ctx.origin.elapsed().as_secs_f64();

    let server_before = cfg.server_pid.map(proc::sample_tree).transpose()?;
    let tester_before = proc::sample(None)?;
    let send_start = ctx.us();
    let _ = phase_tx.send(Phase::Send);
    let drain_deadline = Instant::now() + cfg.duration + cfg.drain_timeout;
    let mut peak = proc::Sample::default();
    while !reached(&sh.finished) && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(Ok(s)) = cfg.server_pid.map(proc::sample_tree) {
            peak.rss_kib = peak.rss_kib.max(s.rss_kib);
            peak.threads = peak.threads.max(s.threads);
        }
    }
    let server_after = cfg.server_pid.map(proc::sample_tree).transpose()?;
    let tester_after = proc::sample(None)?;
    let _ = phase_tx.send(Phase::Stop);
    // Members count what they miss at `Stop`; then everyone closes.
    wait_until(Instant::now() + Duration::from_secs(5), || {
        reached(&sh.finished)
    })
    .await;
    let _ = phase_tx.send(Phase::Release);
    for t in tasks {
        let _ = t.await;
    }

    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let deliveries = g(&sh.deliveries);
    let last = g(&sh.last_delivery_us).max(send_start);
    let secs = (last - send_start) as f64 / 1e6;
    let mut hist = histogram();
    for h in &ctx.hists {
        let h = h.lock().unwrap_or_else(|e| e.into_inner());
        let _ = hist.add(&*h);
    }
    let per_room = |r: usize| (0..cfg.members).filter(|i| i % cfg.rooms == r).count() as u64;
    let sent: u64 = ctx.senders.iter().map(|s| g(&s.sent)).sum();
    let expected: u64 = ctx
        .senders
        .iter()
        .map(|s| g(&s.sent) * per_room(s.room))
        .sum();
    let server = match (server_before, server_after) {
        (Some(b), Some(a)) => {
            let cpu = a.cpu_secs - b.cpu_secs;
            Some(ServerUse {
                cpu_secs: cpu,
                cpu_us_per_op: if deliveries > 0 {
                    cpu * 1e6 / deliveries as f64
                } else {
                    0.0
                },
                rss_before_kib: b.rss_kib,
                rss_after_kib: peak.rss_kib.max(a.rss_kib),
                threads_before: b.threads,
                threads_after: peak.threads.max(a.threads),
            })
        }
        _ => None,
    };
    Ok(ChatReport {
        members: cfg.members,
        rooms: cfg.rooms,
        senders: cfg.senders,
        rate: cfg.rate,
        setup_secs,
        secs,
        sent,
        deliveries,
        expected_deliveries: expected,
        deliveries_per_sec: if secs > 0.0 {
            deliveries as f64 / secs
        } else {
            0.0
        },
        latency: Latency::of(&hist),
        slow_consumer_drops: g(&sh.slow_drops),
        missed_by_dropped: g(&sh.missed_by_dropped),
        errors: ChatErrors {
            missing: g(&sh.missing),
            duplicate_or_reordered: g(&sh.dup),
            wrong: g(&sh.wrong),
            conn: g(&sh.conn),
            timeout: g(&sh.timeout),
        },
        tester_cpu_secs: tester_after.cpu_secs - tester_before.cpu_secs,
        server,
    })
}

fn first_failure(sh: &Shared) -> String {
    let first = sh.first_failure.lock().unwrap_or_else(|e| e.into_inner());
    first.clone().unwrap_or_else(|| "none".into())
}

/// Polls `done` until it holds (true) or `deadline` passes (false).
async fn wait_until(deadline: Instant, done: impl Fn() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `multiclient bench chat`: prints the report; fails when the run had errors,
/// so scripts notice.
pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    // A room's delivery times are measured from one sender's clock to every member's,
    // which a second process does not share.
    anyhow::ensure!(
        args.tester.procs == 1,
        "bench chat runs in one tester process: --procs is for ack, greet, hello, http, ws and hold"
    );
    let report = run_chat(&args.config()?)?;
    if args.tester.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    anyhow::ensure!(
        report.errors.total() == 0,
        "{} delivery or connection errors",
        report.errors.total()
    );
    Ok(())
}
