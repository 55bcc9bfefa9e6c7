//! Live figures counted on the hot path: bytes in and out, and how long each answer
//! took, as a Prometheus histogram with fixed buckets.
//!
//! Every message passes here, so two rules keep the cost near nothing (measured: ACK
//! instructions per round trip in BENCHMARKS.md):
//!
//! - **No contended cache line.** A [`Meter`] is split into [`SHARDS`] shards of their
//!   own cache lines, and a thread always writes the same shard (a slot number taken
//!   once per thread). The async model's workers each get their own; the thread models'
//!   many threads share 16 shards, each thread mostly asleep. A scrape sums the shards.
//! - **No clock call.** Durations are measured in ticks of the CPU's time-stamp counter
//!   (one `rdtsc`, where `clock_gettime` costs some fifty instructions), turned into
//!   seconds with a rate measured once, over 2 ms, when the first meter is made. Where
//!   the counter is not invariant (no `constant_tsc` and `nonstop_tsc` in
//!   `/proc/cpuinfo`) or the CPU is not x86-64, the ticks are nanoseconds of
//!   [`Instant`]. A bucket's bound is turned into ticks once, so recording is a
//!   subtraction, a short scan and two relaxed additions; a histogram's count is the
//!   sum of its buckets, not a third.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Shards per meter: a power of two, at least the cores of the machines this runs on.
pub const SHARDS: usize = 16;

/// The upper bounds of the histogram buckets, in seconds (the `le` labels), from a
/// loopback reply (a few microseconds) to a stalled client (seconds). A last bucket,
/// `+Inf`, takes the rest.
pub const BOUNDS: [f64; 22] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
];

/// Buckets of a histogram, `+Inf` included.
pub const BUCKETS: usize = BOUNDS.len() + 1;

/// What a session answered, the histogram an answer's duration goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A message of a message protocol: an `ACK!`, a greeting, a `hello` reply, a
    /// WebSocket echo.
    Message = 0,
    /// An HTTP request.
    Request = 1,
    /// A chat command (line or WebSocket JSON).
    Command = 2,
}

impl Answer {
    /// Every kind, in the order of their index.
    pub const ALL: [Answer; 3] = [Answer::Message, Answer::Request, Answer::Command];

    /// The kind's label value.
    pub fn name(self) -> &'static str {
        match self {
            Answer::Message => "message",
            Answer::Request => "request",
            Answer::Command => "command",
        }
    }
}

/// How the tick counter runs: its rate, and whether it is the CPU's.
struct TickRate {
    /// Ticks per second.
    per_second: f64,
    tsc: bool,
}

static RATE: OnceLock<TickRate> = OnceLock::new();
/// Whether [`ticks`] reads the time-stamp counter; set once the rate is measured.
static USE_TSC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn rate() -> &'static TickRate {
    RATE.get_or_init(|| {
        EPOCH.get_or_init(Instant::now);
        let tsc = tsc_invariant();
        let per_second = if tsc { measure_tsc() } else { 1e9 };
        USE_TSC.store(tsc, Ordering::Relaxed);
        TickRate { per_second, tsc }
    })
}

fn tsc_invariant() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = info.lines().find(|l| l.starts_with("flags"));
    flags.is_some_and(|f| {
        let has = |w: &str| f.split_whitespace().any(|x| x == w);
        has("constant_tsc") && has("nonstop_tsc")
    })
}

fn measure_tsc() -> f64 {
    let (t0, c0) = (Instant::now(), tsc());
    let mut t1 = Instant::now();
    while t1 - t0 < Duration::from_millis(2) {
        std::hint::spin_loop();
        t1 = Instant::now();
    }
    let c1 = tsc();
    c1.wrapping_sub(c0) as f64 / (t1 - t0).as_secs_f64()
}

#[inline]
fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `rdtsc` exists on every x86-64 CPU and has no preconditions.
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

/// Now, in ticks: a duration is the difference of two readings. Valid once a
/// [`Meter`] or [`Histogram`] exists (they measure the rate).
#[inline]
pub fn ticks() -> u64 {
    if USE_TSC.load(Ordering::Relaxed) {
        tsc()
    } else {
        let epoch = *EPOCH.get_or_init(Instant::now);
        epoch.elapsed().as_nanos() as u64
    }
}

/// Ticks as seconds.
pub fn seconds(ticks: u64) -> f64 {
    ticks as f64 / rate().per_second
}

/// Whether durations come from the CPU's time-stamp counter.
pub fn uses_tsc() -> bool {
    rate().tsc
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's shard number, taken on first use.
#[inline]
fn slot() -> usize {
    SLOT.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        s.set(v);
        v
    })
}

/// One histogram's counters in a shard: the buckets (not cumulative) and the sum of
/// the durations in ticks.
#[derive(Default)]
struct Hist {
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
}

impl Hist {
    #[inline]
    fn record(&self, bounds: &[u64; BOUNDS.len()], n: u64, took: u64) {
        let i = bounds
            .iter()
            .position(|&b| took <= b)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum.fetch_add(took * n, Ordering::Relaxed);
    }

