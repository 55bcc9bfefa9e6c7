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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::proc;
use super::report::{histogram, ErrorKind, Latency, ServerUse};
use super::run::{default_threads, source_ip};
use super::workload::connect;

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

/// Delivery errors and connection failures, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChatErrors {
    /// Messages a member never got (a gap in a sender's sequence, or short of its
    /// end mark), members dropped as slow consumers excepted.
    pub missing: u64,
    /// Messages a member got twice or out of its sender's order.
    pub duplicate_or_reordered: u64,
    /// Lines that are not what the protocol says (wrong room, unknown sender, bad
    /// text, an unexpected `ERR`).
    pub wrong: u64,
    /// Connections that failed to open, join or warm up, or that the server closed or
    /// reset before the end.
    pub conn: u64,
    /// Members still short of some end mark when the drain timed out.
    pub timeout: u64,
}

impl ChatErrors {
    /// Errors of all kinds.
    pub fn total(&self) -> u64 {
        self.missing + self.duplicate_or_reordered + self.wrong + self.conn + self.timeout
    }
}

/// What a chat run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ChatReport {
    /// Members (connections).
    pub members: usize,
    /// Rooms.
    pub rooms: usize,
    /// Senders.
    pub senders: usize,
    /// Target messages per second.
    pub rate: f64,
    /// Seconds to connect, join and warm up.
    pub setup_secs: f64,
    /// Seconds from the first send to the last delivery (or the drain timeout).
    pub secs: f64,
    /// Messages sent (measured ones; the warm-up and end marks excluded).
    pub sent: u64,
    /// Messages delivered (each message once per member of its room).
    pub deliveries: u64,
    /// What a lossless run delivers: each sender's count times its room's members.
    pub expected_deliveries: u64,
    /// Deliveries per second over `secs`.
    pub deliveries_per_sec: f64,
    /// Send-to-delivery latency, from the intended send time.
    pub latency: Latency,
    /// Members the server dropped as slow consumers (`ERR slow-consumer`).
    pub slow_consumer_drops: u64,
    /// Messages the dropped members did not get (not counted as errors).
    pub missed_by_dropped: u64,
    /// Errors by kind.
    pub errors: ChatErrors,
    /// Tester CPU over the measured phase, in seconds.
    pub tester_cpu_secs: f64,
    /// Server CPU over the measured phase (`cpu_us_per_op` is per delivery).
    pub server: Option<ServerUse>,
}

