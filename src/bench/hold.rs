//! The `hold` workload: open N connections at a steady ramp, keep them open and idle,
//! and measure what they cost the server (RSS and threads before and after, from
//! /proc): memory per connection, and the ceiling of a model (refused or reset
//! connections when it runs out of threads or descriptors).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::fanout::{self, ChildLine, Copies, Share};
use super::proc;
use super::report::ErrorKind;
use super::workload::{self, connect};

/// How a held connection proves that the server serves it (not only that the kernel
/// queued it in the backlog).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Probe {
    /// Send one message and wait for `ACK!`.
    Ack,
    /// Wait for the greeting.
    Greet,
    /// Nothing: the connection counts as established once connected.
    None,
}

/// What to hold.
#[derive(Debug, Clone)]
pub struct HoldConfig {
    /// The server.
    pub addr: SocketAddr,
    /// Connections to open.
    pub conns: usize,
    /// Connections opened per second.
    pub ramp: f64,
    /// How long to keep them open once all are up.
    pub hold: Duration,
    /// How long one connect (and probe) may take.
    pub timeout: Duration,
    /// The proof of service.
    pub probe: Probe,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N.
    pub src_ips: u8,
    /// The first source address's last octet (1 unless this is one copy of a
    /// `--procs` run): the addresses are 127.0.0.`src_first` onwards.
    pub src_first: u8,
    /// The server's PID, for its RSS and threads (its child processes summed).
    pub server_pid: Option<u32>,
    /// Tester threads.
    pub threads: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// One copy of a `--procs` run: once the connections are open, say so on stdout
    /// and hold them until the parent's line on stdin instead of for `hold`.
    pub gate: bool,
}

impl HoldConfig {
    /// Copy `share`'s part of this hold: its connections, its part of the ramp and
    /// its own source addresses.
    pub fn share(&self, share: Share) -> HoldConfig {
        HoldConfig {
            conns: share.part(self.conns),
            ramp: self.ramp / share.procs as f64,
            src_first: share.first_source(self.src_ips),
            server_pid: None,
            progress: false,
            gate: true,
            ..self.clone()
        }
    }
}

/// What a hold measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HoldReport {
    /// Connections asked for.
    pub conns: usize,
    /// Connections opened (and probed) successfully.
    pub established: u64,
    /// Connections refused.
    pub refused: u64,
    /// Connections reset, while opening or while held.
    pub reset: u64,
    /// Connections the server closed while they were held.
    pub closed: u64,
    /// Connects or probes that timed out.
    pub timeout: u64,
    /// Probes answered with the wrong bytes, and other failures.
    pub other: u64,
    /// Seconds the ramp took.
    pub ramp_secs: f64,
    /// Server RSS before, in KiB.
    pub rss_before_kib: Option<u64>,
    /// Server RSS with every connection held, in KiB.
    pub rss_held_kib: Option<u64>,
    /// Server threads before.
    pub threads_before: Option<u64>,
    /// Server threads with every connection held.
    pub threads_held: Option<u64>,
    /// Connections established when the server was sampled.
    pub established_at_sample: u64,
    /// (RSS held − RSS before) / connections established at the sample, in KiB.
    pub kib_per_conn: Option<f64>,
    /// Server anonymous RSS (heap and stacks) before, in KiB.
    pub rss_anon_before_kib: Option<u64>,
    /// Server anonymous RSS with every connection held, in KiB.
    pub rss_anon_held_kib: Option<u64>,
    /// The kernel's TCP memory before (machine-wide: both ends on loopback).
    pub kernel_before: Option<proc::Kernel>,
    /// The kernel's TCP memory with every connection held.
    pub kernel_held: Option<proc::Kernel>,
    /// Tester processes (`--procs`).
    #[serde(default)]
    pub procs: usize,
    /// Connections each tester process established, with `--procs` above 1.
    #[serde(default)]
    pub established_by_process: Vec<u64>,
}

impl HoldReport {
    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "hold: {} asked, {} established, {} refused, {} reset, {} closed, {} timeout, {} other (ramp {:.1} s)\n",
            self.conns, self.established, self.refused, self.reset, self.closed, self.timeout,
            self.other, self.ramp_secs
        );
        if let (Some(b), Some(h)) = (self.rss_before_kib, self.rss_held_kib) {
            s += &format!(
                "  server RSS {b} KiB -> {h} KiB, threads {} -> {}",
                self.threads_before.unwrap_or(0),
                self.threads_held.unwrap_or(0)
            );
            if let Some(k) = self.kib_per_conn {
                s += &format!(", {k:.2} KiB per connection");
            }
            s.push('\n');
        }
        if let (Some(b), Some(h)) = (self.kernel_before, self.kernel_held) {
            let n = self.established_at_sample.max(1) as f64;
            let per = |b: Option<u64>, h: Option<u64>| match (b, h) {
                (Some(b), Some(h)) => format!("{:.2}", (h as f64 - b as f64) / n),
                _ => "unreadable".to_string(),
            };
            s += &format!(
                "  kernel (both ends): TCP sockets {} -> {}, buffer pages {} -> {}, per connection: slab TCP {} KiB, sock_inode_cache {} KiB\n",
                b.tcp_inuse, h.tcp_inuse, b.tcp_mem_pages, h.tcp_mem_pages,
                per(b.slab_tcp_kib, h.slab_tcp_kib),
                per(b.slab_sock_inode_kib, h.slab_sock_inode_kib),
            );
        }
        if self.procs > 1 {
            s += &format!(
                "  {} tester processes established {:?}\n",
                self.procs, self.established_by_process
            );
        }
        s
    }
}

