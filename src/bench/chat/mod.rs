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
//! With `--procs N` (past the ~19,900 sockets one tester process may hold) the
//! members are spread over N copies of the tester (member `i` in copy `i % N`, each
//! copy with source addresses of its own), run in step by their parent: each copy
//! says on stdout when its members have joined, read the warm-up, and finished, and
//! waits for the parent's word on stdin before the next phase, so the phases start
//! together everywhere and the parent samples the server once around the measured
//! phase. The copies share one time origin (the parent's CLOCK_MONOTONIC reading, a
//! clock every process of the machine shares), so a latency measured by a member of
//! one copy from a sender's time in another is as exact as within one process. The
//! parent merges the copies' histograms and adds their counts; it tells every copy
//! each sender's final count before they stop, so a member short of messages from a
//! sender in another copy counts them as missing.
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

use serde::{Deserialize, Serialize};

use super::fanout::{self, Copies, Share};
use super::proc;
use super::report::{histogram, Latency, ServerUse};
use super::run::default_threads;

mod member;
pub mod report;
mod sender;

pub use report::{ChatErrors, ChatReport, LastDelivery};

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
/// Most messages whose last delivery is tracked ([`LastSlots`]): 1 MiB of counters.
const TRACKED: usize = 1 << 17;

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
    /// Members connecting and joining per second, all tester processes together
    /// (default: as fast as the server takes them). A join storm of 100,000 at once
    /// is a reconnection storm no client library makes.
    #[arg(long)]
    pub ramp: Option<f64>,
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
    /// Source addresses 127.0.0.`src_first` ..= 127.0.0.`src_first + src_ips - 1`.
    pub src_ips: u8,
    /// The first source address (1, or a copy's own in a `--procs` run).
    pub src_first: u8,
    /// Members starting per second (member `i` starts `i / ramp` s after the origin).
    pub ramp: Option<f64>,
    /// This tester's copy of a `--procs` run: it runs members `i` with
    /// `i % procs == index`, in step with its parent.
    pub share: Option<Share>,
    /// The time origin of a `--procs` run ([`fanout::monotonic_us`] in the parent).
    pub origin_us: Option<u64>,
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
            src_first: 1,
            ramp: None,
            share: None,
            origin_us: None,
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
        c.ramp = self.ramp;
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
    last: LastSlots,
    senders: Vec<SenderInfo>,
    phase: watch::Receiver<Phase>,
}

impl Ctx {
    /// A run's context, its counters at zero, every task watching `phase`.
    fn new(cfg: ChatConfig, origin: Instant, phase: watch::Receiver<Phase>) -> Ctx {
        Ctx {
            hists: (0..HISTS).map(|_| Mutex::new(histogram())).collect(),
            last: LastSlots::new(&cfg),
            origin,
            shared: Shared::default(),
            senders: (0..cfg.senders)
                .map(|j| SenderInfo {
                    room: j % cfg.rooms,
                    sent: AtomicU64::new(0),
                })
                .collect(),
            phase,
            cfg,
        }
    }

    fn room_name(&self, room: usize) -> String {
        format!("{}{}", self.cfg.room_prefix, room)
    }
    fn us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

/// Each message's last delivery so far: slot `j * per_sender + n` holds the highest
/// latency at which a member read sender `j`'s message `n` (0: none yet). Empty when
/// the run would publish more than [`TRACKED`] messages.
struct LastSlots {
    per_sender: usize,
    slots: Vec<AtomicU64>,
}

impl LastSlots {
    fn new(cfg: &ChatConfig) -> LastSlots {
        // A sender publishes one message per interval of its share of the rate.
        // (A float past usize's range converts to its largest value.)
        let per_sender =
            ((cfg.duration.as_secs_f64() * cfg.rate / cfg.senders.max(1) as f64).ceil() as usize)
                .saturating_add(1);
        let n = per_sender.saturating_mul(cfg.senders);
        let slots = if n <= TRACKED {
            (0..n).map(|_| AtomicU64::new(0)).collect()
        } else {
            Vec::new()
        };
        LastSlots { per_sender, slots }
    }

    /// A member read sender `j`'s message `n` after `us` microseconds.
    fn note(&self, j: usize, n: u64, us: u64) {
        let Ok(n) = usize::try_from(n) else { return };
        let at = j
            .checked_mul(self.per_sender)
            .and_then(|a| a.checked_add(n));
        if let Some(slot) = at
            .filter(|_| n < self.per_sender)
            .and_then(|i| self.slots.get(i))
        {
            slot.fetch_max(us.max(1), Ordering::Relaxed);
        }
    }

