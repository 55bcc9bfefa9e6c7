//! What a run measured: the latency histogram, errors by kind, and the summary printed
//! for people or written as JSON for scripts.
//!
//! Latencies are kept in an HdrHistogram in microseconds (1 µs to 10 minutes, three
//! significant digits), one per connection task and merged at the end, so recording a
//! sample touches no shared state.

use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Why an operation failed. Each kind is counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection was refused (nothing listening, or the backlog full).
    Refused,
    /// The server reset or abandoned the connection in the middle of an operation.
    Reset,
    /// The server closed the connection before the whole reply came.
    Closed,
    /// No reply within `--timeout`.
    Timeout,
    /// Still waiting for its reply when the run ended, after a wait of at least
    /// [`super::run::UNANSWERED_AFTER`] (or half the timeout): a client the server
    /// never got to, such as the 99 queued behind the one `single` serves.
    Unanswered,
    /// A reply came, but not the bytes the service must send.
    WrongReply,
    /// The TLS handshake failed (a certificate not trusted or not for the name, a
    /// server that does not speak TLS).
    Tls,
    /// Any other failure (for instance out of local ports or descriptors).
    Other,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Refused,
        ErrorKind::Reset,
        ErrorKind::Closed,
        ErrorKind::Timeout,
        ErrorKind::Unanswered,
        ErrorKind::WrongReply,
        ErrorKind::Tls,
        ErrorKind::Other,
    ];

    /// The kind's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Reset => "reset",
            ErrorKind::Closed => "closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unanswered => "unanswered",
            ErrorKind::WrongReply => "wrong_reply",
            ErrorKind::Tls => "tls",
            ErrorKind::Other => "other",
        }
    }

    /// Classifies an I/O error.
    pub fn of_io(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
            io::ErrorKind::UnexpectedEof => ErrorKind::Closed,
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        }
    }

    /// Classifies an error of a TLS handshake: rustls's own (a certificate, a
    /// protocol error) come as invalid data; the rest are the socket's.
    pub fn of_tls(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::InvalidData => ErrorKind::Tls,
            _ => ErrorKind::of_io(e),
        }
    }
}

/// Error counters shared by every connection task (touched only on errors).
#[derive(Debug, Default)]
pub struct ErrorCounters([AtomicU64; 8]);

impl ErrorCounters {
    /// Counts one error.
    pub fn add(&self, kind: ErrorKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Errors of all kinds so far.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// A snapshot.
    pub fn snapshot(&self) -> Errors {
        let g = |k: ErrorKind| self.0[k as usize].load(Ordering::Relaxed);
        Errors {
            refused: g(ErrorKind::Refused),
            reset: g(ErrorKind::Reset),
            closed: g(ErrorKind::Closed),
            timeout: g(ErrorKind::Timeout),
            unanswered: g(ErrorKind::Unanswered),
            wrong_reply: g(ErrorKind::WrongReply),
            tls: g(ErrorKind::Tls),
            other: g(ErrorKind::Other),
        }
    }
}

/// Errors by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// Connections refused.
    pub refused: u64,
    /// Connections reset.
    pub reset: u64,
    /// Connections closed before the reply was complete.
    pub closed: u64,
    /// Replies that did not come in time.
    pub timeout: u64,
    /// Operations still waiting for their reply when the run ended.
    pub unanswered: u64,
    /// Replies with the wrong bytes.
    pub wrong_reply: u64,
    /// Failed TLS handshakes.
    pub tls: u64,
    /// Other failures.
    pub other: u64,
}

impl Errors {
    /// The count of one kind.
    pub fn of(&self, kind: ErrorKind) -> u64 {
        match kind {
            ErrorKind::Refused => self.refused,
            ErrorKind::Reset => self.reset,
            ErrorKind::Closed => self.closed,
            ErrorKind::Timeout => self.timeout,
            ErrorKind::Unanswered => self.unanswered,
            ErrorKind::WrongReply => self.wrong_reply,
            ErrorKind::Tls => self.tls,
            ErrorKind::Other => self.other,
        }
    }

