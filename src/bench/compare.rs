//! `bench compare`: one workload against every concurrency model of our server (each
//! started once, on a free loopback port) and against peer servers given as commands
//! (the seeds' Python servers, a minimal tokio server), at each concurrency level; the
//! seeds' comparison table printed with measured numbers, and an SVG plot.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::plot;
use super::proc;
use super::run::{self, LoadConfig};
use super::workload::Workload;

/// Options of `bench compare`.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The service (ack, greet, hello, http, ws).
    #[arg(long, default_value = "ack")]
    pub service: String,
    /// Concurrency levels, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub conns: Vec<usize>,
    /// Our models to run, comma separated (single, threads, pool, async).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "single,threads,pool,async"
    )]
    pub models: Vec<String>,
    /// A peer server: `NAME=COMMAND`, run with `sh -c`; `{port}` in the command (and
    /// the `PORT` environment variable) is the port it must listen on. Repeatable.
    #[arg(long = "peer", value_name = "NAME=COMMAND")]
    pub peers: Vec<String>,
    /// Seconds per run.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Runs per point; the median (by throughput) is kept.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 16)]
    pub msg_size: usize,
    /// Seconds one operation may take; keep it shorter than --secs, so that a client
    /// starved for longer shows as an error.
    #[arg(long, default_value_t = 2.0)]
    pub timeout: f64,
    /// Tester threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Pin each server to these CPUs (`taskset -c`), e.g. `1`.
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// Our server's binary (default: this executable).
    #[arg(long)]
    pub server_bin: Option<String>,
    /// Write the plot here (SVG; default `compare-<service>.svg` in the current
    /// directory).
    #[arg(long)]
    pub plot: Option<String>,
    /// Do not write the plot.
    #[arg(long, conflicts_with = "plot")]
    pub no_plot: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One measured point.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Connections.
    pub conns: usize,
    /// Successful operations per second.
    pub throughput: f64,
    /// p50 latency, µs.
    pub p50_us: u64,
    /// p99 latency, µs.
    pub p99_us: u64,
    /// Errors.
    pub errors: u64,
    /// The errors by kind.
    pub error_kinds: super::report::Errors,
    /// Server CPU per operation, µs.
    pub cpu_us_per_op: f64,
    /// Server peak RSS during the run, KiB.
    pub rss_kib: u64,
    /// (peak RSS − idle RSS) / connections, KiB.
    pub kib_per_conn: f64,
    /// Server threads at the peak.
    pub threads: u64,
    /// Whether the tester was saturated.
    pub tester_bound: bool,
    /// Whether the tester waited for a CPU half of the run or more (the machine's load,
    /// not the server, may have set this point's figures).
    pub tester_starved: bool,
}

/// One server's results.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// Model or peer name.
    pub name: String,
    /// Idle RSS, KiB.
    pub idle_rss_kib: u64,
    /// The points, by concurrency.
    pub points: Vec<Point>,
    /// Why the server could not be measured, if it could not.
    pub failed: Option<String>,
    /// A peer server (`--peer`), not one of our models.
    pub peer: bool,
}

impl Series {
    /// The highest concurrency served without any error.
    pub fn max_clean_conns(&self) -> Option<usize> {
        self.points
            .iter()
            .filter(|p| p.errors == 0 && p.throughput > 0.0)
            .map(|p| p.conns)
            .max()
    }

    /// The best throughput.
    pub fn best(&self) -> Option<&Point> {
        self.points
            .iter()
            .max_by(|a, b| a.throughput.total_cmp(&b.throughput))
    }
}

fn workload(service: &str) -> anyhow::Result<Workload> {
    Ok(match service {
        "ack" => Workload::Ack,
        "greet" => Workload::Greet,
        "hello" => Workload::Hello,
        "http" => Workload::Http {
            pipeline: 1,
            path: "/".into(),
            body: super::workload::HTTP_BODY.to_vec(),
        },
        "ws" => Workload::Ws { path: "/".into() },
        other => anyhow::bail!("unknown service {other:?} (ack, greet, hello, http, ws)"),
    })
}

