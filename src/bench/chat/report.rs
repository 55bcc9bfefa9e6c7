//! What a chat run measured: delivery errors by kind, latency, the server's CPU per
//! delivery, and the summary printed for people or written as JSON.

use serde::{Deserialize, Serialize};

use crate::bench::report::{Latency, ServerUse};

/// Delivery errors and connection failures, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
