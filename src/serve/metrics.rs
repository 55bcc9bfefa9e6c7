//! The figures the admin listener serves: one [`Snapshot`] read from the counters the
//! server already keeps, rendered as Prometheus text (`/metrics`) or JSON (`/stats`).
//!
//! Nothing here is on a connection's path; a scrape only loads counters. The listeners'
//! [`Stats`] are added to once per connection (accept, close), so writes count
//! connections that have closed; their meters (`base::meter`: bytes in and out, the
//! answer-duration histograms) once per batch of replies sent, sharded by thread, so
//! those include open connections. The hub's counters move once per chat message, its fan-out histogram
//! once per room event.
//!
//! Memory per connection comes two ways, because the kernel holds a connection's
//! socket buffers and the process its own state: the resident size grown since the
//! server started (`/proc/self/status`) over the connections open now, and the
//! kernel's TCP memory (`/proc/net/sockstat`, pages × page size) over the TCP sockets
//! in use. The second is the whole network namespace's, not this process's alone:
//! exact when the server is the namespace's only busy user (a container), an upper
//! bound otherwise.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;

use crate::base::meter::{Answer, Latency, BOUNDS};
use crate::base::Budget;
use crate::hub::Hub;
use crate::model::{Drain, Listening, Stats, CLOSE_REASONS};
use crate::service::tls::{Failure, TlsStats, KINDS, VERSIONS};

mod prom;

/// Every service listener the figures are read from, shared with the reload that adds
/// and removes them ([`super::reload`]): one a reload adds is in the next scrape.
///
/// One a reload removes stays in, no longer listed among its service's addresses: its
/// connections carry on and are still counted open, and its counters keep their final
/// values in its service's sums. That is what Prometheus needs: a counter series never
/// goes down while it is exported (a drop reads as a restart, and `rate()` would count
/// the whole value again), and a service whose listener moves keeps one series. The
/// cost is the removed listener's counters (a few KiB) for the process's life, once per
/// listener a reload removed.
#[derive(Clone, Default)]
pub struct Listeners(Arc<Mutex<Vec<Entry>>>);

struct Entry {
    listening: Listening,
    /// Still accepting: not removed by a reload.
    accepting: bool,
}

impl Listeners {
    /// The listeners a server started with.
    pub fn new(listening: &[Listening]) -> Listeners {
        let l = Listeners::default();
        for one in listening {
            l.add(one.clone());
        }
        l
    }

    /// A listener started since (by a reload).
    pub fn add(&self, listening: Listening) {
        self.lock().push(Entry {
            listening,
            accepting: true,
        });
    }

    /// The listener bound to `addr` stopped accepting (a reload removed it): its
    /// counters stay in the figures, its address is no longer listed.
    pub fn remove(&self, addr: SocketAddr) {
        for e in self.lock().iter_mut() {
            if e.accepting && e.listening.addr == addr {
                e.accepting = false;
            }
        }
    }

    /// The listeners accepting now, in the order they started.
    pub fn accepting(&self) -> Vec<Listening> {
        self.lock()
            .iter()
            .filter(|e| e.accepting)
            .map(|e| e.listening.clone())
            .collect()
    }

    /// A poisoned lock holds a list changed in single pushes and flag stores: still
    /// consistent.
    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a snapshot's figures come from: what `serve` holds once it has started.
pub struct Sources {
    /// The concurrency model's name.
    pub model: &'static str,
    /// Every service listener, those a reload added included.
    pub listening: Listeners,
    /// The server's shutdown signal (draining is not ready).
    pub drain: Drain,
    /// The server's budget of buffered bytes.
    pub budget: Arc<Budget>,
    /// The chat's hub, when a chat (or the http service's chat) runs.
    pub hub: Option<Arc<Hub>>,
    /// When the server started.
    pub started: Instant,
    /// The resident size once the listeners were up, before any client.
    pub rss_at_start: Option<u64>,
}

/// Every figure at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The program's version.
    pub version: &'static str,
    /// The concurrency model.
    pub model: &'static str,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
    /// A graceful shutdown is under way.
    pub draining: bool,
    /// Ready for new clients: not draining, and Redis up if the chat uses it.
    pub ready: bool,
    /// Per service (listeners of the same service summed).
    pub services: Vec<ServiceStats>,
    /// Process and kernel memory.
    pub memory: Memory,
    /// The `--max-buffered` budget.
    pub buffered: Buffered,
    /// The chat, when one runs.
    pub chat: Option<ChatStats>,
    /// The upper bounds, in seconds, of the latency histograms' buckets (the last,
    /// `+Inf`, not listed): each `buckets` list has one more entry, not cumulative.
    pub latency_bounds: &'static [f64],
}