    /// Every slot's value, or `None` when nothing is tracked.
    fn values(&self) -> Option<Vec<u64>> {
        (!self.slots.is_empty()).then(|| {
            self.slots
                .iter()
                .map(|s| s.load(Ordering::Relaxed))
                .collect()
        })
    }
}

/// What a copy of a `--procs` run writes on stdout, one JSON object a line.
#[derive(Debug, Serialize, Deserialize)]
enum ChatLine {
    /// The copy reached a phase (`joined`, `warm`, `finished`) and waits for the
    /// parent's word; `sent` is what each sender sent (zero for other copies').
    Reached {
        /// The phase.
        phase: String,
        /// Messages sent, by sender.
        sent: Vec<u64>,
    },
    /// The copy's report and its latency histogram as (value µs, count) pairs.
    Report {
        /// The report of this copy's members.
        report: Box<ChatReport>,
        /// Its histogram.
        histogram: Vec<(u64, u64)>,
        /// Its members' last delivery of each message ([`LastSlots`]).
        #[serde(default)]
        last: Option<Vec<u64>>,
    },
}

/// The parent's words to a copy, one a line on its stdin.
type Link = tokio::sync::mpsc::UnboundedReceiver<String>;

fn check(cfg: &ChatConfig) -> anyhow::Result<()> {
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
        cfg.ramp.is_none_or(|r| r > 0.0 && r.is_finite()),
        "--ramp must be positive"
    );
    anyhow::ensure!(
        !cfg.room_prefix.is_empty()
            && crate::hub::valid_room(&format!("{}{}", cfg.room_prefix, cfg.rooms)),
        "--room-prefix must make valid room names"
    );
    Ok(())
}

fn runtime(cfg: &ChatConfig) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .enable_all()
        .build()?)
}

/// Runs `bench chat` and returns what it measured.
pub fn run_chat(cfg: &ChatConfig) -> anyhow::Result<ChatReport> {
    check(cfg)?;
    Ok(runtime(cfg)?.block_on(drive(cfg.clone(), None))?.0)
}

/// One copy of a `--procs` run: runs its share of the members in step with the
/// parent (its words come on stdin) and writes its report on stdout.
fn run_chat_child(cfg: &ChatConfig) -> anyhow::Result<()> {
    check(cfg)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        // The end of stdin (the parent gone) closes the channel: the copy stops.
        for line in std::io::stdin().lock().lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    runtime(cfg)?.block_on(drive(cfg.clone(), Some(rx)))?;
    Ok(())
}

/// Runs the chat workload over `procs` tester processes, in step (see the module
/// documentation), and sums what they measured: counts and errors added, latency
/// histograms merged, the server sampled once around the measured phase.
pub fn run_chat_fanout(cfg: &ChatConfig, procs: usize) -> anyhow::Result<ChatReport> {
    check(cfg)?;
    fanout::check(procs, cfg.src_ips)?;
    anyhow::ensure!(
        cfg.members >= procs,
        "--members {} is fewer than --procs {procs}",
        cfg.members
    );
    let start = std::time::Instant::now();
    let origin = fanout::monotonic_us().to_string();
    let mut copies = Copies::start_with(procs, &[(fanout::ORIGIN_ENV, origin)])?;
    reached(&mut copies, "joined")?;
    copies.tell("warm")?;
    reached(&mut copies, "warm")?;
    let setup_secs = start.elapsed().as_secs_f64();
    eprintln!(
        "bench: {} members joined and warm in {procs} tester processes ({setup_secs:.1} s)",
        cfg.members
    );
    let server_before = cfg.server_pid.map(proc::sample_tree).transpose()?;
    copies.tell("send")?;
    let sent = reached(&mut copies, "finished")?;
    let server_after = cfg.server_pid.map(proc::sample_tree).transpose()?;
    let sent: Vec<String> = sent.iter().map(u64::to_string).collect();
    copies.tell(&format!("stop {}", sent.join(",")))?;
    let mut reports = Vec::with_capacity(procs);
    let mut hist = histogram();
    let mut lasts = Vec::with_capacity(procs);
    for (i, line) in copies
        .next_json::<ChatLine>("its report")?
        .into_iter()
        .enumerate()
    {
        match line {
            ChatLine::Report {
                report,
                histogram,
                last,
            } => {
                fanout::add_pairs(&mut hist, &histogram)?;
                reports.push(*report);
                lasts.push(last);
            }
            ChatLine::Reached { phase, .. } => {
                anyhow::bail!("tester process {i} wrote {phase:?} instead of its report")
            }
        }
    }
    copies.finish()?;
    let sum = |f: fn(&ChatReport) -> u64| reports.iter().map(f).sum::<u64>();
    let secs = reports.iter().map(|r| r.secs).fold(0.0, f64::max);
    let deliveries = sum(|r| r.deliveries);
    let errors = ChatErrors {
        missing: sum(|r| r.errors.missing),
        duplicate_or_reordered: sum(|r| r.errors.duplicate_or_reordered),
        wrong: sum(|r| r.errors.wrong),
        conn: sum(|r| r.errors.conn),
        timeout: sum(|r| r.errors.timeout),
    };
    Ok(ChatReport {
        members: cfg.members,
        rooms: cfg.rooms,
        senders: cfg.senders,
        rate: cfg.rate,
        setup_secs,
        secs,
        sent: sum(|r| r.sent),
        deliveries,
        expected_deliveries: sum(|r| r.expected_deliveries),
        deliveries_per_sec: if secs > 0.0 {
            deliveries as f64 / secs
        } else {
            0.0
        },
        latency: Latency::of(&hist),
        last_delivery: lasts
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .and_then(latest_each)
            .as_deref()
            .and_then(LastDelivery::of),
        slow_consumer_drops: sum(|r| r.slow_consumer_drops),
        missed_by_dropped: sum(|r| r.missed_by_dropped),
        errors,
        tester_cpu_secs: reports.iter().map(|r| r.tester_cpu_secs).sum(),
        server: server_use(server_before, server_after, None, deliveries),
    })
}

