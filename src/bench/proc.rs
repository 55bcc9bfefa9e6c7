//! Process sampling from /proc: CPU time (utime + stime), resident memory and thread
//! count, of the server under test and of the tester itself.
//!
//! The tester also reads how long its own threads waited for a CPU while runnable
//! (`/proc/self/task/*/schedstat`): a tester starved by other processes looks exactly
//! like a slow server (timeouts, an idle server), and only this figure tells them apart.
//!
//! CPU time is read from each process's CPU-time clock, to the nanosecond (falling back
//! to /proc's clock ticks, usually 10 ms, when that clock cannot be read). CPU per
//! operation still wants runs of a few seconds to be steady; the benchmark record uses
//! 5 s or more.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One sample of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User + system CPU of every thread so far, in seconds.
    pub cpu_secs: f64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
    /// Threads.
    pub threads: u64,
    /// Anonymous resident memory (heap, stacks), in KiB.
    pub rss_anon_kib: u64,
    /// File-backed resident memory (the binary, libraries), in KiB.
    pub rss_file_kib: u64,
}

impl Sample {
    fn add(&mut self, o: &Sample) {
        self.cpu_secs += o.cpu_secs;
        self.rss_kib += o.rss_kib;
        self.threads += o.threads;
        self.rss_anon_kib += o.rss_anon_kib;
        self.rss_file_kib += o.rss_file_kib;
    }
}

/// Samples process `pid` and its child processes, summed: a server run with
/// `--processes N` is its supervisor and N workers, each with memory of its own.
/// A child that exits between the listing and the read no longer counts.
pub fn sample_tree(pid: u32) -> io::Result<Sample> {
    sample_with(pid, &children(pid))
}

/// Samples process `pid` and the processes `kids`, summed.
fn sample_with(pid: u32, kids: &[u32]) -> io::Result<Sample> {
    let mut total = sample(Some(pid))?;
    for s in kids.iter().filter_map(|&k| sample(Some(k)).ok()) {
        total.add(&s);
    }
    Ok(total)
}

/// The peak resident memory and thread count of process `pid` and its children
/// ([`sample_tree`]), sampled every `every` on a thread of its own until
/// [`Peak::finish`]. Sampling reads several /proc files (and lists every process for
/// the children, done once a second here), which takes most of a millisecond: run on
/// the tester's runtime, it held the members' reads back for that long 50 times a
/// second, a third of a one-thread tester's time in a 10,000-member fan-out.
pub struct Peak {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Sample>,
}

impl Peak {
    /// Starts sampling `pid` every `every`.
    pub fn start(pid: u32, every: Duration) -> io::Result<Peak> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("peak-sampler".into())
            .spawn(move || {
                let mut peak = Sample::default();
                let mut kids: Vec<u32> = Vec::new();
                let mut listed: Option<Instant> = None;
                loop {
                    if listed.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        kids = children(pid);
                        listed = Some(Instant::now());
                    }
                    if let Ok(total) = sample_with(pid, &kids) {
                        peak.rss_kib = peak.rss_kib.max(total.rss_kib);
                        peak.threads = peak.threads.max(total.threads);
                    }
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::park_timeout(every);
                }
                peak
            })?;
        Ok(Peak { stop, thread })
    }

    /// Stops sampling; the peak of the samples taken (at least one is).
    pub fn finish(self) -> Sample {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        self.thread.join().unwrap_or_default()
    }
}

/// The PIDs whose parent is `pid`, from every `/proc/PID/stat`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| parse_stat_ppid(&s))
                == Some(pid)
        })
        .collect()
}

/// The parent PID (field 4) of a `/proc/PID/stat` line.
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The kernel's memory for TCP sockets, machine-wide: on loopback it covers both ends
/// of every connection (the tester's socket and the server's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    /// TCP sockets in use (`/proc/net/sockstat` `TCP: inuse`).
    pub tcp_inuse: u64,
    /// Pages charged to TCP socket buffers (`TCP: mem`).
    pub tcp_mem_pages: u64,
    /// KiB of the `TCP` slab (one object per TCP socket), when `/proc/slabinfo` is
    /// readable (root).
    pub slab_tcp_kib: Option<u64>,
    /// KiB of the `sock_inode_cache` slab (the socket's inode), when readable.
    pub slab_sock_inode_kib: Option<u64>,
}

