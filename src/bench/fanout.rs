//! `--procs N`: one tester process may hold no more connections than its descriptor
//! limit (20,000 on the reference machine), so past it the tester runs N copies of
//! itself, each with its share of the connections, of the rate and of the ramp, and
//! its own source addresses (127.0.0.x, so each has the ~28,000 ephemeral ports of an
//! address to itself), and sums what they measured.
//!
//! The copies are this binary re-executed with the same arguments, less `--procs` and
//! `--server-pid` (the parent samples the server, once, for all of them), and with
//! [`CHILD_ENV`] set to `index/procs`. A copy writes its report as one JSON line on
//! stdout; a load run adds its latency histogram as (value, count) pairs, so the
//! parent merges histograms rather than averaging percentiles. A `hold` copy first
//! writes a line when its connections are open and then holds them until the parent
//! writes a line on its stdin (or closes it), so every connection of every copy is
//! held at the same time while the parent samples the server. A `chat` copy goes
//! through its run's phases in step with the parent the same way (`bench/chat`), and
//! measures from the parent's time origin ([`ORIGIN_ENV`]).
//!
//! A copy that exits with an error, dies, or writes no report makes the whole run an
//! error naming it: never a silently lower count.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The environment variable that makes a `bench` process one tester copy of a
/// `--procs` run: `index/procs`.
pub const CHILD_ENV: &str = "MULTICLIENT_BENCH_CHILD";

/// Which copy this is, of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// 0-based index of this copy.
    pub index: usize,
    /// Copies in all.
    pub procs: usize,
}

impl Share {
    /// The share of this process from [`CHILD_ENV`], if it is a copy.
    pub fn from_env() -> anyhow::Result<Option<Share>> {
        match std::env::var(CHILD_ENV) {
            Ok(v) => Share::parse(&v)
                .map(Some)
                .with_context(|| format!("{CHILD_ENV}={v}: want INDEX/PROCS")),
            Err(_) => Ok(None),
        }
    }

    /// Parses `index/procs`.
    pub fn parse(v: &str) -> Option<Share> {
        let (i, n) = v.split_once('/')?;
        let share = Share {
            index: i.parse().ok()?,
            procs: n.parse().ok()?,
        };
        (share.index < share.procs).then_some(share)
    }

    /// This copy's part of `total` (connections, operations): the remainder goes to the
    /// first copies, so the parts add up to `total`.
    pub fn part(&self, total: usize) -> usize {
        total / self.procs + usize::from(self.index < total % self.procs)
    }

    /// The first of this copy's `per_copy` source addresses (the last octet of
    /// 127.0.0.x): copy k uses 1 + k·per_copy ..= (k+1)·per_copy.
    pub fn first_source(&self, per_copy: u8) -> u8 {
        (1 + self.index * per_copy as usize) as u8
    }
}

/// Checks that `procs` copies with `src_ips` source addresses each fit in
/// 127.0.0.1..=127.0.0.254.
pub fn check(procs: usize, src_ips: u8) -> anyhow::Result<()> {
    anyhow::ensure!(procs >= 1, "--procs must be at least 1");
    anyhow::ensure!(
        procs * (src_ips as usize) <= 254,
        "--procs {procs} × --src-ips {src_ips} source addresses do not fit in 127.0.0.1..=127.0.0.254"
    );
    Ok(())
}

/// The source address of connection `i` of a tester whose addresses are
/// 127.0.0.`first` ..= 127.0.0.`first + count - 1`; `None` (the kernel picks) for the
/// single default address of a lone tester.
pub fn source_ip(i: usize, first: u8, count: u8) -> Option<Ipv4Addr> {
    (count > 1 || first > 1)
        .then(|| Ipv4Addr::new(127, 0, 0, first + (i % count.max(1) as usize) as u8))
}

/// A latency histogram as the (value, count) pairs of its recorded buckets, the form a
/// copy sends it in.
pub fn histogram_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds (value, count) pairs to `h`.
pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) -> anyhow::Result<()> {
    for &(v, n) in pairs {
        h.record_n(v, n)
            .map_err(|e| anyhow::anyhow!("a tester copy sent latency {v} µs: {e}"))?;
    }
    Ok(())
}

/// What a copy writes on stdout: lines of this, the last one its report.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChildLine<R> {
    /// A `hold` copy's connections are open: how many are.
    Opened(u64),
    /// The copy's report, and the latency histogram of a load run.
    Report {
        /// The report.
        report: R,
        /// (value µs, count) pairs.
        histogram: Vec<(u64, u64)>,
    },
}