impl ChatReport {
    /// The human summary.
    pub fn summary(&self) -> String {
        let l = &self.latency;
        let e = &self.errors;
        let mut s = format!(
            "chat: {} members in {} rooms, {} senders at {} msg/s (setup {:.1} s)\n\
             \x20 sent {} messages, {} of {} deliveries in {:.2} s = {:.0} deliveries/s\n\
             \x20 latency p50 {} us, p99 {} us, p99.9 {} us, max {} us\n\
             \x20 slow-consumer drops {} ({} deliveries missed by them)\n\
             \x20 errors {}: missing {}, duplicate/reordered {}, wrong {}, conn {}, timeout {}\n\
             \x20 tester CPU {:.2} s\n",
            self.members,
            self.rooms,
            self.senders,
            self.rate,
            self.setup_secs,
            self.sent,
            self.deliveries,
            self.expected_deliveries,
            self.secs,
            self.deliveries_per_sec,
            l.p50_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            self.slow_consumer_drops,
            self.missed_by_dropped,
            e.total(),
            e.missing,
            e.duplicate_or_reordered,
            e.wrong,
            e.conn,
            e.timeout,
            self.tester_cpu_secs,
        );
        if let Some(sv) = &self.server {
            s += &format!(
                "  server CPU {:.3} s = {:.3} us per delivery, RSS {} -> {} KiB, threads {}\n",
                sv.cpu_secs,
                sv.cpu_us_per_op,
                sv.rss_before_kib,
                sv.rss_after_kib,
                sv.threads_after
            );
        }
        s
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
        tasks.push(tokio::spawn(member(ctx.clone(), i, gate.clone())));
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

    let server_before = cfg.server_pid.map(|p| proc::sample(Some(p))).transpose()?;
    let tester_before = proc::sample(None)?;
    let send_start = ctx.us();
    let _ = phase_tx.send(Phase::Send);
    let drain_deadline = Instant::now() + cfg.duration + cfg.drain_timeout;
    let mut peak = proc::Sample::default();
    while !reached(&sh.finished) && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(Ok(s)) = cfg.server_pid.map(|p| proc::sample(Some(p))) {
            peak.rss_kib = peak.rss_kib.max(s.rss_kib);
            peak.threads = peak.threads.max(s.threads);
        }
    }
    let server_after = cfg.server_pid.map(|p| proc::sample(Some(p))).transpose()?;
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

/// What a member is waiting for in its lines.
struct Member {
    i: usize,
    room: String,
    /// The senders of its room: (sender index, next sequence expected, end mark seen).
    expect: Vec<(usize, u64, bool)>,
    warm: bool,
    ended: usize,
    lat: Vec<u64>,
}

/// One member: connect, join, read until every sender of its room has ended (or the
/// run stops), then hold the connection until released.
async fn member(ctx: Arc<Ctx>, i: usize, gate: Arc<Semaphore>) {
    let sh = &ctx.shared;
    let room_ix = i % ctx.cfg.rooms;
    let mut m = Member {
        i,
        room: ctx.room_name(room_ix),
        expect: (0..ctx.cfg.senders)
            .filter(|&j| ctx.senders[j].room == room_ix)
            .map(|j| (j, 0, false))
            .collect(),
        warm: false,
        ended: 0,
        lat: Vec::new(),
    };
    let setup = tokio::time::timeout_at(ctx.origin + ctx.cfg.setup_timeout, async {
        let io = |k: ErrorKind| k.name().to_string();
        let permit = gate
            .acquire()
            .await
            .map_err(|_| "closed gate".to_string())?;
        let s = connect(ctx.cfg.addr, source_ip(i, ctx.cfg.src_ips))
            .await
            .map_err(io)?;
        drop(permit);
        let (mut r, mut w) = s.into_split();
        let mut buf = Vec::with_capacity(READ_BUF);
        let welcome = read_line(&mut r, &mut buf).await.map_err(io)?;
        if !welcome.starts_with("WELCOME ") {
            return Err(format!("got {welcome:?} for WELCOME"));
        }
        w.write_all(format!("JOIN {}\n", m.room).as_bytes())
            .await
            .map_err(|e| io(ErrorKind::of_io(&e)))?;
        let ok = format!("OK JOIN {}", m.room);
        loop {
            let line = read_line(&mut r, &mut buf).await.map_err(io)?;
            if line == ok {
                break;
            }
            if line.starts_with("ERR") {
                return Err(format!("got {line:?} for JOIN"));
            }
        }
        Ok::<_, String>((r, w, buf))
    })
    .await;
    let (r, w, buf) = match setup {
        Ok(Ok(x)) => x,
        Ok(Err(why)) => return fail_setup(&ctx, i, why),
        Err(_) => return fail_setup(&ctx, i, "setup timeout".into()),
    };
    sh.joined.fetch_add(1, Ordering::Relaxed);
    let sender = if i < ctx.cfg.senders {
        Some(tokio::spawn(send(ctx.clone(), i, w)))
    } else {
        // Kept open until the release: dropping it would shut our side down.
        drop_later(ctx.clone(), w);
        None
    };
    read_loop(&ctx, &mut m, r, buf).await;
    if let Some(t) = sender {
        let _ = t.await;
    }
}

/// Counts a member that could not connect or join and stops the run, keeping the
/// first reason for the error message.
fn fail_setup(ctx: &Ctx, i: usize, why: String) {
    ctx.shared.conn.fetch_add(1, Ordering::Relaxed);
    let mut first = ctx
        .shared
        .first_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    first.get_or_insert_with(|| format!("member {i}: {why}"));
    ctx.shared.abort.store(true, Ordering::Relaxed);
}

/// Keeps a receiver's write half open until the release.
fn drop_later(ctx: Arc<Ctx>, w: OwnedWriteHalf) {
    tokio::spawn(async move {
        let mut phase = ctx.phase.clone();
        let _ = phase.wait_for(|p| *p >= Phase::Release).await;
        drop(w);
    });
}

/// Reads one line during setup (the member then keeps what follows it in `buf`).
async fn read_line(r: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Result<String, ErrorKind> {
    loop {
        if let Some(n) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[..n])
                .trim_end_matches('\r')
                .to_string();
            buf.drain(..=n);
            return Ok(line);
        }
        if buf.len() > MAX_LINE {
            return Err(ErrorKind::WrongReply);
        }
        buf.reserve(READ_BUF);
        let n = r.read_buf(buf).await.map_err(|e| ErrorKind::of_io(&e))?;
        if n == 0 {
            return Err(ErrorKind::Closed);
        }
    }
}