/// One service's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServiceStats {
    /// The service's name.
    pub service: String,
    /// Its listening addresses (not those a reload removed, whose counts are still in
    /// the figures).
    pub addrs: Vec<String>,
    /// Connections open now.
    pub open: u64,
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections refused at `--max-conns` (told busy).
    pub refused: u64,
    /// Connections refused at `--max-conns-per-ip` (too many from the address).
    pub refused_per_ip: u64,
    /// Connections refused because their TLS handshake failed (the sum of
    /// `tls.failures`).
    pub refused_tls: u64,
    /// Connections closed because their client failed authentication (the chat's
    /// third bad token).
    pub refused_auth: u64,
    /// TLS handshakes, when the service has a TLS listener.
    pub tls: Option<TlsServiceStats>,
    /// Connections closed.
    pub closed: u64,
    /// Connections closed, by reason ([`CLOSE_REASONS`] but `open`).
    pub closed_by: BTreeMap<&'static str, u64>,
    /// Bytes read, open connections included.
    pub bytes_in: u64,
    /// Bytes written, open connections included.
    pub bytes_out: u64,
    /// How long answers took, by kind (`message`, `request`, `command`), from the read
    /// that brought a request to the write that sent its reply; kinds with none left
    /// out.
    pub latency: BTreeMap<&'static str, LatencyStats>,
    /// `send(2)` calls that wrote bytes, on closed connections (a request-reply
    /// client that waits for each answer: one per message).
    pub writes: u64,
    /// Connections closed for silence.
    pub idle_timeouts: u64,
    /// Connections dropped because they stopped reading.
    pub slow_readers: u64,
    /// Sessions whose mailbox overflowed.
    pub slow_consumers: u64,
    /// Failed `accept(2)` calls.
    pub accept_errors: u64,
    /// Connections closed because their buffers would pass `--max-buffered`.
    pub over_budget: u64,
}

/// One service's TLS handshakes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsServiceStats {
    /// Handshakes completed, by protocol version (`tls1.2`, `tls1.3`), then kind
    /// (`full`, `resumed`).
    pub handshakes: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Handshakes failed, by reason (`timeout`, `not_tls`, `protocol`, `eof`).
    pub failures: BTreeMap<&'static str, u64>,
}

impl TlsServiceStats {
    fn add(&mut self, t: &TlsStats) {
        for (v, version) in VERSIONS.iter().enumerate() {
            let by_kind = self.handshakes.entry(version).or_default();
            for (k, kind) in KINDS.iter().enumerate() {
                *by_kind.entry(kind).or_default() += t.handshakes(v, k);
            }
        }
        for why in Failure::ALL {
            *self.failures.entry(why.name()).or_default() += t.failures(why);
        }
    }
}

/// One histogram of answer durations.
#[derive(Debug, Clone, Default)]
pub struct LatencyStats(Latency);

impl LatencyStats {
    fn merge(&mut self, l: &Latency) {
        self.0.merge(l);
    }
}

impl Serialize for LatencyStats {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = ser.serialize_struct("LatencyStats", 3)?;
        st.serialize_field("count", &self.0.count())?;
        st.serialize_field("sum_seconds", &self.0.sum_seconds())?;
        st.serialize_field("buckets", &self.0.buckets[..])?;
        st.end()
    }
}

/// Memory figures; `None` where the system does not tell (no `/proc`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// Resident set size of the process.
    pub rss_bytes: Option<u64>,
    /// The resident size when the listeners were up.
    pub rss_at_start_bytes: Option<u64>,
    /// Connections open now, every service.
    pub open_connections: u64,
    /// Resident size grown since the start, over the open connections.
    pub user_bytes_per_connection: Option<f64>,
    /// The kernel's TCP socket memory (the network namespace's).
    pub kernel_tcp_bytes: Option<u64>,
    /// TCP sockets in use, IPv4 and IPv6 (the network namespace's).
    pub kernel_tcp_sockets: Option<u64>,
    /// Kernel TCP memory over the TCP sockets in use.
    pub kernel_bytes_per_socket: Option<f64>,
}