/// Writes one line of the child protocol on stdout.
pub fn emit<R: Serialize>(line: &ChildLine<R>) -> anyhow::Result<()> {
    emit_json(line)
}

/// Writes `line` as one JSON line on stdout (a copy's line to its parent).
pub fn emit_json<T: Serialize>(line: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, line)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// In a `hold` copy: waits for the parent's line (or the end of stdin) that releases
/// the connections.
pub fn wait_release() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

/// The running copies of a `--procs` run.
pub struct Copies {
    children: Vec<Running>,
}

struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// The arguments of this process without `--procs` and `--server-pid` (and their
/// values), with `--json`.
pub fn child_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    const DROP: [&str; 2] = ["--procs", "--server-pid"];
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if DROP.contains(&a.as_str()) {
            skip_value = true;
            continue;
        }
        if DROP.iter().any(|d| a.starts_with(&format!("{d}="))) {
            continue;
        }
        out.push(a);
    }
    if !out.iter().any(|a| a == "--json") {
        out.push("--json".to_string());
    }
    out
}

/// The environment variable that gives a chat copy its parent's time origin: the
/// CLOCK_MONOTONIC reading, in microseconds, all copies measure from.
pub const ORIGIN_ENV: &str = "MULTICLIENT_BENCH_ORIGIN";

/// CLOCK_MONOTONIC in microseconds: the clock `Instant` reads on Linux, one clock
/// for every process of the machine, so copies can share a time origin.
pub fn monotonic_us() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write to; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

/// The `Instant` of a [`monotonic_us`] reading taken in another process (or now, if
/// it lies in the future).
pub fn instant_of(us: u64) -> std::time::Instant {
    let now = std::time::Instant::now();
    let ago = std::time::Duration::from_micros(monotonic_us().saturating_sub(us));
    now.checked_sub(ago).unwrap_or(now)
}

impl Copies {
    /// Starts `procs` copies of this binary with this process's arguments.
    pub fn start(procs: usize) -> anyhow::Result<Copies> {
        Copies::start_with(procs, &[])
    }

    /// Starts `procs` copies with `env` set besides [`CHILD_ENV`].
    pub fn start_with(procs: usize, env: &[(&str, String)]) -> anyhow::Result<Copies> {
        let exe = std::env::current_exe().context("the tester's own binary")?;
        let args = child_args(std::env::args().skip(1));
        let mut copies = Copies {
            children: Vec::with_capacity(procs),
        };
        for index in 0..procs {
            let mut child = Command::new(&exe)
                .args(&args)
                .env(CHILD_ENV, format!("{index}/{procs}"))
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting tester process {index}"))?;
            let stdin = child.stdin.take();
            let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
            copies.children.push(Running {
                child,
                stdin,
                stdout,
            });
        }
        Ok(copies)
    }

    /// How many copies run.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Reads the next line of every copy, in order.
    pub fn next_lines<R: for<'de> Deserialize<'de>>(
        &mut self,
        what: &str,
    ) -> anyhow::Result<Vec<ChildLine<R>>> {
        self.next_json(what)
    }

    /// Reads the next line of every copy, in order, as a `T` (a workload with a line
    /// protocol of its own: `bench chat`).
    pub fn next_json<T: for<'de> Deserialize<'de>>(
        &mut self,
        what: &str,
    ) -> anyhow::Result<Vec<T>> {
        let mut lines = Vec::with_capacity(self.children.len());
        for index in 0..self.children.len() {
            lines.push(self.next_line(index, what)?);
        }
        Ok(lines)
    }