/// A free loopback port (bound and released; the server binds it right after).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A started server, killed (by its own PID) when dropped.
struct Started {
    child: Child,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a server command in a session of its own, as a deployed server would run.
///
/// Under the kernel's session autogroups (`kernel.sched_autogroup_enabled`, on by
/// default) a session shares one CPU weight across all its threads. A thread-per-client
/// server with a thousand threads in the tester's session takes that weight onto its
/// own CPU, and the tester, pinned to the other, is left with a sliver of it against any
/// other session's work there: measured, the tester waited for a CPU 97% of a 5 s hello
/// burst and the server looked idle with 20% of its clients timing out. Its own session
/// gives the server its own weight and the tester keeps its CPU.
fn start(cmd: &str, cpus: Option<&str>, port: u16) -> anyhow::Result<Started> {
    use std::os::unix::process::CommandExt;
    let cmd = cmd.replace("{port}", &port.to_string());
    let cmd = match cpus {
        Some(c) => format!("exec taskset -c {c} {cmd}"),
        None => format!("exec {cmd}"),
    };
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&cmd)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: runs in the forked child before exec; setsid(2) and prctl(2) are
    // async-signal-safe and touch no memory of the parent. setsid cannot fail here: the
    // child is not a process group leader (it has just been forked into the tester's
    // group). PR_SET_PDEATHSIG kills the server if the tester dies without dropping
    // `Started` (killed by a script's time limit, say): its own session no longer
    // shares the tester's signals, so this is what keeps it from outliving the run.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    let mut s = Started { child };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = s.child.try_wait()? {
            anyhow::bail!("`{cmd}` exited at start: {status}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            // The probe connection itself is gone; give the server a moment to see it
            // close so it does not count against the first run.
            std::thread::sleep(Duration::from_millis(200));
            return Ok(s);
        }
        if Instant::now() > until {
            anyhow::bail!("`{cmd}` did not listen on {addr} within 15 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The shell word for a path (single quotes).
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `bench compare`.
pub fn run(a: CompareArgs) -> anyhow::Result<()> {
    let w = workload(&a.service)?;
    let bin = match &a.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.to_string_lossy().into_owned(),
    };
    let mut a = a;
    let (timeout, warning) = run::fit_timeout(
        Duration::try_from_secs_f64(a.timeout)?,
        Duration::try_from_secs_f64(a.secs)?,
    );
    if let Some(w) = warning {
        eprintln!("{w}");
    }
    a.timeout = timeout.as_secs_f64();
    let mut targets: Vec<(String, String, bool)> = Vec::new();
    for m in &a.models {
        targets.push((
            m.clone(),
            format!(
                "{} serve --service {} --model {m} --addr 127.0.0.1:{{port}} --max-conns 19000 -qq",
                quote(&bin),
                a.service
            ),
            false,
        ));
    }
    for p in &a.peers {
        let (name, cmd) = p
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--peer wants NAME=COMMAND, got {p:?}"))?;
        targets.push((name.to_string(), cmd.to_string(), true));
    }
    let mut all = Vec::new();
    for (name, cmd, peer) in &targets {
        eprintln!("== {name}: {cmd}");
        let mut series = measure(&a, &w, name, cmd);
        series.peer = *peer;
        all.push(series);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print!("{}", table(&all, &a.service));
    }
    if !a.no_plot {
        let path = a
            .plot
            .clone()
            .unwrap_or_else(|| format!("compare-{}.svg", a.service));
        plot::draw(&path, &a.service, &all)?;
        eprintln!("plot written to {path} (open it in a browser; --plot PATH to choose, --no-plot for none)");
    }
    Ok(())
}

fn measure(a: &CompareArgs, w: &Workload, name: &str, cmd: &str) -> Series {
    let mut series = Series {
        name: name.to_string(),
        idle_rss_kib: 0,
        points: Vec::new(),
        failed: None,
        peer: false,
    };
    let started =
        free_port().and_then(|port| Ok((start(cmd, a.server_cpus.as_deref(), port)?, port)));
    let (server, port) = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("   {name}: {e:#}");
            series.failed = Some(format!("{e:#}"));
            return series;
        }
    };
    let pid = server.child.id();
    series.idle_rss_kib = proc::sample(Some(pid)).map(|s| s.rss_kib).unwrap_or(0);
    for &conns in &a.conns {
        let mut runs = Vec::new();
        for _ in 0..a.runs.max(1) {
            let mut cfg = LoadConfig::new(w.clone(), ([127, 0, 0, 1], port).into());
            cfg.conns = conns;
            cfg.duration = Duration::from_secs_f64(a.secs);
            cfg.msg_size = a.msg_size;
            cfg.timeout = Duration::from_secs_f64(a.timeout);
            cfg.server_pid = Some(pid);
            cfg.threads = a.threads.unwrap_or_else(run::default_threads);
            cfg.src_ips = if conns > 20_000 { 4 } else { 1 };
            match run::run_load(&cfg) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    series.failed = Some(format!("{conns} conns: {e:#}"));
                    break;
                }
            }
            // Let the closed connections' sockets drain before the next run.
            std::thread::sleep(Duration::from_millis(500));
        }
        if runs.is_empty() {
            break;
        }
        runs.sort_by(|x, y| x.throughput.total_cmp(&y.throughput));
        let r = &runs[runs.len() / 2];
        let sv = r.server.unwrap_or_default();
        let p = Point {
            conns,
            throughput: r.throughput,
            p50_us: r.latency.p50_us,
            p99_us: r.latency.p99_us,
            errors: r.errors.total(),
            error_kinds: r.errors,
            cpu_us_per_op: sv.cpu_us_per_op,
            rss_kib: sv.rss_after_kib,
            kib_per_conn: (sv.rss_after_kib as f64 - series.idle_rss_kib as f64) / conns as f64,
            threads: sv.threads_after,
            tester_bound: r.tester_bound(),
            tester_starved: r.tester_starved(),
        };
        eprintln!(
            "   {name} {conns:>6} conns: {:>9.0} ops/s  p99 {:>9}  errors {:>6}  cpu {:>7.1} µs/op  {:>7.2} KiB/conn{}{}",
            p.throughput,
            super::report::us(p.p99_us),
            p.errors,
            p.cpu_us_per_op,
            p.kib_per_conn,
            if p.tester_bound { "  (tester-bound)" } else { "" },
            if p.tester_starved { "  (tester starved)" } else { "" }
        );
        series.points.push(p);
        if server_gone(pid) {
            series.failed = Some(format!("server exited during the {conns}-connection run"));
            break;
        }
    }
    drop(server);
    series
}