/// What a line meant to the member.
enum Seen {
    Nothing,
    /// `ERR slow-consumer`: the server dropped this member.
    Dropped,
}

/// The member's read loop: batch reads, every complete line handled in place.
async fn read_loop(ctx: &Ctx, m: &mut Member, mut r: OwnedReadHalf, mut buf: Vec<u8>) {
    let sh = &ctx.shared;
    let mut phase = ctx.phase.clone();
    let mut finished = false;
    let finish = |finished: &mut bool| {
        if !*finished {
            *finished = true;
            sh.finished.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        // Handle every complete line in the buffer.
        let mut start = 0;
        let mut dropped = false;
        let now_us = ctx.us();
        while let Some(n) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + n];
            start += n + 1;
            if let Seen::Dropped = handle_line(ctx, m, line, now_us) {
                dropped = true;
                break;
            }
        }
        buf.drain(..start);
        record(ctx, m);
        if dropped {
            sh.slow_drops.fetch_add(1, Ordering::Relaxed);
            let missed = unread(ctx, m);
            sh.missed_by_dropped.fetch_add(missed, Ordering::Relaxed);
            finish(&mut finished);
            return;
        }
        if m.ended == m.expect.len() && m.warm && !finished {
            finish(&mut finished);
        }
        if buf.len() > MAX_LINE {
            sh.wrong.fetch_add(1, Ordering::Relaxed);
            finish(&mut finished);
            return;
        }
        if buf.capacity() - buf.len() < READ_BUF / 2 {
            buf.reserve(READ_BUF);
        }
        tokio::select! {
            res = r.read_buf(&mut buf) => match res {
                Ok(0) | Err(_) => {
                    if !finished {
                        // Closed or reset before the end: a connection error, and
                        // whatever it had still to get is missing.
                        sh.conn.fetch_add(1, Ordering::Relaxed);
                        let missed = unread(ctx, m);
                        sh.missing.fetch_add(missed, Ordering::Relaxed);
                        finish(&mut finished);
                    }
                    return;
                }
                Ok(_) => {}
            },
            p = phase.wait_for(|p| *p >= Phase::Stop) => {
                let p = p.map(|p| *p).unwrap_or(Phase::Release);
                if !finished {
                    sh.timeout.fetch_add(1, Ordering::Relaxed);
                    let missed = unread(ctx, m);
                    sh.missing.fetch_add(missed, Ordering::Relaxed);
                    finish(&mut finished);
                }
                if p >= Phase::Release {
                    return;
                }
                break;
            }
        }
    }
    // Finished: hold the connection (reading nothing more) until released.
    let _ = phase.wait_for(|p| *p >= Phase::Release).await;
}

/// Messages of this member's senders it has not read yet (final counts once the
/// senders are done).
fn unread(ctx: &Ctx, m: &Member) -> u64 {
    m.expect
        .iter()
        .map(|&(j, next, _)| {
            ctx.senders[j]
                .sent
                .load(Ordering::Relaxed)
                .saturating_sub(next)
        })
        .sum()
}

