//! The load driver: one tokio task per client connection, closed loop (send, wait for
//! the reply, send again) or open loop at `--rate`, bounded in time and in count.
//!
//! Under `--rate` each connection has a schedule of intended send times and latency is
//! measured from the intended time, not from when the send actually happened: a server
//! that stalls delays every later send of the schedule and all of that delay shows in
//! the percentiles (no coordinated omission, as in wrk2).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use super::fanout::{self, ChildLine, Copies, Share};
use super::proc;
use super::report::{histogram, ErrorCounters, ErrorKind, Errors, Latency, Report, ServerUse};
use super::workload::{Client, Conn, TlsClient, Workload};

/// How long a connection that was refused waits before trying again, so a refusing
/// server is not hammered in a tight loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The workload.
    pub workload: Workload,
    /// The server.
    pub addr: SocketAddr,
    /// Concurrent connections.
    pub conns: usize,
    /// Run for this long (with `requests`: at most this long).
    pub duration: Duration,
    /// Stop after this many operations.
    pub requests: Option<u64>,
    /// Total target rate in operations per second (open loop); `None`: closed loop.
    pub rate: Option<f64>,
    /// Message size in bytes.
    pub msg_size: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N, used round robin by the connections.
    pub src_ips: u8,
    /// The first source address's last octet (1 unless this is one copy of a
    /// `--procs` run): the addresses are 127.0.0.`src_first` onwards.
    pub src_first: u8,
    /// How long one operation may take before it is a timeout.
    pub timeout: Duration,
    /// The server's PID, to sample its CPU, memory and threads from /proc (its child
    /// processes summed).
    pub server_pid: Option<u32>,
    /// Tester threads.
    pub threads: usize,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// TLS on every connection (`--tls`).
    pub tls: Option<TlsClient>,
    /// A new connection (and TLS handshake) for every operation (`--new-conn`).
    pub new_conn: bool,
}

impl LoadConfig {
    /// A closed-loop run of `workload` on `addr` with defaults.
    pub fn new(workload: Workload, addr: SocketAddr) -> LoadConfig {
        LoadConfig {
            workload,
            addr,
            conns: 10,
            duration: Duration::from_secs(10),
            requests: None,
            rate: None,
            msg_size: 16,
            src_ips: 1,
            src_first: 1,
            timeout: Duration::from_secs(5),
            server_pid: None,
            threads: default_threads(),
            progress: false,
            tls: None,
            new_conn: false,
        }
    }

    /// Copy `share`'s part of this run (see [`fanout`]): its connections, requests and
    /// rate, and its own source addresses.
    pub fn share(&self, share: Share) -> LoadConfig {
        LoadConfig {
            conns: share.part(self.conns),
            requests: self.requests.map(|r| share.part(r as usize) as u64),
            rate: self.rate.map(|r| r / share.procs as f64),
            src_first: share.first_source(self.src_ips),
            server_pid: None,
            progress: false,
            ..self.clone()
        }
    }
}

/// The tester's default thread count: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The source address of connection `i`, or `None` when only one is used (then the
/// kernel picks it).
pub fn source_ip(i: usize, src_ips: u8) -> Option<Ipv4Addr> {
    fanout::source_ip(i, 1, src_ips)
}

/// An operation still waiting this long when the run ends is `unanswered`, an error
/// (half the timeout when that is shorter): far beyond a served client's round trip,
/// so only a client the server is not serving reaches it. One that waited less is
/// merely in flight at the end (`unfinished`), as every client of a healthy server is.
pub const UNANSWERED_AFTER: Duration = Duration::from_secs(1);

/// The wait after which an operation cut by the end of the run is `unanswered`.
pub fn unanswered_after(timeout: Duration) -> Duration {
    UNANSWERED_AFTER.min(timeout / 2)
}

/// A `--timeout` shorter than the run, so that a client starved for the whole run
/// shows as an error: one not shorter than `run` becomes half of it, with the warning
/// to print.
pub fn fit_timeout(timeout: Duration, run: Duration) -> (Duration, Option<String>) {
    if timeout < run {
        return (timeout, None);
    }
    let fitted = run / 2;
    let warning = format!(
        "warning: --timeout {:.3} s is not shorter than the run ({:.3} s): a client \
         starved for the whole run could never time out; using --timeout {:.3} s",
        timeout.as_secs_f64(),
        run.as_secs_f64(),
        fitted.as_secs_f64()
    );
    (fitted, Some(warning))
}

