//! Live figures counted on the hot path: bytes in and out, and how long each answer
//! took, as a Prometheus histogram with fixed buckets.
//!
//! Every message passes here, so three rules keep the cost near nothing (measured: ACK
//! instructions per round trip in BENCHMARKS.md):
//!
//! - **One visit per batch.** A connection counts its bytes itself and reports them
//!   with its answers' durations in one [`Meter::report`] when a batch of replies is all
//!   sent (and at its idle checks, past [`REPORT_BYTES`] unreported, and at close), so
//!   an ACK round trip makes one shard lookup, not one per read, per send and per answer.
//! - **No contended cache line.** A [`Meter`] is split into [`SHARDS`] shards of their
//!   own cache lines, and a thread always writes the same shard (a slot number taken
//!   once per thread). The async model's workers each get their own; the thread models'
//!   many threads share 16 shards, each thread mostly asleep, which is why the adds stay
//!   atomic (a relaxed add is one instruction, `lock`ed, either way). A scrape sums the
//!   shards.
//! - **No clock call, no scan.** Durations are measured in ticks of the CPU's time-stamp
//!   counter (one `rdtsc`, where `clock_gettime` costs some fifty instructions), turned
//!   into seconds with a rate measured once, over 2 ms, when the first meter is made.
//!   Where the counter is not invariant (no `constant_tsc` and `nonstop_tsc` in
//!   `/proc/cpuinfo`) or the CPU is not x86-64, the ticks are nanoseconds of
//!   [`Instant`]. A duration's bucket is found from its bit length (its leading zeros):
//!   the bounds are turned into ticks once, and a table says, for each power of two,
//!   the first bound at or above it. Consecutive bounds are at least twice apart, so a
//!   power-of-two range holds at most one of them and one comparison settles the
//!   bucket: the exposed `le` buckets are exact, not rounded to powers of two. A
//!   histogram's count is the sum of its buckets, not a third counter.

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
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Which counter [`ticks`] reads, as this thread learnt it at its first reading: the
/// choice is made once per process ([`rate`]) and copied into each thread, because a
/// thread-local byte is read in one instruction where a static of the crate is reached
/// through the global offset table (two, and a register), twice per ACK round trip.
const CLOCK_UNKNOWN: u8 = 0;
const CLOCK_TSC: u8 = 1;
const CLOCK_INSTANT: u8 = 2;

thread_local! {
    static CLOCK: Cell<u8> = const { Cell::new(CLOCK_UNKNOWN) };
}