/// Each message's last delivery over every copy's ([`LastSlots::values`]); `None` if
/// the copies' layouts differ.
fn latest_each(copies: Vec<Vec<u64>>) -> Option<Vec<u64>> {
    let mut it = copies.into_iter();
    let mut all = it.next()?;
    for l in it {
        if l.len() != all.len() {
            return None;
        }
        for (a, b) in all.iter_mut().zip(l) {
            *a = (*a).max(b);
        }
    }
    Some(all)
}

/// Reads every copy's next line, which must say it reached `phase`; returns what the
/// senders sent, summed over the copies.
fn reached(copies: &mut Copies, phase: &str) -> anyhow::Result<Vec<u64>> {
    let mut sent = Vec::new();
    for (i, line) in copies.next_json::<ChatLine>(phase)?.into_iter().enumerate() {
        match line {
            ChatLine::Reached { phase: p, sent: s } if p == phase => {
                sent.resize(sent.len().max(s.len()), 0);
                for (total, n) in sent.iter_mut().zip(s) {
                    *total += n;
                }
            }
            other => anyhow::bail!("tester process {i} wrote {other:?} instead of {phase}"),
        }
    }
    Ok(sent)
}

/// In a copy: says the copy reached `phase` and waits for the parent's `next` (what
/// follows the word on its line is returned). Nothing to wait for in a lone tester.
async fn step(
    link: &mut Option<Link>,
    ctx: &Ctx,
    phase: &str,
    next: &str,
) -> anyhow::Result<String> {
    let Some(rx) = link else {
        return Ok(String::new());
    };
    let sent = ctx
        .senders
        .iter()
        .map(|s| s.sent.load(Ordering::Relaxed))
        .collect();
    fanout::emit_json(&ChatLine::Reached {
        phase: phase.into(),
        sent,
    })?;
    let line = rx
        .recv()
        .await
        .ok_or_else(|| anyhow::anyhow!("the parent tester ended the run before {next}"))?;
    let rest = line
        .strip_prefix(next)
        .ok_or_else(|| anyhow::anyhow!("the parent tester said {line:?}, not {next}"))?;
    Ok(rest.trim().to_string())
}

/// The server's CPU per delivery and its memory over the measured phase.
fn server_use(
    before: Option<proc::Sample>,
    after: Option<proc::Sample>,
    peak: Option<&proc::Sample>,
    deliveries: u64,
) -> Option<ServerUse> {
    let (b, a) = (before?, after?);
    let cpu = a.cpu_secs - b.cpu_secs;
    Some(ServerUse {
        cpu_secs: cpu,
        cpu_us_per_op: if deliveries > 0 {
            cpu * 1e6 / deliveries as f64
        } else {
            0.0
        },
        rss_before_kib: b.rss_kib,
        rss_after_kib: peak.map_or(0, |p| p.rss_kib).max(a.rss_kib),
        threads_before: b.threads,
        threads_after: peak.map_or(0, |p| p.threads).max(a.threads),
    })
}