/// The buffered-bytes budget.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Buffered {
    /// Bytes charged now.
    pub used_bytes: u64,
    /// `--max-buffered`.
    pub limit_bytes: u64,
}

/// The chat's state on this process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatStats {
    /// Rooms with a member here.
    pub rooms: u64,
    /// Memberships (a member in two rooms counts twice).
    pub memberships: u64,
    /// Messages said.
    pub messages: u64,
    /// Events handed to members' mailboxes.
    pub deliveries: u64,
    /// Of those, the ones a worker wrote on lent sockets while helping another
    /// worker's fan-out of a large room.
    pub helped_deliveries: u64,
    /// Events refused by a full mailbox (that member is then dropped).
    pub overflows: u64,
    /// Tokens refused (`ERR bad-token`), with `--jwt-secret` or `--jwt-public-key`.
    pub auth_failures: u64,
    /// Room events, from their place in the room's order on this process to their
    /// hand-off to the last member's mailbox.
    pub fanout: LatencyStats,
    /// Redis, when the chat spans processes.
    pub redis: Option<RedisStats>,
}

/// The Redis link.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisStats {
    /// Connected now.
    pub up: bool,
    /// Connections made (the first and every reconnection).
    pub connects: u64,
    /// Connections lost.
    pub losses: u64,
    /// Pipelines answered (round trips to Redis).
    pub round_trips: u64,
    /// Seconds those round trips took, in all.
    pub round_trip_seconds: f64,
    /// Seconds the last round trip took.
    pub round_trip_last_seconds: f64,
    /// Requests in the pipeline out now: the pipeline depth.
    pub pipeline_depth: u64,
}

impl Snapshot {
    /// Reads every figure now.
    pub fn collect(src: &Sources) -> Snapshot {
        let mut services: Vec<ServiceStats> = Vec::new();
        let listening = src.listening.lock();
        for Entry {
            listening: l,
            accepting,
        } in listening.iter()
        {
            let i = match services.iter().position(|s| s.service == l.service) {
                Some(i) => i,
                None => {
                    services.push(ServiceStats {
                        service: l.service.clone(),
                        ..ServiceStats::default()
                    });
                    services.len() - 1
                }
            };
            if *accepting {
                services[i].addrs.push(l.addr.to_string());
            }
            services[i].add(&l.stats);
            if let Some(n) = &l.refused_per_ip {
                services[i].refused_per_ip += n.load(Ordering::Relaxed);
            }
            if let Some(t) = &l.tls {
                let tls = services[i].tls.get_or_insert_with(TlsServiceStats::default);
                tls.add(t);
                services[i].refused_tls = tls.failures.values().sum();
            }
        }
        drop(listening);
        let open_connections = services.iter().map(|s| s.open).sum();
        let memory = memory(src.rss_at_start, open_connections);
        let chat = src.hub.as_ref().map(|hub| {
            let (rooms, memberships) = hub.census();
            let s = &hub.stats;
            ChatStats {
                rooms: rooms as u64,
                memberships: memberships as u64,
                messages: s.messages.load(Ordering::Relaxed),
                deliveries: s.deliveries.load(Ordering::Relaxed),
                helped_deliveries: s.helped.load(Ordering::Relaxed),
                overflows: s.overflows.load(Ordering::Relaxed),
                auth_failures: s.auth_failures.load(Ordering::Relaxed),
                fanout: LatencyStats(s.fanout.read()),
                redis: hub.uses_redis().then(|| RedisStats {
                    up: hub.is_available(),
                    connects: s.redis_connects.load(Ordering::Relaxed),
                    losses: s.redis_losses.load(Ordering::Relaxed),
                    round_trips: s.redis_round_trips.load(Ordering::Relaxed),
                    round_trip_seconds: s.redis_round_trip_us_sum.load(Ordering::Relaxed) as f64
                        / 1e6,
                    round_trip_last_seconds: s.redis_round_trip_us_last.load(Ordering::Relaxed)
                        as f64
                        / 1e6,
                    pipeline_depth: s.redis_in_flight.load(Ordering::Relaxed),
                }),
            }
        });
        let draining = src.drain.is_started();
        let redis_down = chat
            .as_ref()
            .and_then(|c| c.redis.as_ref())
            .is_some_and(|r| !r.up);
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            model: src.model,
            uptime_seconds: src.started.elapsed().as_secs_f64(),
            draining,
            ready: !draining && !redis_down,
            services,
            memory,
            buffered: Buffered {
                used_bytes: src.budget.used() as u64,
                limit_bytes: src.budget.limit() as u64,
            },
            chat,
            latency_bounds: &BOUNDS,
        }
    }
}