    /// Adds another run's errors, kind by kind.
    pub fn add(&mut self, o: &Errors) {
        self.refused += o.refused;
        self.reset += o.reset;
        self.closed += o.closed;
        self.timeout += o.timeout;
        self.unanswered += o.unanswered;
        self.wrong_reply += o.wrong_reply;
        self.other += o.other;
    }

    /// Errors of all kinds.
    pub fn total(&self) -> u64 {
        self.refused
            + self.reset
            + self.closed
            + self.timeout
            + self.unanswered
            + self.wrong_reply
            + self.tls
            + self.other
    }
}

/// A new latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
}

impl Latency {
    /// The percentiles of a histogram (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// CPU and memory of the server under test, from /proc, over the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerUse {
    /// Server CPU (user + system) during the run, in seconds.
    pub cpu_secs: f64,
    /// Server CPU per successful operation, in microseconds.
    pub cpu_us_per_op: f64,
    /// Resident memory before the run, in KiB.
    pub rss_before_kib: u64,
    /// Resident memory at the end of the run (connections still open), in KiB.
    pub rss_after_kib: u64,
    /// Threads before the run.
    pub threads_before: u64,
    /// Threads at the end of the run.
    pub threads_after: u64,
}

/// The result of one load run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The workload's name.
    pub workload: String,
    /// Connections (concurrent clients).
    pub conns: usize,
    /// Wall time of the measured run, in seconds.
    pub secs: f64,
    /// Operations completed with the right reply.
    pub ok: u64,
    /// Successful operations per second.
    pub throughput: f64,
    /// Operations in flight when the run ended that had waited too briefly to call
    /// unanswered (a healthy server's last replies); not errors.
    pub unfinished: u64,
    /// Target rate (open loop), if any.
    pub rate: Option<f64>,
    /// Latency of successful operations (from the intended send time under `--rate`).
    pub latency: Latency,
    /// Failed operations by kind.
    pub errors: Errors,
    /// The tester's own CPU during the run, in seconds.
    pub tester_cpu_secs: f64,
    /// The tester's CPU as a share of the threads it runs on (1.0 = all busy).
    pub tester_busy: f64,
    /// Seconds the tester's threads were runnable but waited for a CPU (other
    /// processes had it), when the kernel reports it.
    pub tester_cpu_wait_secs: Option<f64>,
    /// That wait as a share of the run's wall time per tester thread (1.0 = the
    /// tester waited for a CPU the whole run).
    pub tester_starved_share: Option<f64>,
    /// The server's CPU and memory, with `--server-pid`.
    pub server: Option<ServerUse>,
}

impl Report {
    /// Whether the tester itself was nearly saturated, so the figures may measure it
    /// rather than the server.
    pub fn tester_bound(&self) -> bool {
        self.tester_busy >= 0.9
    }