/// State shared by the connection tasks.
struct Shared {
    ok: AtomicU64,
    unfinished: AtomicU64,
    claimed: AtomicU64,
    errors: ErrorCounters,
    stop: AtomicBool,
    requests: Option<u64>,
    deadline: Instant,
}

impl Shared {
    /// Claims up to `n` operations; 0 means the run is over.
    fn claim(&self, n: usize) -> usize {
        if self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return 0;
        }
        match self.requests {
            None => n,
            Some(max) => {
                let first = self.claimed.fetch_add(n as u64, Ordering::Relaxed);
                max.saturating_sub(first).min(n as u64) as usize
            }
        }
    }
}

/// Runs the load and returns what it measured.
pub fn run_load(cfg: &LoadConfig) -> anyhow::Result<Report> {
    Ok(run_load_histogram(cfg)?.0)
}

/// Runs the load over `procs` tester processes (see [`fanout`]) and sums what they
/// measured: counts and errors added, latency histograms merged, the server sampled
/// once before and once after all of them.
pub fn run_load_fanout(cfg: &LoadConfig, procs: usize) -> anyhow::Result<Report> {
    fanout::check(procs, cfg.src_ips)?;
    anyhow::ensure!(
        cfg.conns >= procs,
        "--conns {} is fewer than --procs {procs}",
        cfg.conns
    );
    let server_before = cfg.server_pid.map(proc::sample_tree).transpose()?;
    let mut copies = Copies::start(procs)?;
    let mut reports = Vec::with_capacity(procs);
    let mut hist = histogram();
    for (i, line) in copies
        .next_lines::<Report>("its report")?
        .into_iter()
        .enumerate()
    {
        match line {
            ChildLine::Report { report, histogram } => {
                fanout::add_pairs(&mut hist, &histogram)?;
                reports.push(report);
            }
            ChildLine::Opened(_) => anyhow::bail!("tester process {i} wrote a hold line"),
        }
    }
    copies.finish()?;
    let server = match (cfg.server_pid, server_before) {
        (Some(p), Some(before)) => Some((p, before)),
        _ => None,
    };
    let mut errors = Errors::default();
    for r in &reports {
        errors.add(&r.errors);
    }
    let ok: u64 = reports.iter().map(|r| r.ok).sum();
    let secs = reports.iter().map(|r| r.secs).fold(0.0, f64::max);
    let tester_cpu: f64 = reports.iter().map(|r| r.tester_cpu_secs).sum();
    let wait: Option<f64> = reports.iter().map(|r| r.tester_cpu_wait_secs).sum();
    let thread_secs = secs * (cfg.threads.max(1) * procs) as f64;
    let server = match server {
        Some((p, before)) => {
            let after = proc::sample_tree(p)?;
            let cpu = after.cpu_secs - before.cpu_secs;
            Some(ServerUse {
                cpu_secs: cpu,
                cpu_us_per_op: if ok > 0 { cpu * 1e6 / ok as f64 } else { 0.0 },
                rss_before_kib: before.rss_kib,
                rss_after_kib: after.rss_kib,
                threads_before: before.threads,
                threads_after: after.threads,
            })
        }
        None => None,
    };
    Ok(Report {
        workload: cfg.workload.name().to_string(),
        conns: cfg.conns,
        secs,
        ok,
        // Each copy measured its own window; their rates add up.
        throughput: reports.iter().map(|r| r.throughput).sum(),
        rate: cfg.rate,
        unfinished: reports.iter().map(|r| r.unfinished).sum(),
        latency: Latency::of(&hist),
        errors,
        tester_cpu_secs: tester_cpu,
        tester_busy: if thread_secs > 0.0 {
            tester_cpu / thread_secs
        } else {
            0.0
        },
        tester_cpu_wait_secs: wait,
        tester_starved_share: wait.filter(|_| thread_secs > 0.0).map(|w| w / thread_secs),
        server,
    })
}

/// One copy of a `--procs` load run: runs `share`'s part and writes its report and
/// histogram on stdout.
pub fn run_load_child(cfg: &LoadConfig, share: Share) -> anyhow::Result<()> {
    let (report, hist) = run_load_histogram(&cfg.share(share))?;
    fanout::emit(&ChildLine::Report {
        report,
        histogram: fanout::histogram_pairs(&hist),
    })
}