fn rate() -> &'static TickRate {
    RATE.get_or_init(|| {
        EPOCH.get_or_init(Instant::now);
        let tsc = tsc_invariant();
        let per_second = if tsc { measure_tsc() } else { 1e9 };
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

/// Now, in ticks: a duration is the difference of two readings (of any threads). The
/// first reading of a process measures the counter's rate if no [`Meter`] or
/// [`Histogram`] has yet.
#[inline]
pub fn ticks() -> u64 {
    if CLOCK.get() == CLOCK_TSC {
        tsc()
    } else {
        ticks_otherwise()
    }
}

/// [`ticks`] on a thread that has not read them yet, or without an invariant counter.
#[inline(never)]
fn ticks_otherwise() -> u64 {
    if CLOCK.get() == CLOCK_UNKNOWN {
        CLOCK.set(if rate().tsc { CLOCK_TSC } else { CLOCK_INSTANT });
        return ticks();
    }
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64
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
    fn record(&self, scale: &Scale, n: u64, took: u64) {
        let i = scale.bucket(took);
        debug_assert!(i < BUCKETS, "bucket {i} of {took} ticks");
        // SAFETY: `Scale::bucket` is below `BUCKETS`: every step's `first` is at most
        // `BUCKETS - 1`, and a step whose `first` is that has the bound `u64::MAX`,
        // which no duration is over (`Scale::at`; tested at every bit length for
        // counters from 1 MHz to 10 GHz). A checked index, or a `min` to drop the check,
        // costs four instructions per batch of answers (BENCHMARKS.md).
        let bucket = unsafe { self.buckets.get_unchecked(i) };
        bucket.fetch_add(n, Ordering::Relaxed);
        self.sum.fetch_add(took * n, Ordering::Relaxed);
    }

    fn add_to(&self, h: &mut Latency) {
        for (i, b) in self.buckets.iter().enumerate() {
            h.buckets[i] += b.load(Ordering::Relaxed);
        }
        h.sum_ticks += self.sum.load(Ordering::Relaxed);
    }
}

/// The bucket bounds in ticks, and how to find a duration's bucket from its leading
/// zeros.
struct Scale {
    /// By leading zeros (0 to 64, the bit length backwards): the first bucket whose
    /// bound is at or above the smallest duration of that length, and that bound in
    /// ticks (`u64::MAX` for `+Inf`). Two tables rather than one of pairs: an index
    /// into each is an addressing mode, with no multiplication.
    bounds: [u64; 65],
    firsts: [u8; 65],
}

impl Scale {
    fn new() -> Scale {
        Scale::at(rate().per_second)
    }

    /// The scale for a counter of `per_second` ticks per second.
    fn at(per_second: f64) -> Scale {
        let mut bounds = [u64::MAX; BUCKETS];
        for (b, s) in bounds.iter_mut().zip(BOUNDS) {
            *b = (s * per_second) as u64;
        }
        let mut scale = Scale {
            bounds: [0; 65],
            firsts: [0; 65],
        };
        for zeros in 0..=64 {
            let len = 64 - zeros;
            let least = if len == 0 { 0 } else { 1u64 << (len - 1) };
            let first = bounds
                .iter()
                .position(|&b| b >= least)
                .unwrap_or(BUCKETS - 1);
            scale.bounds[zeros] = bounds[first];
            scale.firsts[zeros] = first as u8;
        }
        scale
    }

    /// The bucket of a duration of `took` ticks: the first whose bound holds it. One
    /// comparison is enough: consecutive bounds are at least twice apart (and so in
    /// ticks, rounded down), so a range from 2^k to 2^(k+1) - 1 holds at most one
    /// bound; a duration of that range over it belongs to the next.
    #[inline]
    fn bucket(&self, took: u64) -> usize {
        // At most 64: the indexes need no check.
        let zeros = took.leading_zeros() as usize;
        usize::from(self.firsts[zeros]) + usize::from(took > self.bounds[zeros])
    }
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

/// Bytes a connection may move before it reports them without waiting for the end of
/// its batch of replies (a long upload with no reply, a long download to a slow
/// reader): what the meter has not been told stays under this per connection, plus
/// what moved since its last idle check.
pub const REPORT_BYTES: u64 = 64 * 1024;

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
    scale: Scale,
    shards: Box<[MeterShard; SHARDS]>,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            scale: Scale::new(),
            shards: Box::new(std::array::from_fn(|_| MeterShard::default())),
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

/// What a connection reports to its listener's [`Meter`] at once: the bytes it moved
/// since its last report, and the answers whose replies were all sent since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Answers sent, all of kind `kind`.
    pub answers: u64,
    /// The kind of the answers.
    pub kind: Answer,
    /// How long each answer took, in [`ticks`].
    pub took: u64,
}

impl Meter {
    #[inline]
    fn shard(&self) -> &MeterShard {
        &self.shards[slot() % SHARDS]
    }

    /// Adds a connection's report: one shard lookup for its bytes and its answers.
    #[inline(always)]
    pub fn report(&self, r: Report) {
        let s = self.shard();
        s.bytes_in.fetch_add(r.bytes_in, Ordering::Relaxed);
        s.bytes_out.fetch_add(r.bytes_out, Ordering::Relaxed);
        if r.answers > 0 {
            s.answers[r.kind as usize].record(&self.scale, r.answers, r.took);
        }
    }

    /// `n` answers of kind `kind` took `took` ticks each.
    pub fn answered(&self, kind: Answer, n: u64, took: u64) {
        self.shard().answers[kind as usize].record(&self.scale, n, took);
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
    scale: Scale,
    shards: Box<[HistShard]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            scale: Scale::new(),
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
        self.shards[slot() % SHARDS].0.record(&self.scale, 1, took);
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

    /// The bounds in ticks at `per_second`, as the `le` labels say them.
    fn bounds(per_second: f64) -> Vec<u64> {
        BOUNDS.iter().map(|s| (s * per_second) as u64).collect()
    }

    /// The bucket a scan of the bounds finds: the first whose bound holds `took`.
    fn scanned(bounds: &[u64], took: u64) -> usize {
        bounds
            .iter()
            .position(|&b| took <= b)
            .unwrap_or(BOUNDS.len())
    }

    #[test]
    fn consecutive_bounds_are_at_least_twice_apart_as_one_comparison_needs() {
        for w in BOUNDS.windows(2) {
            assert!(w[1] >= 2.0 * w[0], "{} then {}", w[0], w[1]);
        }
    }

    #[test]
    fn every_bound_and_its_neighbours_land_in_the_le_bucket_a_scan_finds() {
        // The machine's own counter, nanoseconds (no invariant counter), and counters
        // from 1 MHz to 10 GHz, odd rates included so that bounds fall anywhere in their
        // power-of-two range.
        let rates = [
            rate().per_second,
            1e9,
            1e6,
            3.3e6,
            2.2e8,
            2_904_123_456.0,
            1e10,
        ];
        for per_second in rates {
            let scale = Scale::at(per_second);
            let bounds = bounds(per_second);
            for (i, &b) in bounds.iter().enumerate() {
                assert_eq!(scale.bucket(b), i, "{per_second}/s: the bound {b} itself");
                assert_eq!(scale.bucket(b + 1), i + 1, "{per_second}/s: just over {b}");
                if b > 0 {
                    let under = scale.bucket(b - 1);
                    assert!(under <= i, "{per_second}/s: just under {b}");
                    assert_eq!(under, scanned(&bounds, b - 1), "{per_second}/s: {}", b - 1);
                }
            }
            for len in 0..=64u32 {
                // The ends of every power-of-two range, and its middle.
                let least = if len == 0 { 0 } else { 1u64 << (len - 1) };
                let most = if len == 0 { 0 } else { least | (least - 1) };
                for took in [least, most, least + (most - least) / 2] {
                    assert_eq!(
                        scale.bucket(took),
                        scanned(&bounds, took),
                        "{per_second}/s: {took} ticks"
                    );
                }
            }
            assert_eq!(scale.bucket(u64::MAX), BOUNDS.len(), "the longest is +Inf");
            assert_eq!(scale.bucket(0), 0);
        }
    }

    #[test]
    fn a_duration_just_over_a_bound_is_counted_in_the_next_bucket_when_read() {
        let m = Meter::default();
        let b = bounds(rate().per_second);
        for (i, took) in [b[0], b[0] + 1, b[9], b[9] + 1, b[21], b[21] + 1]
            .into_iter()
            .enumerate()
        {
            m.answered(Answer::Request, i as u64 + 1, took);
        }
        let h = m.latency(Answer::Request);
        assert_eq!(h.buckets[0], 1, "1 µs itself is le 1 µs");
        assert_eq!(h.buckets[1], 2, "just over 1 µs is le 2.5 µs");
        assert_eq!(h.buckets[9], 3, "1 ms itself is le 1 ms");
        assert_eq!(h.buckets[10], 4);
        assert_eq!(h.buckets[21], 5, "10 s itself is le 10 s");
        assert_eq!(h.buckets[BOUNDS.len()], 6, "just over 10 s is +Inf");
        assert_eq!(h.count(), 21);
    }

    #[test]
    fn counts_from_many_threads_all_add_up() {
        let m = std::sync::Arc::new(Meter::default());
        let threads: Vec<_> = (0..40)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.report(Report {
                            bytes_in: 3,
                            bytes_out: 4,
                            answers: 1,
                            kind: Answer::Command,
                            took: 10,
                        });
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
    fn no_duration_indexes_past_the_last_bucket_whatever_the_rate() {
        // `Hist::record` indexes without a check: the bucket must be below `BUCKETS`
        // for any duration, even at rates where bounds in ticks collapse or saturate.
        for per_second in [1.0, 1e3, 1e9, 1e18, f64::MAX] {
            let scale = Scale::at(per_second);
            for len in 0..=64u32 {
                let least = if len == 0 { 0 } else { 1u64 << (len - 1) };
                let most = if len == 0 { 0 } else { least | (least - 1) };
                for took in [least, most] {
                    let i = scale.bucket(took);
                    assert!(i < BUCKETS, "{per_second}/s: {took} ticks in bucket {i}");
                }
            }
        }
    }

    #[test]
    fn each_thread_learns_the_process_clock_choice_at_its_first_reading() {
        let want = if uses_tsc() { CLOCK_TSC } else { CLOCK_INSTANT };
        let (before, after, t0) = std::thread::spawn(|| {
            let before = CLOCK.get();
            let t0 = ticks();
            (before, CLOCK.get(), t0)
        })
        .join()
        .unwrap();
        assert_eq!(before, CLOCK_UNKNOWN, "a new thread has not chosen yet");
        assert_eq!(after, want, "its first reading copies the process's choice");
        // Readings of two threads are of one counter: a duration across them is
        // honest.
        let took = ticks().wrapping_sub(t0);
        assert!(
            seconds(took) < 5.0,
            "{took} ticks between two threads' readings"
        );
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