/// Samples [`Kernel`] from `/proc/net/sockstat` and `/proc/slabinfo`.
pub fn kernel() -> io::Result<Kernel> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat")?;
    let (tcp_inuse, tcp_mem_pages) =
        parse_sockstat_tcp(&sockstat).ok_or_else(|| bad("/proc/net", "sockstat"))?;
    let slab = std::fs::read_to_string("/proc/slabinfo").ok();
    let slab_kib = |name| slab.as_deref().and_then(|s| parse_slab_kib(s, name));
    Ok(Kernel {
        tcp_inuse,
        tcp_mem_pages,
        slab_tcp_kib: slab_kib("TCP"),
        slab_sock_inode_kib: slab_kib("sock_inode_cache"),
    })
}

/// The CPU time of process `pid` (`None`: this process) in seconds, from its CPU-time
/// clock (`clock_getcpuclockid`): user + system of every thread, exited ones too, as
/// `/proc/PID/stat` counts them, but to the nanosecond rather than in clock ticks.
/// `None` where the clock cannot be read (the process is gone); the caller then falls
/// back to the ticks. (Neither `rustix` nor `std` exposes another process's CPU clock.)
fn cpu_clock_secs(pid: Option<u32>) -> Option<f64> {
    let pid = libc::pid_t::try_from(pid.unwrap_or(0)).ok()?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid place for the call to write the clock's id to.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return None;
    }
    clock_secs(clock)
}

/// The reading of `clock`, in seconds; `None` if it cannot be read.
fn clock_secs(clock: libc::clockid_t) -> Option<f64> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return None;
    }
    Some(t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9)
}

/// `inuse` and `mem` of the `TCP:` line of `/proc/net/sockstat`.
pub fn parse_sockstat_tcp(sockstat: &str) -> Option<(u64, u64)> {
    let line = sockstat.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name| {
        words
            .windows(2)
            .find(|w| w[0] == name)
            .and_then(|w| w[1].parse().ok())
    };
    Some((field("inuse")?, field("mem")?))
}

/// KiB held by slab `name` (objects × object size) in `/proc/slabinfo`.
pub fn parse_slab_kib(slabinfo: &str, name: &str) -> Option<u64> {
    let line = slabinfo
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))?;
    let mut f = line.split_whitespace().skip(2);
    let objs: u64 = f.next()?.parse().ok()?;
    let size: u64 = f.next()?.parse().ok()?;
    Some(objs * size / 1024)
}

/// Samples process `pid` (`None`: this process).
pub fn sample(pid: Option<u32>) -> io::Result<Sample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let (utime, stime) = parse_stat_cpu(&stat).ok_or_else(|| bad(&dir, "stat"))?;
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    Ok(Sample {
        cpu_secs: cpu_clock_secs(pid).unwrap_or_else(|| (utime + stime) as f64 / ticks),
        rss_kib: status_field(&status, "VmRSS:").unwrap_or(0),
        threads: status_field(&status, "Threads:").unwrap_or(0),
        rss_anon_kib: status_field(&status, "RssAnon:").unwrap_or(0),
        rss_file_kib: status_field(&status, "RssFile:").unwrap_or(0),
    })
}

/// Seconds this process's threads have spent runnable but waiting for a CPU (the
/// second field of each thread's `schedstat`, in nanoseconds), summed over the threads
/// alive now; `None` when the kernel does not keep scheduler statistics.
pub fn cpu_wait_secs() -> Option<f64> {
    let mut total_ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread may exit between the listing and the read: it no longer counts.
        let Ok(line) = std::fs::read_to_string(path) else {
            continue;
        };
        total_ns += parse_schedstat_wait(&line)?;
    }
    Some(total_ns as f64 / 1e9)
}

/// The run-queue wait (second field, ns) of a `schedstat` line:
/// `run_ns wait_ns timeslices`.
pub fn parse_schedstat_wait(line: &str) -> Option<u64> {
    line.split_whitespace().nth(1)?.parse().ok()
}

fn bad(dir: &str, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot parse {dir}/{what}"),
    )
}