/// [`run_load`], with the latency histogram.
pub fn run_load_histogram(cfg: &LoadConfig) -> anyhow::Result<(Report, Histogram<u64>)> {
    anyhow::ensure!(cfg.conns > 0, "--conns must be at least 1");
    anyhow::ensure!(
        cfg.src_ips > 0 && cfg.src_ips < 255,
        "--src-ips must be 1..=254"
    );
    if let Some(r) = cfg.rate {
        anyhow::ensure!(r > 0.0 && r.is_finite(), "--rate must be positive");
    }
    anyhow::ensure!(
        !(cfg.new_conn && cfg.workload.batch() > 1),
        "--new-conn sends one request per connection: it takes no --pipeline"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .enable_all()
        .build()?;
    let server_before = cfg.server_pid.map(proc::sample_tree).transpose()?;
    let tester_before = proc::sample(None)?;
    let wait_before = proc::cpu_wait_secs();
    let (hist, secs, shared, peak) = rt.block_on(drive(cfg));
    let tester_after = proc::sample(None)?;
    let tester_wait = match (wait_before, proc::cpu_wait_secs()) {
        (Some(b), Some(a)) => Some((a - b).max(0.0)),
        _ => None,
    };
    let server = match (cfg.server_pid, server_before) {
        (Some(p), Some(before)) => {
            let after = proc::sample_tree(p)?;
            let ok = shared.ok.load(Ordering::Relaxed);
            let cpu = after.cpu_secs - before.cpu_secs;
            Some(ServerUse {
                cpu_secs: cpu,
                cpu_us_per_op: if ok > 0 { cpu * 1e6 / ok as f64 } else { 0.0 },
                rss_before_kib: before.rss_kib,
                rss_after_kib: peak.rss_kib.max(after.rss_kib),
                threads_before: before.threads,
                threads_after: peak.threads.max(after.threads),
            })
        }
        _ => None,
    };
    let ok = shared.ok.load(Ordering::Relaxed);
    let tester_cpu = tester_after.cpu_secs - tester_before.cpu_secs;
    let report = Report {
        workload: cfg.workload.name().to_string(),
        conns: cfg.conns,
        secs,
        ok,
        throughput: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
        rate: cfg.rate,
        unfinished: shared.unfinished.load(Ordering::Relaxed),
        latency: Latency::of(&hist),
        errors: shared.errors.snapshot(),
        tester_cpu_secs: tester_cpu,
        tester_busy: if secs > 0.0 {
            tester_cpu / (secs * cfg.threads.max(1) as f64)
        } else {
            0.0
        },
        tester_cpu_wait_secs: tester_wait,
        tester_starved_share: tester_wait
            .filter(|_| secs > 0.0)
            .map(|w| w / (secs * cfg.threads.max(1) as f64)),
        server,
    };
    Ok((report, hist))
}

async fn drive(cfg: &LoadConfig) -> (Histogram<u64>, f64, Arc<Shared>, proc::Sample) {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        ok: AtomicU64::new(0),
        unfinished: AtomicU64::new(0),
        claimed: AtomicU64::new(0),
        errors: ErrorCounters::default(),
        stop: AtomicBool::new(false),
        requests: cfg.requests,
        deadline: start + cfg.duration,
    });
    let mut tasks = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        let client = Client::new(
            cfg.workload.clone(),
            cfg.addr,
            fanout::source_ip(i, cfg.src_first, cfg.src_ips),
            cfg.msg_size,
        )
        .with(cfg.tls.clone(), cfg.new_conn);
        let pace = cfg.rate.map(|r| {
            let interval = Duration::from_secs_f64(cfg.conns as f64 / r);
            // Spread the connections' schedules over one interval.
            (
                interval,
                start + interval.mul_f64(i as f64 / cfg.conns as f64),
            )
        });
        tasks.push(tokio::spawn(conn_task(
            client,
            shared.clone(),
            pace,
            cfg.timeout,
        )));
    }
    let progress = tokio::spawn(watch(cfg.clone(), shared.clone(), start));
    let mut hist = histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = hist.add(&h);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    let peak = progress.await.unwrap_or_default();
    (hist, secs, shared, peak)
}

