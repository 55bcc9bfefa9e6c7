//! Process sampling from /proc: CPU time (utime + stime), resident memory and thread
//! count, of the server under test and of the tester itself.
//!
//! The tester also reads how long its own threads waited for a CPU while runnable
//! (`/proc/self/task/*/schedstat`): a tester starved by other processes looks exactly
//! like a slow server (timeouts, an idle server), and only this figure tells them apart.
//!
//! CPU time in /proc is counted in clock ticks (usually 10 ms), so CPU per operation is
//! only meaningful over runs of a few seconds; the benchmark record uses 5 s or more.

use std::io;

/// One sample of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User + system CPU of every thread so far, in seconds.
    pub cpu_secs: f64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
    /// Threads.
    pub threads: u64,
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
        cpu_secs: (utime + stime) as f64 / ticks,
        rss_kib: status_field(&status, "VmRSS:").unwrap_or(0),
        threads: status_field(&status, "Threads:").unwrap_or(0),
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
    fn samples_this_process() {
        let s = sample(None).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.threads >= 1);
    }
}