/// utime and stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name
/// (field 2) is in parentheses and may hold spaces, so fields are counted after its
/// closing parenthesis.
pub fn parse_stat_cpu(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th from here.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// A numeric field of `/proc/PID/status` (`VmRSS:   1234 kB` gives 1234).
pub fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_fields_after_a_name_with_spaces() {
        let line = "1234 (my (odd) srv) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu(line), Some((250, 75)));
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tx\nVmRSS:\t   2048 kB\nThreads:\t7\n";
        assert_eq!(status_field(s, "VmRSS:"), Some(2048));
        assert_eq!(status_field(s, "Threads:"), Some(7));
        assert_eq!(status_field(s, "VmHWM:"), None);
    }

    #[test]
    fn schedstat_wait_is_the_second_field() {
        assert_eq!(
            parse_schedstat_wait("193451855 4318000741 76\n"),
            Some(4318000741)
        );
        assert_eq!(parse_schedstat_wait("193451855"), None);
        assert_eq!(parse_schedstat_wait("1 x 2"), None);
    }

    #[test]
    fn parent_pid_after_a_name_with_spaces() {
        let line = "1234 (my (odd) srv) S 77 1234 1234 0";
        assert_eq!(parse_stat_ppid(line), Some(77));
    }

    #[test]
    fn sockstat_and_slab_fields() {
        let sockstat =
            "sockets: used 200\nTCP: inuse 12 orphan 0 tw 3 alloc 15 mem 42\nUDP: inuse 1 mem 0\n";
        assert_eq!(parse_sockstat_tcp(sockstat), Some((12, 42)));
        let slab = "# name <active_objs> <num_objs> <objsize>\n\
                    TCPv6 10 20 2560 12 8 : tunables 0 0 0\n\
                    TCP 1000 2048 2432 13 8 : tunables 0 0 0\n";
        assert_eq!(parse_slab_kib(slab, "TCP"), Some(2048 * 2432 / 1024));
        assert_eq!(parse_slab_kib(slab, "UDP"), None);
    }

    #[test]
    fn this_process_is_among_its_parents_children() {
        let me = std::process::id();
        let parent = parse_stat_ppid(&std::fs::read_to_string("/proc/self/stat").unwrap());
        assert!(children(parent.unwrap()).contains(&me));
        let s = sample_tree(me).unwrap();
        assert!(s.rss_kib >= s.rss_anon_kib && s.rss_anon_kib > 0);
    }

    #[test]
    fn the_peak_counts_the_children_and_is_sampled_at_least_once() {
        // A shell (one thread) with a child of its own (one thread).
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = sh.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while children(pid).is_empty() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        let peak = Peak::start(pid, Duration::from_secs(60)).unwrap().finish();
        for kid in children(pid) {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(kid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        let _ = sh.kill();
        let _ = sh.wait();
        assert_eq!(peak.threads, 2, "{peak:?}");
        assert!(peak.rss_kib > 0);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(None).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.threads >= 1);
    }

    /// CPU time to the nanosecond, not in 10 ms ticks: a short test run of a cheap
    /// server reads as more than nothing; an exited thread's time still counts.
    #[test]
    fn cpu_time_is_finer_than_a_tick_and_counts_exited_threads() {
        let cpu = || sample(None).unwrap().cpu_secs;
        // Ticks make every reading a whole number of hundredths of a second; a reading
        // in nanoseconds is one by chance once in a hundred million. (A bound on how far
        // the clock moves would not do: the other tests' threads run in this process.)
        let hundredths = cpu() * 100.0;
        let off = (hundredths - hundredths.round()).abs();
        assert!(
            off > 1e-6,
            "{} s: a whole number of ticks",
            hundredths / 100.0
        );
        // A thread that burns 20 ms of its own CPU, then exits.
        let before = cpu();
        std::thread::spawn(|| {
            let own = || clock_secs(libc::CLOCK_THREAD_CPUTIME_ID).unwrap();
            let (start, deadline) = (own(), Instant::now() + Duration::from_secs(5));
            while own() - start < 0.020 && Instant::now() < deadline {}
        })
        .join()
        .unwrap();
        assert!(cpu() - before >= 0.020, "{} s", cpu() - before);
        // Another process, which has only started `sleep`, costs less than a tick. Its
        // clock is read once it sleeps: the kernel adds a thread's time to it when the
        // thread stops running (or at a tick), so a child still on its first run on the
        // other CPU reads 0.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "exec sleep 30"])
            .spawn()
            .unwrap();
        let stat = format!("/proc/{}/stat", sh.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&stat).is_ok_and(|s| s.contains("(sleep) S"))
            && Instant::now() < deadline
        {
            std::thread::yield_now();
        }
        let s = sample(Some(sh.id()));
        let _ = sh.kill();
        let _ = sh.wait();
        assert!(s.unwrap().cpu_secs > 0.0);
    }
}