    /// Writes `line` on every copy's stdin (the next step of a run in phases).
    pub fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        for (index, c) in self.children.iter_mut().enumerate() {
            let stdin = c
                .stdin
                .as_mut()
                .with_context(|| format!("tester process {index} was released already"))?;
            writeln!(stdin, "{line}")
                .and_then(|()| stdin.flush())
                .with_context(|| format!("telling tester process {index} {line:?}"))?;
        }
        Ok(())
    }

    fn next_line<T: for<'de> Deserialize<'de>>(
        &mut self,
        index: usize,
        what: &str,
    ) -> anyhow::Result<T> {
        let c = &mut self.children[index];
        let mut line = String::new();
        let n = c
            .stdout
            .read_line(&mut line)
            .with_context(|| format!("reading tester process {index}"))?;
        if n == 0 {
            let status = c.child.wait()?;
            anyhow::bail!("tester process {index} ended ({status}) before {what}");
        }
        serde_json::from_str(&line)
            .with_context(|| format!("tester process {index} wrote {line:?} instead of {what}"))
    }

    /// Holds for `d`, checking every 100 ms that no copy has exited: a copy that dies
    /// while holding is an error at once, not a lower count at the end.
    pub fn hold_for(&mut self, d: std::time::Duration) -> anyhow::Result<()> {
        let until = std::time::Instant::now() + d;
        loop {
            for (index, c) in self.children.iter_mut().enumerate() {
                if let Some(status) = c.child.try_wait()? {
                    anyhow::bail!("tester process {index} ended ({status}) while holding");
                }
            }
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(std::time::Duration::from_millis(100)));
        }
    }

    /// Releases every copy's held connections.
    pub fn release(&mut self) {
        for c in &mut self.children {
            if let Some(mut stdin) = c.stdin.take() {
                // A copy that already died is reported when its report is read.
                let _ = stdin.write_all(b"release\n");
            }
        }
    }

    /// Waits for every copy to exit; an unsuccessful exit is an error naming it.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.release();
        let mut failed = None;
        for (index, c) in self.children.iter_mut().enumerate() {
            let status = c.child.wait()?;
            if !status.success() && failed.is_none() {
                failed = Some(format!("tester process {index} exited with {status}"));
            }
        }
        self.children.clear();
        match failed {
            Some(f) => Err(anyhow::anyhow!(f)),
            None => Ok(()),
        }
    }
}

impl Drop for Copies {
    /// On an error, the copies still running are stopped and reaped: the tester never
    /// leaves connections held by orphans.
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_total() {
        for procs in 1..7 {
            for total in [0, 1, 5, 100_000, 100_001] {
                let sum: usize = (0..procs)
                    .map(|index| Share { index, procs }.part(total))
                    .sum();
                assert_eq!(sum, total, "{total} over {procs}");
            }
        }
        assert_eq!(Share { index: 0, procs: 2 }.part(11), 6);
        assert_eq!(Share { index: 1, procs: 2 }.part(11), 5);
    }

    #[test]
    fn a_share_is_parsed_only_when_its_index_is_in_range() {
        assert_eq!(Share::parse("1/6"), Some(Share { index: 1, procs: 6 }));
        assert_eq!(Share::parse("6/6"), None);
        assert_eq!(Share::parse("x/6"), None);
        assert_eq!(Share::parse("16"), None);
    }

    #[test]
    fn each_copy_has_source_addresses_of_its_own() {
        let a = Share { index: 0, procs: 3 };
        let b = Share { index: 2, procs: 3 };
        assert_eq!(a.first_source(4), 1);
        assert_eq!(b.first_source(4), 9);
        assert_eq!(source_ip(0, 9, 4), Some(Ipv4Addr::new(127, 0, 0, 9)));
        assert_eq!(source_ip(7, 9, 4), Some(Ipv4Addr::new(127, 0, 0, 12)));
        assert_eq!(source_ip(7, 2, 1), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_ip(7, 1, 1), None);
        assert!(check(6, 42).is_ok());
        assert!(check(6, 43).is_err());
    }

    #[test]
    fn child_arguments_lose_procs_and_server_pid_and_gain_json() {
        let args = [
            "bench",
            "hold",
            "--procs",
            "3",
            "--conns",
            "10",
            "--server-pid=77",
        ]
        .map(String::from);
        assert_eq!(
            child_args(args),
            ["bench", "hold", "--conns", "10", "--json"].map(String::from)
        );
        let args = ["bench", "ack", "--json", "--procs=2"].map(String::from);
        assert_eq!(
            child_args(args),
            ["bench", "ack", "--json"].map(String::from)
        );
    }

    #[test]
    fn an_origin_read_here_is_the_same_instant() {
        let before = std::time::Instant::now();
        let origin = instant_of(monotonic_us());
        let after = std::time::Instant::now();
        // Microsecond readings: within a microsecond of the window.
        let slack = std::time::Duration::from_micros(2);
        assert!(origin + slack >= before && origin <= after + slack);
        assert!(
            instant_of(monotonic_us() - 1_000_000) + std::time::Duration::from_millis(999) < after
        );
    }

    #[test]
    fn histograms_cross_as_pairs_without_losing_counts() {
        let mut a = crate::bench::report::histogram();
        for v in [1, 10, 10, 999, 123_456] {
            a.record(v).unwrap();
        }
        let mut b = crate::bench::report::histogram();
        add_pairs(&mut b, &histogram_pairs(&a)).unwrap();
        assert_eq!(b.len(), a.len());
        assert_eq!(b.value_at_quantile(0.5), a.value_at_quantile(0.5));
        assert!(b.equivalent(b.max(), a.max()));
    }
}
