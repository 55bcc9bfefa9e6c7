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
    /// Each message's last delivery (the latency of the member that got it last),
    /// over the messages: one fan-out's time to reach its whole room. `None` when the
    /// run published more messages than are tracked.
    #[serde(default)]
    pub last_delivery: Option<LastDelivery>,
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

/// The latency of each message's last delivery, over the messages of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDelivery {
    /// Messages delivered to at least one member.
    pub messages: u64,
    /// The median message's last delivery, in microseconds.
    pub p50_us: u64,
    /// The slowest message's last delivery, in microseconds.
    pub max_us: u64,
}

impl LastDelivery {
    /// Summarizes each message's last-delivery latency (0: never delivered, left out).
    pub fn of(per_message: &[u64]) -> Option<LastDelivery> {
        let mut v: Vec<u64> = per_message.iter().copied().filter(|&us| us > 0).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(LastDelivery {
            messages: v.len() as u64,
            p50_us: v[(v.len() - 1) / 2],
            max_us: v[v.len() - 1],
        })
    }
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
             \x20 last delivery of a message: median {} us, slowest {} us ({} messages)\n\
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
            self.last_delivery
                .map_or("-".into(), |d| d.p50_us.to_string()),
            self.last_delivery
                .map_or("-".into(), |d| d.max_us.to_string()),
            self.last_delivery.map_or(0, |d| d.messages),
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

#[cfg(test)]
mod tests {
    use super::LastDelivery;

    #[test]
    fn last_delivery_leaves_out_undelivered_messages() {
        let d = LastDelivery::of(&[0, 500, 300, 0, 900]).unwrap();
        assert_eq!(
            d,
            LastDelivery {
                messages: 3,
                p50_us: 500,
                max_us: 900
            }
        );
        assert_eq!(LastDelivery::of(&[0, 0]), None);
        // An even count: the lower middle.
        assert_eq!(LastDelivery::of(&[4, 1, 3, 2]).unwrap().p50_us, 2);
    }
}