    fn add_to(&self, h: &mut Latency) {
        for (i, b) in self.buckets.iter().enumerate() {
            h.buckets[i] += b.load(Ordering::Relaxed);
        }
        h.sum_ticks += self.sum.load(Ordering::Relaxed);
    }
}

/// The bucket bounds in ticks.
fn tick_bounds() -> [u64; BOUNDS.len()] {
    let r = rate().per_second;
    BOUNDS.map(|s| (s * r) as u64)
}

/// One histogram read from every shard.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    /// Observations per bucket (not cumulative), indexed like [`BOUNDS`] plus `+Inf`.
    pub buckets: [u64; BUCKETS],
    sum_ticks: u64,
}

impl Latency {
    /// Observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The sum of the observed durations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        seconds(self.sum_ticks)
    }

    /// Adds another reading (of another listener of the same service).
    pub fn merge(&mut self, other: &Latency) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_ticks += other.sum_ticks;
    }
}

#[repr(align(128))]
#[derive(Default)]
struct MeterShard {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    answers: [Hist; 3],
}

/// One listener's live figures: bytes in, bytes out, and the duration of each answer
/// by [`Answer`] kind.
pub struct Meter {
    bounds: [u64; BOUNDS.len()],
    shards: Box<[MeterShard]>,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            bounds: tick_bounds(),
            shards: (0..SHARDS).map(|_| MeterShard::default()).collect(),
        }
    }
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("bytes_in", &self.bytes_in())
            .field("bytes_out", &self.bytes_out())
            .finish()
    }
}

impl Meter {
    #[inline]
    fn shard(&self) -> &MeterShard {
        &self.shards[slot() % SHARDS]
    }

    /// `n` bytes were read.
    #[inline]
    pub fn add_in(&self, n: usize) {
        self.shard().bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` bytes were written.
    #[inline]
    pub fn add_out(&self, n: usize) {
        self.shard()
            .bytes_out
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` answers of kind `kind` took `took` ticks each.
    #[inline]
    pub fn answered(&self, kind: Answer, n: u64, took: u64) {
        self.shard().answers[kind as usize].record(&self.bounds, n, took);
    }

    /// Bytes read so far.
    pub fn bytes_in(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.bytes_in.load(Ordering::Relaxed))
            .sum()
    }

    /// Bytes written so far.
    pub fn bytes_out(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.bytes_out.load(Ordering::Relaxed))
            .sum()
    }

    /// The durations of answers of one kind.
    pub fn latency(&self, kind: Answer) -> Latency {
        let mut h = Latency::default();
        for s in self.shards.iter() {
            s.answers[kind as usize].add_to(&mut h);
        }
        h
    }
}

#[repr(align(128))]
#[derive(Default)]
struct HistShard(Hist);

/// A histogram of durations on its own, sharded like a [`Meter`] (the chat's fan-out).
pub struct Histogram {
    bounds: [u64; BOUNDS.len()],
    shards: Box<[HistShard]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds: tick_bounds(),
            shards: (0..SHARDS).map(|_| HistShard::default()).collect(),
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.read().count())
            .finish()
    }
}

impl Histogram {
    /// One duration of `took` ticks.
    #[inline]
    pub fn record(&self, took: u64) {
        self.shards[slot() % SHARDS].0.record(&self.bounds, 1, took);
    }

    /// Every shard summed.
    pub fn read(&self) -> Latency {
        let mut h = Latency::default();
        for s in self.shards.iter() {
            s.0.add_to(&mut h);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_lands_in_the_first_bucket_that_holds_it() {
        let m = Meter::default();
        let tick = |secs: f64| (secs * rate().per_second) as u64;
        m.answered(Answer::Message, 1, tick(0.000_003));
        m.answered(Answer::Message, 2, tick(0.2));
        m.answered(Answer::Message, 1, tick(60.0));
        let h = m.latency(Answer::Message);
        assert_eq!(h.count(), 4);
        assert_eq!(h.buckets[2], 1, "3 µs is under 5 µs: {h:?}");
        assert_eq!(h.buckets[16], 2, "0.2 s is under 0.25 s: {h:?}");
        assert_eq!(h.buckets[BOUNDS.len()], 1, "a minute is +Inf: {h:?}");
        assert!(
            (h.sum_seconds() - 60.403).abs() < 0.01,
            "{}",
            h.sum_seconds()
        );
        assert_eq!(m.latency(Answer::Request).count(), 0);
    }

    #[test]
    fn counts_from_many_threads_all_add_up() {
        let m = std::sync::Arc::new(Meter::default());
        let threads: Vec<_> = (0..40)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.add_in(3);
                        m.add_out(4);
                        m.answered(Answer::Command, 1, 10);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.bytes_in(), 120_000);
        assert_eq!(m.bytes_out(), 160_000);
        assert_eq!(m.latency(Answer::Command).count(), 40_000);
    }

    #[test]
    fn ticks_measure_time() {
        let _ = Histogram::default();
        let t0 = ticks();
        std::thread::sleep(Duration::from_millis(20));
        let took = seconds(ticks() - t0);
        assert!((0.019..0.5).contains(&took), "{took} s for 20 ms");
    }
}