async fn drive(
    cfg: ChatConfig,
    mut link: Option<Link>,
) -> anyhow::Result<(ChatReport, Histogram<u64>)> {
    let (phase_tx, phase) = watch::channel(Phase::Setup);
    let origin = match cfg.origin_us {
        Some(us) => Instant::from_std(fanout::instant_of(us)),
        None => Instant::now(),
    };
    let mine: Vec<usize> = (0..cfg.members)
        .filter(|i| cfg.share.is_none_or(|s| i % s.procs == s.index))
        .collect();
    let ctx = Arc::new(Ctx::new(cfg, origin, phase));
    let cfg = &ctx.cfg;
    let setup_deadline = ctx.origin + cfg.setup_timeout;
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let mut tasks = Vec::with_capacity(mine.len());
    for &i in &mine {
        tasks.push(tokio::spawn(member::member(ctx.clone(), i, gate.clone())));
    }
    let sh = &ctx.shared;
    let all = mine.len();
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
    step(&mut link, &ctx, "joined", "warm").await?;
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
    step(&mut link, &ctx, "warm", "send").await?;
    let setup_secs = ctx.origin.elapsed().as_secs_f64();

    let server_before = cfg.server_pid.map(proc::sample_tree).transpose()?;
    let tester_before = proc::sample(None)?;
    let send_start = ctx.us();
    let _ = phase_tx.send(Phase::Send);
    let drain_deadline = Instant::now() + cfg.duration + cfg.drain_timeout;
    let sampler = cfg
        .server_pid
        .map(|pid| proc::Peak::start(pid, Duration::from_millis(20)))
        .transpose()?;
    while !reached(&sh.finished) && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak = sampler.map(proc::Peak::finish).unwrap_or_default();
    let server_after = cfg.server_pid.map(proc::sample_tree).transpose()?;
    let tester_after = proc::sample(None)?;
    // What this process's senders sent, before the counts of every copy's come.
    let sent_here: Vec<u64> = ctx
        .senders
        .iter()
        .map(|s| s.sent.load(Ordering::Relaxed))
        .collect();
    let every = step(&mut link, &ctx, "finished", "stop").await?;
    for (info, n) in ctx.senders.iter().zip(every.split(',')) {
        if let Ok(n) = n.parse() {
            info.sent.store(n, Ordering::Relaxed);
        }
    }
    let _ = phase_tx.send(Phase::Stop);
    // Members count what they miss at `Stop`; then everyone closes.
    wait_until(Instant::now() + Duration::from_secs(5), || {
        reached(&sh.finished)
    })
    .await;

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
    let sent: u64 = sent_here.iter().sum();
    let expected: u64 = ctx
        .senders
        .iter()
        .zip(&sent_here)
        .map(|(s, n)| n * per_room(s.room))
        .sum();
    let report = ChatReport {
        members: all,
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
        last_delivery: ctx.last.values().as_deref().and_then(LastDelivery::of),
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
        server: server_use(server_before, server_after, Some(&peak), deliveries),
    };
    if let Some(rx) = link.as_mut() {
        // Every copy's members stay connected until the parent has every report.
        fanout::emit_json(&ChatLine::Report {
            report: Box::new(report.clone()),
            histogram: fanout::histogram_pairs(&hist),
            last: ctx.last.values(),
        })?;
        let _ = rx.recv().await;
    }
    let _ = phase_tx.send(Phase::Release);
    for t in tasks {
        let _ = t.await;
    }
    Ok((report, hist))
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
/// so scripts notice. With `--procs N`, over N tester processes in step.
pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let mut cfg = args.config()?;
    let report = match (Share::from_env()?, args.tester.procs) {
        (Some(share), _) => {
            let origin = std::env::var(fanout::ORIGIN_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    anyhow::anyhow!("a chat tester copy needs {}", fanout::ORIGIN_ENV)
                })?;
            cfg.share = Some(share);
            cfg.src_first = share.first_source(cfg.src_ips);
            cfg.origin_us = Some(origin);
            return run_chat_child(&cfg);
        }
        (None, 1) => run_chat(&cfg)?,
        (None, n) => run_chat_fanout(&cfg, n)?,
    };
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

#[cfg(test)]
mod tests {
    use super::latest_each;

    #[test]
    fn the_copies_last_deliveries_merge_message_by_message() {
        assert_eq!(
            latest_each(vec![vec![5, 0, 7], vec![3, 4, 9], vec![6, 0, 0]]),
            Some(vec![6, 4, 9])
        );
        // Copies that tracked different runs give no figure.
        assert_eq!(latest_each(vec![vec![5, 0], vec![3, 4, 9]]), None);
        assert_eq!(latest_each(Vec::new()), None);
    }
}