/// Moves the latencies of one batch into the member's shared histogram.
fn record(ctx: &Ctx, m: &mut Member) {
    if m.lat.is_empty() {
        return;
    }
    let n = m.lat.len() as u64;
    {
        let mut h = ctx.hists[m.i % HISTS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &us in &m.lat {
            let _ = h.record(us.max(1));
        }
    }
    m.lat.clear();
    let sh = &ctx.shared;
    sh.deliveries.fetch_add(n, Ordering::Relaxed);
    sh.last_delivery_us.fetch_max(ctx.us(), Ordering::Relaxed);
}

/// Checks one line; counts what is wrong.
fn handle_line(ctx: &Ctx, m: &mut Member, line: &[u8], now_us: u64) -> Seen {
    let sh = &ctx.shared;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let wrong = || {
        sh.wrong.fetch_add(1, Ordering::Relaxed);
        Seen::Nothing
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return wrong();
    };
    if line == "ERR slow-consumer" {
        return Seen::Dropped;
    }
    let Some(rest) = line.strip_prefix("MSG ") else {
        // Presence events (JOIN, PART, NICK) of the room are not what is measured.
        return if line.starts_with("ERR") {
            wrong()
        } else {
            Seen::Nothing
        };
    };
    // MSG <room> <id> <nick> <text>
    let mut f = rest.splitn(4, ' ');
    let (Some(room), Some(_id), Some(_nick), Some(text)) = (f.next(), f.next(), f.next(), f.next())
    else {
        return wrong();
    };
    if room != m.room {
        return wrong();
    }
    let mut t = text.split(' ');
    let (Some(kind), Some(j), Some(n)) = (t.next(), t.next(), t.next()) else {
        return wrong();
    };
    let (Ok(j), Ok(n)) = (j.parse::<usize>(), n.parse::<u64>()) else {
        return wrong();
    };
    let Some(e) = m.expect.iter_mut().find(|e| e.0 == j) else {
        return wrong();
    };
    match kind {
        // The warm-up, said by the room's first sender.
        "w" => m.warm_up(sh),
        "m" => {
            let Some(Ok(at)) = t.next().map(str::parse::<u64>) else {
                return wrong();
            };
            if e.2 {
                // After the end mark.
                sh.dup.fetch_add(1, Ordering::Relaxed);
            } else if n == e.1 {
                e.1 += 1;
                m.lat.push(now_us.saturating_sub(at));
            } else if n > e.1 {
                sh.missing.fetch_add(n - e.1, Ordering::Relaxed);
                e.1 = n + 1;
                m.lat.push(now_us.saturating_sub(at));
            } else {
                sh.dup.fetch_add(1, Ordering::Relaxed);
            }
        }
        "e" => {
            if !e.2 {
                e.2 = true;
                m.ended += 1;
                sh.missing
                    .fetch_add(n.saturating_sub(e.1), Ordering::Relaxed);
                e.1 = e.1.max(n);
            } else {
                sh.dup.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => return wrong(),
    }
    Seen::Nothing
}

impl Member {
    fn warm_up(&mut self, sh: &Shared) {
        if !self.warm {
            self.warm = true;
            sh.warm.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A sender: the warm-up (first sender of each room), then its share of the rate on
/// a fixed schedule (messages already due are written together), then its end mark.
async fn send(ctx: Arc<Ctx>, j: usize, mut w: OwnedWriteHalf) {
    let sh = &ctx.shared;
    let info = &ctx.senders[j];
    let room = ctx.room_name(info.room);
    let mut phase = ctx.phase.clone();
    // A failed write is a connection error; the members count what never came.
    let fail = |_: std::io::Error| {
        sh.conn.fetch_add(1, Ordering::Relaxed);
    };
    if phase.wait_for(|p| *p >= Phase::WarmUp).await.is_err() {
        return;
    }
    if j < ctx.cfg.rooms {
        if let Err(e) = w
            .write_all(format!("SAY {room} w {j} 0\n").as_bytes())
            .await
        {
            return fail(e);
        }
    }
    match phase.wait_for(|p| *p >= Phase::Send).await {
        Ok(p) if *p == Phase::Send => {}
        _ => return,
    }
    let interval = Duration::from_secs_f64(ctx.cfg.senders as f64 / ctx.cfg.rate);
    let start = Instant::now();
    let end = start + ctx.cfg.duration;
    // Spread the senders' schedules over one interval.
    let mut next = start + interval.mul_f64(j as f64 / ctx.cfg.senders as f64);
    let mut seq = 0u64;
    let mut out = String::new();
    while next < end {
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        out.clear();
        while next <= now && next < end {
            let at = (next - ctx.origin).as_micros();
            out += &format!("SAY {room} m {j} {seq} {at}\n");
            seq += 1;
            next += interval;
        }
        if let Err(e) = w.write_all(out.as_bytes()).await {
            info.sent.store(seq, Ordering::Relaxed);
            return fail(e);
        }
        info.sent.store(seq, Ordering::Relaxed);
    }
    if let Err(e) = w
        .write_all(format!("SAY {room} e {j} {seq}\n").as_bytes())
        .await
    {
        return fail(e);
    }
    let _ = phase.wait_for(|p| *p >= Phase::Release).await;
}

/// Runs `multiclient bench chat`: prints the report; fails when the run had errors,
/// so scripts notice.
pub fn run(args: ChatArgs) -> anyhow::Result<()> {
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