fn server_gone(pid: u32) -> bool {
    proc::sample(Some(pid)).is_err()
}

/// The seeds' comparison table, measured: one block per concurrency level, then a
/// summary with the ratios to the first series.
pub fn table(all: &[Series], service: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "\n{service}: measured");
    let _ = writeln!(
        s,
        "{:<16} {:>7} {:>11} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}",
        "server", "conns", "ops/s", "p50", "p99", "errors", "CPU µs/op", "KiB/conn", "threads"
    );
    for series in all {
        if let Some(f) = &series.failed {
            if series.points.is_empty() {
                let _ = writeln!(s, "{:<16} failed: {f}", series.name);
                continue;
            }
        }
        for p in &series.points {
            let _ = writeln!(
                s,
                "{:<16} {:>7} {:>11.0} {:>10} {:>10} {:>8} {:>10.1} {:>10.2} {:>8}{}{}",
                series.name,
                p.conns,
                p.throughput,
                super::report::us(p.p50_us),
                super::report::us(p.p99_us),
                p.errors,
                p.cpu_us_per_op,
                p.kib_per_conn,
                p.threads,
                if p.tester_bound { " tester-bound" } else { "" },
                if p.tester_starved {
                    " tester-starved"
                } else {
                    ""
                }
            );
        }
    }
    s.push_str(&notes(all));
    let _ = writeln!(s, "\nthe seeds' table, measured");
    let _ = writeln!(
        s,
        "{:<16} {:>14} {:>10} {:>22} {:>14}",
        "server", "best ops/s", "p99 there", "max conns, 0 errors", "vs first"
    );
    let base = all.first().and_then(|x| x.best()).map(|p| p.throughput);
    for series in all {
        let best = series.best();
        let _ = writeln!(
            s,
            "{:<16} {:>14} {:>10} {:>22} {:>14}",
            series.name,
            best.map(|p| format!("{:.0}", p.throughput))
                .unwrap_or("-".into()),
            best.map(|p| super::report::us(p.p99_us))
                .unwrap_or("-".into()),
            series
                .max_clean_conns()
                .map(|c| c.to_string())
                .unwrap_or("none".into()),
            match (best, base) {
                (Some(p), Some(b)) if b > 0.0 => format!("{:.2}x", p.throughput / b),
                _ => "-".into(),
            }
        );
    }
    s
}