#[derive(Default)]
struct Counts {
    established: AtomicU64,
    finished_opening: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    closed: AtomicU64,
    timeout: AtomicU64,
    other: AtomicU64,
}

impl Counts {
    fn add(&self, k: ErrorKind) {
        let c = match k {
            ErrorKind::Refused => &self.refused,
            ErrorKind::Reset => &self.reset,
            ErrorKind::Closed => &self.closed,
            ErrorKind::Timeout | ErrorKind::Unanswered => &self.timeout,
            ErrorKind::WrongReply | ErrorKind::Tls | ErrorKind::Other => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens, holds and releases the connections.
pub fn run_hold(cfg: &HoldConfig) -> anyhow::Result<HoldReport> {
    anyhow::ensure!(cfg.ramp > 0.0, "--ramp must be positive");
    anyhow::ensure!(
        cfg.src_ips > 0 && cfg.src_ips < 255,
        "--src-ips must be 1..=254"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .enable_all()
        .build()?;
    let before = cfg.server_pid.map(proc::sample_tree).transpose()?;
    let kernel_before = proc::kernel().ok();
    let counts = Arc::new(Counts::default());
    let (release, released) = tokio::sync::watch::channel(false);
    let bar = if cfg.progress {
        ProgressBar::new(cfg.conns as u64)
    } else {
        ProgressBar::with_draw_target(Some(cfg.conns as u64), ProgressDrawTarget::hidden())
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (ramp_secs, held, at_sample, kernel_held) = rt.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(cfg.conns);
        let interval = Duration::from_secs_f64(1.0 / cfg.ramp);
        for i in 0..cfg.conns {
            tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
            tasks.push(tokio::spawn(hold_one(
                cfg.clone(),
                i,
                counts.clone(),
                released.clone(),
            )));
            if i % 256 == 0 {
                bar.set_position(counts.established.load(Ordering::Relaxed));
            }
        }
        // Every connection has finished opening (or failed) by its timeout.
        let opened_by = Instant::now() + cfg.timeout + Duration::from_secs(1);
        while counts.finished_opening.load(Ordering::Relaxed) < cfg.conns as u64
            && Instant::now() < opened_by
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            bar.set_position(counts.established.load(Ordering::Relaxed));
        }
        let ramp_secs = start.elapsed().as_secs_f64();
        bar.set_message("holding");
        // Let the server settle (threads started, buffers allocated) before sampling.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let at_sample = counts.established.load(Ordering::Relaxed);
        let held = cfg.server_pid.map(proc::sample_tree);
        let kernel_held = proc::kernel().ok();
        if cfg.gate {
            let _ = fanout::emit::<HoldReport>(&ChildLine::Opened(at_sample));
            let _ = tokio::task::spawn_blocking(fanout::wait_release).await;
        } else {
            tokio::time::sleep(cfg.hold).await;
        }
        let _ = release.send(true);
        for t in tasks {
            let _ = t.await;
        }
        (ramp_secs, held, at_sample, kernel_held)
    });
    bar.finish_and_clear();
    let held = held.transpose()?;
    let c = &counts;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let established = g(&c.established);
    let kib_per_conn = kib_per_conn(before.as_ref(), held.as_ref(), at_sample);
    Ok(HoldReport {
        conns: cfg.conns,
        established,
        refused: g(&c.refused),
        reset: g(&c.reset),
        closed: g(&c.closed),
        timeout: g(&c.timeout),
        other: g(&c.other),
        ramp_secs,
        established_at_sample: at_sample,
        rss_before_kib: before.map(|s| s.rss_kib),
        rss_held_kib: held.map(|s| s.rss_kib),
        threads_before: before.map(|s| s.threads),
        threads_held: held.map(|s| s.threads),
        kib_per_conn,
        rss_anon_before_kib: before.map(|s| s.rss_anon_kib),
        rss_anon_held_kib: held.map(|s| s.rss_anon_kib),
        kernel_before,
        kernel_held,
        procs: 1,
        established_by_process: Vec::new(),
    })
}

/// Runs the hold over `procs` tester processes (see [`fanout`]): each opens its share,
/// the server and the kernel are sampled once all of them hold their connections,
/// every connection is held `cfg.hold` from then, and the counts are summed.
pub fn run_hold_fanout(cfg: &HoldConfig, procs: usize) -> anyhow::Result<HoldReport> {
    fanout::check(procs, cfg.src_ips)?;
    anyhow::ensure!(cfg.ramp > 0.0, "--ramp must be positive");
    let before = cfg.server_pid.map(proc::sample_tree).transpose()?;
    let kernel_before = proc::kernel().ok();
    let start = std::time::Instant::now();
    let mut copies = Copies::start(procs)?;
    let opened = copies
        .next_lines::<HoldReport>("its connections were open")?
        .into_iter()
        .enumerate()
        .map(|(i, line)| match line {
            ChildLine::Opened(n) => Ok(n),
            ChildLine::Report { .. } => Err(anyhow::anyhow!(
                "tester process {i} reported before its connections were open"
            )),
        })
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let ramp_secs = start.elapsed().as_secs_f64();
    let at_sample: u64 = opened.iter().sum();
    eprintln!("bench: {at_sample} connections held by {procs} tester processes");
    copies.hold_for(Duration::from_millis(500))?;
    let held = cfg.server_pid.map(proc::sample_tree).transpose()?;
    let kernel_held = proc::kernel().ok();
    copies.hold_for(cfg.hold)?;
    copies.release();
    let mut reports = Vec::with_capacity(procs);
    for (i, line) in copies
        .next_lines::<HoldReport>("its report")?
        .into_iter()
        .enumerate()
    {
        match line {
            ChildLine::Report { report, .. } => reports.push(report),
            ChildLine::Opened(_) => {
                anyhow::bail!("tester process {i} opened twice instead of reporting")
            }
        }
    }
    copies.finish()?;
    let sum = |f: fn(&HoldReport) -> u64| reports.iter().map(f).sum::<u64>();
    let kib_per_conn = kib_per_conn(before.as_ref(), held.as_ref(), at_sample);
    Ok(HoldReport {
        conns: cfg.conns,
        established: sum(|r| r.established),
        refused: sum(|r| r.refused),
        reset: sum(|r| r.reset),
        closed: sum(|r| r.closed),
        timeout: sum(|r| r.timeout),
        other: sum(|r| r.other),
        ramp_secs,
        rss_before_kib: before.map(|s| s.rss_kib),
        rss_held_kib: held.map(|s| s.rss_kib),
        threads_before: before.map(|s| s.threads),
        threads_held: held.map(|s| s.threads),
        established_at_sample: at_sample,
        kib_per_conn,
        rss_anon_before_kib: before.map(|s| s.rss_anon_kib),
        rss_anon_held_kib: held.map(|s| s.rss_anon_kib),
        kernel_before,
        kernel_held,
        procs,
        established_by_process: reports.iter().map(|r| r.established).collect(),
    })
}

async fn hold_one(
    cfg: HoldConfig,
    i: usize,
    counts: Arc<Counts>,
    mut released: tokio::sync::watch::Receiver<bool>,
) {
    let opened = tokio::time::timeout(cfg.timeout, async {
        let mut s = connect(cfg.addr, fanout::source_ip(i, cfg.src_first, cfg.src_ips)).await?;
        let mut buf = Vec::with_capacity(32);
        match cfg.probe {
            Probe::Ack => {
                s.write_all(b"hold")
                    .await
                    .map_err(|e| ErrorKind::of_io(&e))?;
                read_reply(&mut s, &mut buf, workload::ACK_REPLY).await?;
            }
            Probe::Greet => read_reply(&mut s, &mut buf, workload::GREETING).await?,
            Probe::None => {}
        }
        Ok::<_, ErrorKind>(s)
    })
    .await;
    counts.finished_opening.fetch_add(1, Ordering::Relaxed);
    let mut s = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(k)) => return counts.add(k),
        Err(_) => return counts.add(ErrorKind::Timeout),
    };
    counts.established.fetch_add(1, Ordering::Relaxed);
    let mut byte = [0u8; 1];
    tokio::select! {
        _ = released.wait_for(|r| *r) => {}
        r = s.read(&mut byte) => match r {
            Ok(0) => counts.add(ErrorKind::Closed),
            Ok(_) => counts.add(ErrorKind::Other),
            Err(e) => counts.add(ErrorKind::of_io(&e)),
        },
    }
}

async fn read_reply(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    want: &[u8],
) -> Result<(), ErrorKind> {
    let mut chunk = [0u8; 64];
    while buf.len() < want.len() {
        let n = s.read(&mut chunk).await.map_err(|e| ErrorKind::of_io(&e))?;
        if n == 0 {
            return Err(ErrorKind::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    workload::check_reply(buf, want)
}

/// The server's resident growth per connection held at the sample, in KiB, when both
/// samples were taken.
fn kib_per_conn(
    before: Option<&proc::Sample>,
    held: Option<&proc::Sample>,
    at_sample: u64,
) -> Option<f64> {
    match (before, held) {
        (Some(b), Some(h)) if at_sample > 0 => {
            Some((h.rss_kib as f64 - b.rss_kib as f64) / at_sample as f64)
        }
        _ => None,
    }
}
