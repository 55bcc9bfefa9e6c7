//! The Prometheus text exposition (format 0.0.4) of a [`Snapshot`]: every family with
//! its help and type, labels bounded (service, model, reason; never a room, nick or
//! address), as `docs/operations.md` lists them.

use std::fmt::Write as _;

use super::*;

impl Snapshot {
    /// The Prometheus text exposition (format 0.0.4) of this snapshot.
    pub fn prometheus(&self) -> String {
        let mut p = Prom::default();
        p.family(
            "multiclient_info",
            "gauge",
            "The program's version and concurrency model (always 1).",
        );
        let labels = [("version", self.version), ("model", self.model)];
        p.sample("multiclient_info", &labels, 1.0);
        p.one(
            "multiclient_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            self.uptime_seconds,
        );
        p.one(
            "multiclient_draining",
            "gauge",
            "1 while a graceful shutdown is under way.",
            flag(self.draining),
        );
        p.one(
            "multiclient_ready",
            "gauge",
            "1 when ready for new clients (not draining, Redis up if the chat needs it).",
            flag(self.ready),
        );

        type Field = fn(&ServiceStats) -> u64;
        let per_service: [(&str, &str, &str, Field); 11] = [
            (
                "multiclient_connections_open",
                "gauge",
                "Connections open now.",
                |s| s.open,
            ),
            (
                "multiclient_connections_accepted_total",
                "counter",
                "Connections accepted and served.",
                |s| s.accepted,
            ),
            (
                "multiclient_received_bytes_total",
                "counter",
                "Bytes read (open connections included).",
                |s| s.bytes_in,
            ),
            (
                "multiclient_sent_bytes_total",
                "counter",
                "Bytes written (open connections included).",
                |s| s.bytes_out,
            ),
            (
                "multiclient_writes_total",
                "counter",
                "send(2) calls that wrote bytes, on connections that have closed.",
                |s| s.writes,
            ),
            (
                "multiclient_idle_timeouts_total",
                "counter",
                "Connections closed for silence (--idle-timeout).",
                |s| s.idle_timeouts,
            ),
            (
                "multiclient_slow_readers_total",
                "counter",
                "Connections dropped because their output stalled (--write-timeout).",
                |s| s.slow_readers,
            ),
            (
                "multiclient_slow_consumers_total",
                "counter",
                "Connections dropped because their event queue overflowed (--max-queue).",
                |s| s.slow_consumers,
            ),
            (
                "multiclient_accept_errors_total",
                "counter",
                "Failed accept(2) calls.",
                |s| s.accept_errors,
            ),
            (
                "multiclient_over_budget_total",
                "counter",
                "Connections closed because their buffers would pass --max-buffered.",
                |s| s.over_budget,
            ),
            (
                "multiclient_connections_closed_total",
                "counter",
                "Connections closed, by reason.",
                |s| s.closed,
            ),
        ];
        for (name, kind, help, field) in per_service {
            p.family(name, kind, help);
            for s in &self.services {
                if name == "multiclient_connections_closed_total" {
                    for (reason, n) in &s.closed_by {
                        let l = [("service", s.service.as_str()), ("reason", reason)];
                        p.sample(name, &l, *n as f64);
                    }
                } else {
                    p.sample(name, &[("service", s.service.as_str())], field(s) as f64);
                }
            }
        }
        p.family(
            "multiclient_connections_refused_total",
            "counter",
            "Connections refused, by reason (busy: --max-conns; per_ip: --max-conns-per-ip; tls: a failed TLS handshake; auth: too many bad tokens).",
        );
        for s in &self.services {
            for (reason, n) in [
                ("busy", s.refused),
                ("per_ip", s.refused_per_ip),
                ("tls", s.refused_tls),
                ("auth", s.refused_auth),
            ] {
                let l = [("service", s.service.as_str()), ("reason", reason)];
                p.sample("multiclient_connections_refused_total", &l, n as f64);
            }
        }
        if self.services.iter().any(|s| s.tls.is_some()) {
            p.family(
                "multiclient_tls_handshakes_total",
                "counter",
                "TLS handshakes completed, by protocol version (tls1.2, tls1.3) and kind (full, resumed).",
            );
            for s in &self.services {
                let Some(t) = &s.tls else { continue };
                for (version, by_kind) in &t.handshakes {
                    for (kind, n) in by_kind {
                        let l = [
                            ("service", s.service.as_str()),
                            ("version", version),
                            ("kind", kind),
                        ];
                        p.sample("multiclient_tls_handshakes_total", &l, *n as f64);
                    }
                }
            }
            p.family(
                "multiclient_tls_handshake_failures_total",
                "counter",
                "TLS handshakes failed, by reason (timeout: none within --header-timeout; not_tls: no TLS record; protocol: a TLS error or alert; eof: closed mid-handshake).",
            );
            for s in &self.services {
                let Some(t) = &s.tls else { continue };
                for (reason, n) in &t.failures {
                    let l = [("service", s.service.as_str()), ("reason", reason)];
                    p.sample("multiclient_tls_handshake_failures_total", &l, *n as f64);
                }
            }
        }

        p.family(
            "multiclient_answer_duration_seconds",
            "histogram",
            "How long answers took, from the read that brought a request to the write that sent its reply, by kind (message, request, command).",
        );
        for s in &self.services {
            for (kind, l) in &s.latency {
                let l = &l.0;
                let labels = [
                    ("service", s.service.as_str()),
                    ("model", self.model),
                    ("kind", kind),
                ];
                p.histogram("multiclient_answer_duration_seconds", &labels, l);
            }
        }

        let m = &self.memory;
        p.opt(
            "multiclient_resident_memory_bytes",
            "Resident set size of the process.",
            m.rss_bytes.map(|v| v as f64),
        );
        p.opt(
            "multiclient_resident_memory_at_start_bytes",
            "Resident set size once the listeners were up, before any client.",
            m.rss_at_start_bytes.map(|v| v as f64),
        );
        p.opt(
            "multiclient_kernel_tcp_memory_bytes",
            "The kernel's TCP socket memory in this network namespace (/proc/net/sockstat).",
            m.kernel_tcp_bytes.map(|v| v as f64),
        );
        p.opt(
            "multiclient_kernel_tcp_sockets",
            "TCP sockets in use in this network namespace, IPv4 and IPv6.",
            m.kernel_tcp_sockets.map(|v| v as f64),
        );
        p.family("multiclient_memory_per_connection_bytes", "gauge", "Memory per open connection: user (resident size grown since start over open connections), kernel (TCP memory over TCP sockets).");
        if let Some(v) = m.user_bytes_per_connection {
            p.sample(
                "multiclient_memory_per_connection_bytes",
                &[("kind", "user")],
                v,
            );
        }
        if let Some(v) = m.kernel_bytes_per_socket {
            p.sample(
                "multiclient_memory_per_connection_bytes",
                &[("kind", "kernel")],
                v,
            );
        }
        p.one(
            "multiclient_buffered_bytes",
            "gauge",
            "Bytes buffered for clients, charged against --max-buffered.",
            self.buffered.used_bytes as f64,
        );
        p.one(
            "multiclient_buffered_limit_bytes",
            "gauge",
            "The --max-buffered budget.",
            self.buffered.limit_bytes as f64,
        );

        if let Some(c) = &self.chat {
            p.one(
                "multiclient_chat_rooms",
                "gauge",
                "Chat rooms with a member on this process.",
                c.rooms as f64,
            );
            p.one(
                "multiclient_chat_memberships",
                "gauge",
                "Chat room memberships on this process.",
                c.memberships as f64,
            );
            p.one(
                "multiclient_chat_messages_total",
                "counter",
                "Chat messages said on this process.",
                c.messages as f64,
            );
            p.one(
                "multiclient_chat_deliveries_total",
                "counter",
                "Chat events handed to members' mailboxes.",
                c.deliveries as f64,
            );
            p.one(
                "multiclient_chat_helped_deliveries_total",
                "counter",
                "Of the chat's deliveries, those a worker wrote while helping another worker's fan-out of a large room.",
                c.helped_deliveries as f64,
            );
            p.one(
                "multiclient_chat_overflows_total",
                "counter",
                "Chat events refused by a full mailbox (the member is dropped).",
                c.overflows as f64,
            );
            p.one(
                "multiclient_chat_auth_failures_total",
                "counter",
                "Chat tokens refused (ERR bad-token), on either wire.",
                c.auth_failures as f64,
            );
            p.family(
                "multiclient_chat_fanout_duration_seconds",
                "histogram",
                "Chat room events, from their place in the room's order on this process to their hand-off to the last member's mailbox.",
            );
            p.histogram(
                "multiclient_chat_fanout_duration_seconds",
                &[("model", self.model)],
                &c.fanout.0,
            );
            if let Some(r) = &c.redis {
                p.one(
                    "multiclient_redis_up",
                    "gauge",
                    "1 while connected to Redis.",
                    flag(r.up),
                );
                p.one(
                    "multiclient_redis_connects_total",
                    "counter",
                    "Connections to Redis made (the first and every reconnection).",
                    r.connects as f64,
                );
                p.one(
                    "multiclient_redis_losses_total",
                    "counter",
                    "Connections to Redis lost.",
                    r.losses as f64,
                );
                p.one(
                    "multiclient_redis_round_trips_total",
                    "counter",
                    "Pipelines to Redis answered (round trips).",
                    r.round_trips as f64,
                );
                p.one(
                    "multiclient_redis_round_trip_seconds_total",
                    "counter",
                    "Seconds the Redis round trips took, in all (divide by the round trips for the mean).",
                    r.round_trip_seconds,
                );
                p.one(
                    "multiclient_redis_round_trip_last_seconds",
                    "gauge",
                    "Seconds the last Redis round trip took.",
                    r.round_trip_last_seconds,
                );
                p.one(
                    "multiclient_redis_pipeline_depth",
                    "gauge",
                    "Requests in the pipeline out to Redis now (0 while none is).",
                    r.pipeline_depth as f64,
                );
            }
        }
        p.out
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// A Prometheus text exposition being written.
#[derive(Default)]
struct Prom {
    out: String,
}

impl Prom {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {v}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }

    /// One histogram's `_bucket` (cumulative, `le` in seconds), `_sum` and `_count`.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], l: &Latency) {
        let bucket = format!("{name}_bucket");
        let mut le = String::new();
        let mut total = 0;
        for (i, n) in l.buckets.iter().enumerate() {
            total += n;
            le.clear();
            match BOUNDS.get(i) {
                Some(b) => {
                    let _ = write!(le, "{b}");
                }
                None => le.push_str("+Inf"),
            }
            let mut with = labels.to_vec();
            with.push(("le", &le));
            self.sample(&bucket, &with, total as f64);
        }
        self.sample(&format!("{name}_sum"), labels, l.sum_seconds());
        self.sample(&format!("{name}_count"), labels, total as f64);
    }

    /// A gauge left out when the system does not tell its value.
    fn opt(&mut self, name: &str, help: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.one(name, "gauge", help, v);
        }
    }
}

/// A label value as the exposition format quotes it.
pub(super) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