impl ServiceStats {
    fn add(&mut self, s: &Stats) {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        self.open += s.active.load(Ordering::Relaxed) as u64;
        self.accepted += get(&s.accepted);
        self.refused += get(&s.refused);
        self.closed += get(&s.closed);
        for (i, reason) in CLOSE_REASONS.iter().enumerate().skip(1) {
            *self.closed_by.entry(reason).or_default() += get(&s.closed_by[i]);
        }
        self.bytes_in += s.meter.bytes_in();
        self.bytes_out += s.meter.bytes_out();
        for kind in Answer::ALL {
            let l = s.meter.latency(kind);
            if l.count() > 0 {
                let e = self.latency.entry(kind.name()).or_default();
                e.merge(&l);
            }
        }
        self.writes += get(&s.writes);
        self.idle_timeouts += get(&s.idle_timeouts);
        self.slow_readers += get(&s.slow_readers);
        self.slow_consumers += get(&s.slow_consumers);
        self.accept_errors += get(&s.accept_errors);
        self.over_budget += get(&s.over_budget);
        self.refused_auth += get(&s.refused_auth);
    }
}

/// The process's resident set size, from `/proc/self/status`.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss(&status)
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `(pages of TCP memory, TCP sockets in use)` from `/proc/net/sockstat` and the
/// `TCP6: inuse` of `/proc/net/sockstat6`.
fn parse_sockstat(v4: &str, v6: &str) -> Option<(u64, u64)> {
    let field = |text: &str, proto: &str, key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(proto))?;
        let mut words = line[proto.len()..].split_whitespace();
        while let Some(w) = words.next() {
            if w == key {
                return words.next()?.parse().ok();
            }
        }
        None
    };
    let pages = field(v4, "TCP:", "mem")?;
    let inuse = field(v4, "TCP:", "inuse")? + field(v6, "TCP6:", "inuse").unwrap_or(0);
    Some((pages, inuse))
}

fn memory(rss_at_start: Option<u64>, open: u64) -> Memory {
    let rss = rss_bytes();
    let per = |total: u64, n: u64| (n > 0).then(|| total as f64 / n as f64);
    let user = match (rss, rss_at_start) {
        (Some(now), Some(start)) => per(now.saturating_sub(start), open),
        _ => None,
    };
    let v4 = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/sockstat6").unwrap_or_default();
    let kernel = parse_sockstat(&v4, &v6)
        .map(|(pages, inuse)| (pages * rustix::param::page_size() as u64, inuse));
    Memory {
        rss_bytes: rss,
        rss_at_start_bytes: rss_at_start,
        open_connections: open,
        user_bytes_per_connection: user,
        kernel_tcp_bytes: kernel.map(|k| k.0),
        kernel_tcp_sockets: kernel.map(|k| k.1),
        kernel_bytes_per_socket: kernel.and_then(|(bytes, n)| per(bytes, n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_size_is_read_in_bytes() {
        let status = "Name:\tmulticlient\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(parse_rss(status), Some(1234 * 1024));
        assert_eq!(parse_rss("Name:\tx\n"), None);
        assert!(rss_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn sockstat_gives_tcp_pages_and_sockets_of_both_families() {
        let v4 =
            "sockets: used 310\nTCP: inuse 12 orphan 0 tw 3 alloc 20 mem 7\nUDP: inuse 1 mem 2\n";
        let v6 = "TCP6: inuse 5\nUDP6: inuse 1\n";
        assert_eq!(parse_sockstat(v4, v6), Some((7, 17)));
        assert_eq!(parse_sockstat(v4, ""), Some((7, 12)));
        assert_eq!(parse_sockstat("sockets: used 3\n", v6), None);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(prom::escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