/// What the `errors` column holds and what the tags mean, under the table, with each
/// point's errors by kind.
fn notes(all: &[Series]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from(
        "
errors     failed operations, by kind: refused (nothing listening, or the backlog
           full), reset, closed (closed before the whole reply), timeout (no reply
           within --timeout), unanswered (still waiting when the run ended, for longer
           than a served client ever waits: the server never got to it), wrong_reply,
           other (local ports or descriptors ran out). Kinds per point below.
tester-bound    the tester used 90% or more of its threads' CPU: the figures may be
           its ceiling, not the server's (more --threads, or --server-cpus apart).
tester-starved  the tester waited for a CPU half of the run or more (other processes
           had it): timeouts and low throughput there measure the machine's load, not
           the server; rerun on a quiet machine.
",
    );
    for series in all {
        for p in &series.points {
            if p.errors == 0 {
                continue;
            }
            let kinds: Vec<String> = super::report::ErrorKind::ALL
                .iter()
                .filter_map(|&k| {
                    let n = p.error_kinds.of(k);
                    (n > 0).then(|| format!("{} {n}", k.name()))
                })
                .collect();
            let _ = writeln!(
                s,
                "  {} at {} conns: {}",
                series.name,
                p.conns,
                kinds.join(", ")
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(conns: usize, throughput: f64, errors: u64) -> Point {
        Point {
            conns,
            throughput,
            p50_us: 100,
            p99_us: 1_000,
            errors,
            error_kinds: super::super::report::Errors {
                unanswered: errors,
                ..Default::default()
            },
            cpu_us_per_op: 10.0,
            rss_kib: 1_000,
            kib_per_conn: 2.0,
            threads: 3,
            tester_bound: false,
            tester_starved: false,
        }
    }

    #[test]
    fn ceiling_is_the_highest_level_without_errors() {
        let s = Series {
            name: "pool".into(),
            idle_rss_kib: 0,
            points: vec![
                point(10, 900.0, 0),
                point(100, 1000.0, 0),
                point(1000, 50.0, 7),
            ],
            failed: None,
            peer: false,
        };
        assert_eq!(s.max_clean_conns(), Some(100));
        assert_eq!(s.best().unwrap().conns, 100);
    }

    #[test]
    fn table_shows_every_series_and_the_ratio() {
        let a = Series {
            name: "async".into(),
            idle_rss_kib: 0,
            points: vec![point(10, 2000.0, 0)],
            failed: None,
            peer: false,
        };
        let b = Series {
            name: "py-threads".into(),
            idle_rss_kib: 0,
            points: vec![point(10, 500.0, 0)],
            failed: None,
            peer: false,
        };
        let c = Series {
            name: "broken".into(),
            idle_rss_kib: 0,
            points: vec![],
            failed: Some("did not listen".into()),
            peer: false,
        };
        let t = table(&[a, b, c], "ack");
        assert!(t.contains("py-threads"), "{t}");
        assert!(t.contains("0.25x"), "{t}");
        assert!(t.contains("broken           failed: did not listen"), "{t}");
        assert!(t.contains("unanswered (still waiting"), "{t}");
        assert!(t.contains("tester-starved  the tester waited"), "{t}");
    }

    #[test]
    fn the_notes_give_each_points_errors_by_kind() {
        let s = Series {
            name: "single".into(),
            idle_rss_kib: 0,
            points: vec![point(10, 900.0, 0), point(100, 50.0, 99)],
            failed: None,
            peer: false,
        };
        let t = table(&[s], "ack");
        assert!(t.contains("  single at 100 conns: unanswered 99"), "{t}");
        assert!(!t.contains("single at 10 conns"), "{t}");
    }

    #[test]
    fn peer_commands_get_the_port() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert!(workload("nope").is_err());
        assert_eq!(workload("ack").unwrap(), Workload::Ack);
    }
}