    /// Whether the tester's threads waited for a CPU for half of the run or more: then
    /// timeouts and low throughput may be the machine's load, not the server's doing.
    pub fn tester_starved(&self) -> bool {
        self.tester_starved_share.is_some_and(|w| w >= 0.5)
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let l = &self.latency;
        let _ = writeln!(
            s,
            "{}: {} connections, {:.2} s, {} ok, {} errors, {} in flight at the end",
            self.workload,
            self.conns,
            self.secs,
            self.ok,
            self.errors.total(),
            self.unfinished
        );
        let _ = write!(s, "  throughput  {:.0} ops/s", self.throughput);
        if let Some(r) = self.rate {
            let _ = write!(s, " (target {r:.0}/s, latency from intended send times)");
        }
        s.push('\n');
        let _ = writeln!(
            s,
            "  latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
            us(l.p50_us),
            us(l.p90_us),
            us(l.p99_us),
            us(l.p999_us),
            us(l.max_us),
            us(l.mean_us as u64)
        );
        let e = &self.errors;
        let _ = writeln!(
            s,
            "  errors      refused {}  reset {}  closed {}  timeout {}  unanswered {}  wrong reply {}  other {}",
            e.refused, e.reset, e.closed, e.timeout, e.unanswered, e.wrong_reply, e.other
        );
        let _ = writeln!(
            s,
            "  tester CPU  {:.2} s ({:.0}% of its threads)",
            self.tester_cpu_secs,
            self.tester_busy * 100.0
        );
        if let Some(w) = self.tester_cpu_wait_secs {
            let _ = writeln!(
                s,
                "  tester wait {:.2} s runnable without a CPU ({:.0}% of the run per thread)",
                w,
                self.tester_starved_share.unwrap_or(0.0) * 100.0
            );
        }
        if let Some(sv) = &self.server {
            let _ = writeln!(
                s,
                "  server CPU  {:.2} s, {:.2} µs per op",
                sv.cpu_secs, sv.cpu_us_per_op
            );
            let _ = writeln!(
                s,
                "  server RSS  {} KiB -> {} KiB, threads {} -> {}",
                sv.rss_before_kib, sv.rss_after_kib, sv.threads_before, sv.threads_after
            );
        }
        if self.tester_bound() {
            let _ = writeln!(
                s,
                "  WARNING: the tester used {:.0}% of its threads' CPU: it, not the server, \
                 may be the bottleneck (give it more --threads or pin the server apart)",
                self.tester_busy * 100.0
            );
        }
        if self.tester_starved() {
            let _ = writeln!(
                s,
                "  WARNING: the tester waited for a CPU {:.0}% of the run: other processes \
                 had its CPU, so timeouts and throughput here measure the machine's load, \
                 not the server (run on a quiet machine; keep the server in a session of \
                 its own, see BENCHMARKS.md)",
                self.tester_starved_share.unwrap_or(0.0) * 100.0
            );
        }
        s
    }
}

/// A duration in microseconds, printed with a readable unit.
pub fn us(v: u64) -> String {
    fmt_duration(Duration::from_micros(v))
}

fn fmt_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50_us, 500);
        assert_eq!(l.p90_us, 900);
        assert_eq!(l.p99_us, 990);
        assert_eq!(l.p999_us, 999);
        assert_eq!(l.max_us, 1000);
        assert!((l.mean_us - 500.5).abs() < 0.01);
    }

    #[test]
    fn empty_histogram_gives_zeroes() {
        assert_eq!(Latency::of(&histogram()), Latency::default());
    }

    #[test]
    fn io_errors_are_classified() {
        let k = |kind| ErrorKind::of_io(&io::Error::from(kind));
        assert_eq!(k(io::ErrorKind::ConnectionRefused), ErrorKind::Refused);
        assert_eq!(k(io::ErrorKind::ConnectionReset), ErrorKind::Reset);
        assert_eq!(k(io::ErrorKind::BrokenPipe), ErrorKind::Reset);
        assert_eq!(k(io::ErrorKind::UnexpectedEof), ErrorKind::Closed);
        assert_eq!(k(io::ErrorKind::AddrInUse), ErrorKind::Other);
    }

    #[test]
    fn counters_snapshot_by_kind() {
        let c = ErrorCounters::default();
        c.add(ErrorKind::WrongReply);
        c.add(ErrorKind::WrongReply);
        c.add(ErrorKind::Timeout);
        let e = c.snapshot();
        assert_eq!(e.wrong_reply, 2);
        assert_eq!(e.timeout, 1);
        assert_eq!(e.total(), 3);
        assert_eq!(c.total(), 3);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(us(850), "850µs");
        assert_eq!(us(1_500), "1.50ms");
        assert_eq!(us(2_000_000), "2.00s");
    }
}