/// One connection's loop; returns its latency histogram.
async fn conn_task(
    client: Client,
    sh: Arc<Shared>,
    pace: Option<(Duration, Instant)>,
    timeout: Duration,
) -> Histogram<u64> {
    let mut hist = histogram();
    let mut conn: Option<Conn> = None;
    let mut next = pace.map(|(_, first)| first);
    let batch = client.workload.batch();
    loop {
        let n = sh.claim(batch);
        if n == 0 {
            break;
        }
        let intended = match (&mut next, pace) {
            (Some(t), Some((interval, _))) => {
                let at = *t;
                *t += interval;
                if at >= sh.deadline {
                    break;
                }
                tokio::time::sleep_until(at).await;
                at
            }
            _ => Instant::now(),
        };
        let sent = Instant::now();
        let limit = (sent + timeout).min(sh.deadline);
        let mut done = 0usize;
        let mut late = 0usize;
        // Waited long enough by the end of the run to be unanswered: a reply that
        // comes after the end does not make it served (the single model answers the
        // next queued client the moment the served one leaves at the end).
        let starved =
            sh.deadline.saturating_duration_since(sent.min(intended)) >= unanswered_after(timeout);
        let result = tokio::time::timeout_at(
            limit,
            client.run(&mut conn, || {
                let now = Instant::now();
                if starved && now > sh.deadline {
                    late += 1;
                    return;
                }
                let us = (now - intended).as_micros() as u64;
                let _ = hist.record(us.max(1));
                done += 1;
            }),
        )
        .await;
        // A pipelined batch may answer more than was claimed at the end of a
        // `--requests` run; only the claimed ones count.
        let done = done.min(n);
        if done > 0 {
            sh.ok.fetch_add(done as u64, Ordering::Relaxed);
        }
        let late = late.min(n - done);
        for _ in 0..late {
            sh.errors.add(ErrorKind::Unanswered);
        }
        let failed = n.saturating_sub(done + late) as u64;
        match result {
            Ok(Ok(())) => {}
            Err(_) if limit == sh.deadline => {
                // Cut by the end of the run: a long wait is an error of its own kind,
                // so a server that starves clients cannot look clean; a short one is
                // the last round trip of a served client.
                if starved {
                    for _ in 0..failed {
                        sh.errors.add(ErrorKind::Unanswered);
                    }
                } else {
                    sh.unfinished.fetch_add(failed, Ordering::Relaxed);
                }
                break;
            }
            Err(_) => {
                conn = None;
                for _ in 0..failed {
                    sh.errors.add(ErrorKind::Timeout);
                }
            }
            Ok(Err(kind)) => {
                for _ in 0..failed.max(1) {
                    sh.errors.add(kind);
                }
                if matches!(kind, ErrorKind::Refused | ErrorKind::Other) {
                    let until = (Instant::now() + RECONNECT_PAUSE).min(sh.deadline);
                    tokio::time::sleep_until(until).await;
                }
            }
        }
    }
    hist
}

/// Updates the progress bar and samples the server until the run stops; returns the
/// server's peak RSS and threads seen while the connections were open.
async fn watch(cfg: LoadConfig, sh: Arc<Shared>, start: Instant) -> proc::Sample {
    let bar = if cfg.progress {
        match cfg.requests {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new(cfg.duration.as_millis() as u64),
        }
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut peak = proc::Sample::default();
    let mut last_ok = 0u64;
    let mut last_t = start;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while !sh.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = Instant::now();
        let ok = sh.ok.load(Ordering::Relaxed);
        let rate = (ok - last_ok) as f64 / (now - last_t).as_secs_f64().max(1e-3);
        last_ok = ok;
        last_t = now;
        bar.set_message(format!(
            "{rate:>9.0}/s  ok {ok}  errors {}",
            sh.errors.total()
        ));
        match cfg.requests {
            Some(_) => bar.set_position(ok + sh.errors.total()),
            None => bar.set_position((now - start).as_millis() as u64),
        }
        if let Some(Ok(s)) = cfg.server_pid.map(proc::sample_tree) {
            peak.rss_kib = peak.rss_kib.max(s.rss_kib);
            peak.threads = peak.threads.max(s.threads);
        }
    }
    bar.finish_and_clear();
    peak
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_not_shorter_than_the_run_is_halved_with_a_warning() {
        let s = Duration::from_secs;
        assert_eq!(fit_timeout(s(1), s(2)), (s(1), None));
        let (t, w) = fit_timeout(s(2), s(2));
        assert_eq!(t, s(1));
        assert!(w.unwrap().contains("not shorter than the run"));
        assert_eq!(unanswered_after(s(5)), s(1));
        assert_eq!(unanswered_after(s(1)), Duration::from_millis(500));
    }

    #[test]
    fn source_addresses_round_robin() {
        assert_eq!(source_ip(5, 1), None);
        assert_eq!(source_ip(0, 3), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(source_ip(4, 3), Some(Ipv4Addr::new(127, 0, 0, 2)));
    }
}
