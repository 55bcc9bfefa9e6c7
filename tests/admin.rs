//! The admin listener: its counters against what a test did (TLS handshakes and their
//! failures, refusals by reason included), readiness during a drain, a well-formed
//! Prometheus exposition, the dashboard's page and its policy,
//! and the `--admin` flag of the binary.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::TIMEOUT;
use multiclient::model::{Limits, Listening, Model, Server};
use multiclient::serve::admin::AdminListener;
use multiclient::serve::tls::TlsFiles;
use multiclient::serve::{self, AdminAddr, ServeOptions, ServiceName, ServiceOptions};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::sync::Arc;

/// A server with `services` on port 0 and its admin listener on port 0.
struct Served {
    server: Server,
    listening: Vec<Listening>,
    admin: AdminListener,
}

/// Options for `services` on port 0 and the admin listener on port 0.
fn options(model: Model, services: &[ServiceName]) -> ServeOptions {
    ServeOptions {
        services: services
            .iter()
            .map(|&s| (s, "127.0.0.1:0".parse().unwrap()))
            .collect(),
        model,
        limits: Limits::default(),
        service: ServiceOptions::default(),
        tls_services: Vec::new(),
        tls: None,
        proxy_services: Vec::new(),
        tls_handshake_timeout: std::time::Duration::from_secs(10),
        admin: AdminAddr::At("127.0.0.1:0".parse().unwrap()),
    }
}

impl Served {
    fn start(model: Model, services: &[ServiceName]) -> Served {
        Served::start_with(model, services, ServiceOptions::default())
    }

    fn start_with(model: Model, services: &[ServiceName], service: ServiceOptions) -> Served {
        Served::start_opts(ServeOptions {
            service,
            ..options(model, services)
        })
    }

    fn start_opts(opts: ServeOptions) -> Served {
        let (server, listening) = serve::start(&opts).expect("services start");
        let admin = serve::start_admin(&opts, &server, &listening)
            .expect("admin starts")
            .expect("admin is on");
        Served {
            server,
            listening,
            admin,
        }
    }

    fn addr_of(&self, service: &str) -> SocketAddr {
        self.listening
            .iter()
            .find(|l| l.service == service)
            .expect("service listening")
            .addr
    }

    fn get(&self, path: &str) -> Reply {
        get(self.admin.addr, path)
    }

    fn stats(&self) -> serde_json::Value {
        let r = self.get("/stats");
        assert_eq!(r.status, 200);
        serde_json::from_str(&r.body).expect("/stats is JSON")
    }

    /// Polls `/stats` until `done` holds, failing after the safety-net timeout.
    fn stats_until(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let s = self.stats();
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: last /stats {s}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// An HTTP answer.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` with `Connection: close`, read to the end.
fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect to admin");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("a whole response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn service<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("{name} in {stats}"))
}

#[test]
fn ack_round_trips_raise_the_counters_by_what_the_clients_did() {
    const CONNS: usize = 3;
    const ROUNDS: usize = 7;
    let s = Served::start(Model::Async { workers: 2 }, &[ServiceName::Ack]);
    let ack = s.addr_of("ack");
    let mut clients: Vec<TcpStream> = (0..CONNS).map(|_| common::connect(ack)).collect();
    for c in &mut clients {
        for _ in 0..ROUNDS {
            common::round_trip(c, b"hello", b"ACK!");
        }
    }
    let open = s.stats_until("3 open", |st| service(st, "ack")["open"] == CONNS);
    assert_eq!(service(&open, "ack")["accepted"], CONNS);
    assert_eq!(open["memory"]["open_connections"], CONNS);
    drop(clients);

    let st = s.stats_until("3 closed", |st| service(st, "ack")["closed"] == CONNS);
    let a = service(&st, "ack");
    let n = CONNS * ROUNDS;
    assert_eq!(a["open"], 0);
    assert_eq!(a["accepted"], CONNS);
    assert_eq!(a["refused"], 0);
    assert_eq!(a["closed_by"]["eof"], CONNS);
    assert_eq!(a["writes"], n, "one write per ACK");
    assert_eq!(a["bytes_in"], n * b"hello".len());
    assert_eq!(a["bytes_out"], n * b"ACK!".len());

    // The exposition says the same.
    let m = s.get("/metrics").body;
    for line in [
        format!("multiclient_connections_accepted_total{{service=\"ack\"}} {CONNS}"),
        format!("multiclient_writes_total{{service=\"ack\"}} {n}"),
        format!("multiclient_connections_closed_total{{service=\"ack\",reason=\"eof\"}} {CONNS}"),
        "multiclient_connections_open{service=\"ack\"} 0".to_string(),
    ] {
        assert!(m.lines().any(|l| l == line), "{line} not in\n{m}");
    }
}

#[test]
fn readyz_turns_503_once_the_drain_starts_and_healthz_stays_200() {
    let s = Served::start(Model::Threads, &[ServiceName::Ack]);
    assert_eq!(s.get("/healthz").status, 200);
    let ready = s.get("/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(s.stats()["ready"], true);

    s.server.drain().start();
    let ready = s.get("/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (503, "draining\n"));
    assert_eq!(s.get("/healthz").status, 200);
    let st = s.stats();
    assert_eq!(
        (&st["draining"], &st["ready"]),
        (&true.into(), &false.into())
    );
    assert!(s
        .get("/metrics")
        .body
        .lines()
        .any(|l| l == "multiclient_ready 0"));
}

#[test]
fn readyz_is_503_while_the_chat_cannot_reach_its_redis() {
    // Nothing listens on a port just freed: the bridge keeps trying, never up.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut service = ServiceOptions::default();
    service.chat.redis = Some(format!("redis://127.0.0.1:{port}"));
    let s = Served::start_with(Model::Threads, &[ServiceName::Chat], service);
    let ready = s.get("/readyz");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "redis unavailable\n")
    );
    assert_eq!(s.get("/healthz").status, 200);
    let st = s.stats();
    assert_eq!(st["chat"]["redis"]["up"], false, "{st}");
    assert_eq!(st["draining"], false);
    let m = s.get("/metrics").body;
    assert!(m.lines().any(|l| l == "multiclient_redis_up 0"), "{m}");
    assert!(m.lines().any(|l| l == "multiclient_ready 0"), "{m}");
}

#[test]
#[ignore = "needs redis-server: .ci/admin.sh installs it and runs this with --ignored"]
fn readyz_follows_redis_going_away_and_coming_back() {
    let mut redis = common::redis::RedisServer::start();
    let mut service = ServiceOptions::default();
    service.chat.redis = Some(redis.url());
    let s = Served::start_with(Model::Async { workers: 2 }, &[ServiceName::Chat], service);
    let up = |st: &serde_json::Value| st["chat"]["redis"]["up"] == true;
    let st = s.stats_until("redis up", up);
    // The first connection is counted, however soon it came (it once beat the hub's
    // making, and went uncounted).
    assert_eq!(st["chat"]["redis"]["connects"], 1, "{st}");
    assert_eq!(s.get("/readyz").status, 200);

    redis.kill();
    let st = s.stats_until("redis down", |st| !up(st));
    assert_eq!(st["ready"], false);
    assert_eq!(s.get("/readyz").status, 503);

    redis.start_again();
    let st = s.stats_until("redis up again", up);
    assert!(
        st["chat"]["redis"]["connects"].as_u64().unwrap() >= 2,
        "{st}"
    );
    assert!(st["chat"]["redis"]["losses"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(s.get("/readyz").status, 200);
}

#[test]
#[ignore = "needs redis-server: .ci/admin.sh installs it and runs this with --ignored"]
fn the_redis_round_trip_and_pipeline_depth_are_reported_once_pipelines_go_out() {
    let redis = common::redis::RedisServer::start();
    let mut service = ServiceOptions::default();
    service.chat.redis = Some(redis.url());
    // An expiry scan (a pipeline, even with no member) every 100 ms.
    service.chat.presence_ttl = Duration::from_millis(600);
    let s = Served::start_with(Model::Async { workers: 2 }, &[ServiceName::Chat], service);
    let answered = |st: &serde_json::Value| {
        st["chat"]["redis"]["round_trips"]
            .as_u64()
            .is_some_and(|n| n >= 2)
    };
    let st = s.stats_until("redis round trips", answered);
    let r = &st["chat"]["redis"];
    let (sum, last) = (
        r["round_trip_seconds"].as_f64().unwrap(),
        r["round_trip_last_seconds"].as_f64().unwrap(),
    );
    // A loopback round trip: more than nothing, less than the command timeout.
    assert!(
        sum > 0.0 && sum < 2.0 * r["round_trips"].as_f64().unwrap(),
        "{st}"
    );
    assert!(last > 0.0 && last < 2.0, "{st}");
    assert!(r["pipeline_depth"].as_u64().is_some(), "{st}");
    let m = parse_exposition(&s.get("/metrics").body);
    assert!(m["multiclient_redis_round_trips_total"] >= 2.0, "{m:?}");
    assert!(
        m["multiclient_redis_round_trip_seconds_total"] > 0.0,
        "{m:?}"
    );
    assert!(m.contains_key("multiclient_redis_round_trip_last_seconds"));
    assert!(m.contains_key("multiclient_redis_pipeline_depth"));
}

/// Checks the text exposition format: every sample under a `# TYPE` of its family,
/// counters named `_total`, the `multiclient_` prefix, bounded label names, no series
/// twice, numeric values; a histogram's `_bucket` series cumulative in `le` and ending
/// at `+Inf` with its `_count`. Returns the samples by series.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let allowed: HashSet<&str> = ["service", "reason", "model", "version", "kind"].into();
    // The last bucket seen of each histogram series: (labels but `le`, le, count).
    let mut last_bucket: Option<(String, String, f64)> = None;
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "{line}: a type we do not use"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}: a counter ends in _total");
            }
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "{name} typed twice"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}: value"));
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("multiclient_"), "{line}: prefix");
        let histogram = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|family| types.get(*family).is_some_and(|t| t == "histogram"));
        assert!(
            types.contains_key(name) || histogram.is_some(),
            "{line}: no TYPE before it"
        );
        let mut le = None;
        let mut others = Vec::new();
        if let Some(labels) = series.strip_prefix(name) {
            let labels = labels.trim_start_matches('{').trim_end_matches('}');
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').expect("label=value");
                assert!(v.starts_with('"') && v.ends_with('"'), "{line}: quoted");
                if k == "le" && name.ends_with("_bucket") {
                    le = Some(v.trim_matches('"').to_string());
                    continue;
                }
                assert!(allowed.contains(k), "{line}: unbounded label {k}");
                others.push(pair);
            }
        }
        if let Some(family) = histogram {
            let key = format!("{family}{{{}}}", others.join(","));
            if name.ends_with("_bucket") {
                let le = le.unwrap_or_else(|| panic!("{line}: a bucket has an le"));
                if let Some((k, prev_le, prev)) = &last_bucket {
                    if *k == key {
                        assert!(prev_le != "+Inf", "{line}: a bucket after +Inf");
                        assert!(value >= *prev, "{line}: buckets are cumulative");
                        let (a, b): (f64, f64) = (
                            prev_le.parse().unwrap(),
                            le.parse().unwrap_or(f64::INFINITY),
                        );
                        assert!(b > a, "{line}: le rises");
                    }
                }
                last_bucket = Some((key, le, value));
            } else if name.ends_with("_count") {
                let (k, le, inf) = last_bucket
                    .take()
                    .unwrap_or_else(|| panic!("{line}: no buckets"));
                assert!(k == key && le == "+Inf", "{line}: buckets end at +Inf");
                assert_eq!(inf, value, "{line}: +Inf is the count");
            }
        }
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

#[test]
fn metrics_are_a_well_formed_exposition_with_every_family() {
    let s = Served::start(
        Model::Async { workers: 2 },
        &[ServiceName::Ack, ServiceName::Http, ServiceName::Chat],
    );
    common::round_trip(&mut common::connect(s.addr_of("ack")), b"hi", b"ACK!");
    s.stats_until("the ACK timed", |st| {
        service(st, "ack")["latency"]["message"]["count"] == 1
    });
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("Content-Type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let samples = parse_exposition(&r.body);
    for series in [
        "multiclient_connections_open{service=\"http\"}",
        "multiclient_connections_refused_total{service=\"chat\",reason=\"busy\"}",
        "multiclient_connections_closed_total{service=\"ack\",reason=\"idle\"}",
        "multiclient_slow_consumers_total{service=\"chat\"}",
        "multiclient_resident_memory_bytes",
        "multiclient_buffered_limit_bytes",
        "multiclient_chat_rooms",
        "multiclient_chat_deliveries_total",
        "multiclient_chat_helped_deliveries_total",
        "multiclient_ready",
        "multiclient_answer_duration_seconds_count{service=\"ack\",model=\"async\",kind=\"message\"}",
        "multiclient_chat_fanout_duration_seconds_count{model=\"async\"}",
    ] {
        assert!(
            samples.contains_key(series),
            "{series} missing:\n{}",
            r.body
        );
    }
    assert_eq!(
        samples["multiclient_buffered_limit_bytes"],
        Limits::default().max_buffered as f64
    );
    assert!(samples["multiclient_resident_memory_bytes"] > 0.0);
    // No Redis: no Redis figures.
    assert!(!r.body.contains("multiclient_redis_up"));
}

#[test]
fn the_exposition_check_rejects_what_prometheus_would() {
    let good = "# TYPE multiclient_x_total counter\nmulticlient_x_total{service=\"a\"} 1\n";
    assert_eq!(parse_exposition(good).len(), 1);
    let h = |b1: u32, inf: u32, count: u32| {
        format!(
            "# TYPE multiclient_h histogram\nmulticlient_h_bucket{{kind=\"a\",le=\"0.1\"}} {b1}\n\
             multiclient_h_bucket{{kind=\"a\",le=\"+Inf\"}} {inf}\n\
             multiclient_h_sum{{kind=\"a\"}} 0.5\nmulticlient_h_count{{kind=\"a\"}} {count}\n"
        )
    };
    assert_eq!(parse_exposition(&h(2, 3, 3)).len(), 4);
    for bad in [h(4, 3, 3), h(2, 3, 4)] {
        let caught = std::panic::catch_unwind(|| parse_exposition(&bad)).is_err();
        assert!(caught, "accepted {bad:?}");
    }
    for bad in [
        "multiclient_x_total 1\n",
        "# TYPE multiclient_x counter\nmulticlient_x 1\n",
        "# TYPE multiclient_x gauge\nmulticlient_x{room=\"lobby\"} 1\n",
        "# TYPE multiclient_x gauge\nmulticlient_x 1\nmulticlient_x 2\n",
        "# TYPE multiclient_x gauge\nmulticlient_x one\n",
    ] {
        let caught = std::panic::catch_unwind(|| parse_exposition(bad)).is_err();
        assert!(caught, "accepted {bad:?}");
    }
}

#[test]
fn the_dashboard_is_served_whole_under_a_strict_policy() {
    let s = Served::start(Model::Threads, &[ServiceName::Ack]);
    let page = s.get("/dashboard");
    assert_eq!(page.status, 200);
    assert!(page
        .header("Content-Type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("Content-Security-Policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    for (path, kind) in [
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        assert!(page.body.contains(path), "the page loads {path}");
        let r = s.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("Content-Type").unwrap().starts_with(kind),
            "{path}"
        );
        assert!(r.body.len() > 100, "{path}");
    }
    assert!(s.get("/dashboard.js").body.contains("/stats"));
    assert_eq!(s.get("/nowhere").status, 404);
}

#[test]
fn the_binary_reports_its_admin_address_and_refuses_a_bad_one() {
    let mut c = common::spawn_serve(&["--service", "ack=127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    let admin: SocketAddr = loop {
        let line = c.log.recv_timeout(TIMEOUT).expect("an Admin line");
        if let Some(rest) = line.split("Admin on http://").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    let mut ack = common::connect(c.addr);
    common::round_trip(&mut ack, b"hi", b"ACK!");
    assert_eq!(get(admin, "/healthz").status, 200);
    drop(ack);
    c.signal(rustix::process::Signal::TERM);
    assert!(c.wait().success());

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_multiclient"))
        .args([
            "serve",
            "--service",
            "ack=127.0.0.1:0",
            "--admin",
            "nowhere",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin") && err.contains("off"), "{err}");
}

/// The `_count` of one series of a histogram in a scrape (0 when the series is not
/// there yet: a histogram with no observation is left out).
fn histogram_count(metrics: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}_count{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.parse().expect("a count"))
}

/// Reads `\n`-terminated lines until one starts with `prefix`.
fn line_starting(r: &mut impl std::io::BufRead, prefix: &str) -> String {
    loop {
        let mut l = String::new();
        assert!(r.read_line(&mut l).expect("a line in time") > 0, "closed");
        if l.starts_with(prefix) {
            return l;
        }
    }
}

#[test]
fn every_answer_lands_in_its_histogram_and_bytes_count_while_connections_stay_open() {
    const ACKS: u64 = 9;
    const REQUESTS: u64 = 4;
    for model in [Model::Threads, Model::Async { workers: 2 }] {
        let s = Served::start(
            model,
            &[ServiceName::Ack, ServiceName::Http, ServiceName::Chat],
        );
        let m = model.name();

        // ack: every round trip is one observation; bytes count before the close.
        let mut ack = common::connect(s.addr_of("ack"));
        for _ in 0..ACKS {
            common::round_trip(&mut ack, b"hello", b"ACK!");
        }
        // http: keep-alive requests on one connection, each one observation.
        let http = common::connect(s.addr_of("http"));
        let mut hr = std::io::BufReader::new(&http);
        for _ in 0..REQUESTS {
            (&http)
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let len = line_starting(&mut hr, "Content-Length:");
            let len: usize = len["Content-Length:".len()..].trim().parse().unwrap();
            line_starting(&mut hr, "\r\n");
            let mut body = vec![0; len];
            hr.read_exact(&mut body).unwrap();
            assert!(body.starts_with(b"Hello from"));
        }
        // chat: NICK, JOIN and SAY answered (the SAY by its own MSG coming back).
        let chat = common::connect(s.addr_of("chat"));
        let mut r = std::io::BufReader::new(chat.try_clone().unwrap());
        line_starting(&mut r, "WELCOME ");
        (&chat)
            .write_all(b"NICK metered\nJOIN r\nSAY r hi\n")
            .unwrap();
        line_starting(&mut r, "MSG r ");

        // A reply is timed once its send returns, which may be just after the client
        // read it: wait for the counts rather than read them once.
        let st = s.stats_until(&format!("{m}: every answer counted"), |st| {
            service(st, "chat")["latency"]["command"]["count"] == 3
                && service(st, "ack")["latency"]["message"]["count"] == ACKS
                && service(st, "http")["latency"]["request"]["count"] == REQUESTS
        });
        let a = service(&st, "ack");
        assert_eq!(a["open"], 1, "{m}: the ack client is still connected");
        assert_eq!(a["latency"]["message"]["count"], ACKS, "{m}");
        assert!(a["bytes_in"].as_u64().unwrap() >= ACKS * 5, "{m}: {a}");
        assert!(a["bytes_out"].as_u64().unwrap() >= ACKS * 4, "{m}: {a}");
        let h = service(&st, "http");
        assert_eq!(h["latency"]["request"]["count"], REQUESTS, "{m}: {h}");
        let buckets: u64 = a["latency"]["message"]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap())
            .sum();
        assert_eq!(buckets, ACKS, "{m}: the buckets add up to the count");
        assert!(a["latency"]["message"]["sum_seconds"].as_f64().unwrap() > 0.0);
        assert!(
            st["chat"]["fanout"]["count"].as_u64().unwrap() >= 1,
            "{m}: the SAY's fan-out timed: {}",
            st["chat"]
        );

        // The exposition says the same, as histograms.
        let text = s.get("/metrics").body;
        let name = "multiclient_answer_duration_seconds";
        let l = |svc: &str, kind: &str| format!("service=\"{svc}\",model=\"{m}\",kind=\"{kind}\"");
        assert_eq!(histogram_count(&text, name, &l("ack", "message")), ACKS);
        assert_eq!(
            histogram_count(&text, name, &l("http", "request")),
            REQUESTS
        );
        assert_eq!(histogram_count(&text, name, &l("chat", "command")), 3);
        let inf = format!(
            "{name}_bucket{{{},le=\"+Inf\"}} {ACKS}",
            l("ack", "message")
        );
        assert!(text.lines().any(|x| x == inf), "{inf} not in\n{text}");

        // One more round trip moves the count by exactly one.
        common::round_trip(&mut ack, b"again", b"ACK!");
        s.stats_until(&format!("{m}: one more"), |st| {
            service(st, "ack")["latency"]["message"]["count"] == ACKS + 1
        });
        let text = s.get("/metrics").body;
        assert_eq!(histogram_count(&text, name, &l("ack", "message")), ACKS + 1);
        drop((ack, http, chat, r));
    }
}

/// A chat that wants tokens, and a connection to it that presented two bad ones (its
/// reader, its writer), once `/stats` counts both.
fn chat_after_two_bad_tokens() -> (
    Served,
    std::net::TcpStream,
    std::io::BufReader<std::net::TcpStream>,
    serde_json::Value,
) {
    let mut service = ServiceOptions::default();
    service.chat.auth =
        multiclient::service::chat::auth::AuthHandle::from_options(Some("the-secret"), None)
            .unwrap();
    let s = Served::start_with(Model::Threads, &[ServiceName::Chat], service);
    let chat = common::connect(s.addr_of("chat"));
    let mut r = std::io::BufReader::new(chat.try_clone().unwrap());
    line_starting(&mut r, "WELCOME ");
    for _ in 0..2 {
        (&chat).write_all(b"AUTH not-a-token\n").unwrap();
        line_starting(&mut r, "ERR bad-token ");
    }
    let st = s.stats_until("two refusals", |st| st["chat"]["auth_failures"] == 2);
    (s, chat, r, st)
}

#[test]
fn refused_chat_tokens_are_counted_as_auth_failures() {
    let (s, _chat, _r, st) = chat_after_two_bad_tokens();
    assert_eq!(st["chat"]["auth_failures"], 2);
    let m = s.get("/metrics").body;
    assert!(
        m.lines()
            .any(|l| l == "multiclient_chat_auth_failures_total 2"),
        "{m}"
    );
}

#[test]
fn a_chat_connection_closed_after_three_bad_tokens_is_refused_for_auth() {
    let (s, chat, mut r, st) = chat_after_two_bad_tokens();
    assert_eq!(
        service(&st, "chat")["refused_auth"],
        0,
        "two are not yet three"
    );
    (&chat).write_all(b"AUTH not-a-token\n").unwrap();
    line_starting(&mut r, "ERR bad-token ");
    line_starting(&mut r, "ERR auth-failed ");
    let st = s.stats_until("the third closes", |st| {
        service(st, "chat")["refused_auth"] == 1
    });
    assert_eq!(st["chat"]["auth_failures"], 3);
    let m = s.get("/metrics").body;
    let samples = parse_exposition(&m);
    let refused = |reason: &str| {
        samples[&format!(
            "multiclient_connections_refused_total{{service=\"chat\",reason=\"{reason}\"}}"
        )]
    };
    assert_eq!(refused("auth"), 1.0, "{m}");
    assert_eq!(refused("tls"), 0.0, "no TLS listener, no TLS refusal");
    assert_eq!(refused("busy"), 0.0);
}

/// A self-signed certificate for localhost written as PEM files under the tests'
/// directory; returns the files and the certificate a client trusts.
fn pki(name: &str) -> (TlsFiles, CertificateDer<'static>) {
    let (_, files, cert) = common::self_signed_pem(&format!("admin-tls-{name}"));
    (files, cert)
}

/// A client configuration trusting `cert`, with rustls's session cache (so a second
/// connection resumes).
fn tls_client(cert: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The handshakes of one service in `/stats`, by `version/kind`, and its failures by
/// reason.
fn tls_figures(st: &serde_json::Value, name: &str) -> (HashMap<String, u64>, HashMap<String, u64>) {
    let tls = &service(st, name)["tls"];
    let mut shakes = HashMap::new();
    for (version, kinds) in tls["handshakes"].as_object().expect("handshakes") {
        for (kind, n) in kinds.as_object().unwrap() {
            shakes.insert(format!("{version}/{kind}"), n.as_u64().unwrap());
        }
    }
    let failures = tls["failures"]
        .as_object()
        .expect("failures")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    (shakes, failures)
}

/// `promtool check metrics` on `text`, when promtool is installed (`.ci/admin.sh`
/// installs it): its verdict and what it said.
fn promtool(text: &str) -> Option<(bool, String)> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), said))
}

#[test]
fn tls_handshakes_and_their_failures_are_counted_by_version_kind_and_reason() {
    let (files, cert) = pki("handshakes");
    let s = Served::start_opts(ServeOptions {
        tls_services: vec![(ServiceName::Ack, "127.0.0.1:0".parse().unwrap())],
        tls: Some(files),
        tls_handshake_timeout: Duration::from_millis(300),
        ..options(Model::Threads, &[ServiceName::Ack])
    });
    let addr = s.addr_of("ack+tls");
    let config = tls_client(&cert);
    const N: u64 = 3;
    for _ in 0..N {
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(config.clone(), name).unwrap();
        let mut t = StreamOwned::new(conn, common::connect(addr));
        t.write_all(b"hi").unwrap();
        let mut ack = [0u8; 4];
        t.read_exact(&mut ack).unwrap();
        assert_eq!(&ack, b"ACK!");
    }
    let st = s.stats_until("N handshakes", |st| {
        tls_figures(st, "ack+tls").0.values().sum::<u64>() == N
    });
    let (shakes, failures) = tls_figures(&st, "ack+tls");
    assert_eq!(shakes["tls1.3/full"], 1, "{shakes:?}");
    assert_eq!(
        shakes["tls1.3/resumed"],
        N - 1,
        "the client resumes: {shakes:?}"
    );
    assert_eq!(failures.values().sum::<u64>(), 0, "{failures:?}");
    assert!(
        service(&st, "ack")["tls"].is_null(),
        "the plain listener has none"
    );

    // Plaintext on the TLS port: an alert (record type 21) and a close.
    let mut plain = common::connect(addr);
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert_eq!(got.first(), Some(&0x15), "a TLS alert: {got:?}");
    s.stats_until("not_tls", |st| tls_figures(st, "ack+tls").1["not_tls"] == 1);
    // Silent past --header-timeout: dropped.
    let mut silent = common::connect(addr);
    let _ = silent.read_to_end(&mut got);
    s.stats_until("timeout", |st| tls_figures(st, "ack+tls").1["timeout"] == 1);
    // Connected and gone before a ClientHello.
    drop(common::connect(addr));
    let st = s.stats_until("eof", |st| tls_figures(st, "ack+tls").1["eof"] == 1);
    let (_, failures) = tls_figures(&st, "ack+tls");
    assert_eq!(failures["protocol"], 0, "{failures:?}");
    assert_eq!(service(&st, "ack+tls")["refused_tls"], 3);
    assert_eq!(service(&st, "ack")["refused_tls"], 0);

    let m = s.get("/metrics").body;
    let samples = parse_exposition(&m);
    for (series, want) in [
        ("multiclient_tls_handshakes_total{service=\"ack+tls\",version=\"tls1.3\",kind=\"full\"}", 1),
        ("multiclient_tls_handshakes_total{service=\"ack+tls\",version=\"tls1.3\",kind=\"resumed\"}", N - 1),
        ("multiclient_tls_handshakes_total{service=\"ack+tls\",version=\"tls1.2\",kind=\"full\"}", 0),
        ("multiclient_tls_handshake_failures_total{service=\"ack+tls\",reason=\"not_tls\"}", 1),
        ("multiclient_tls_handshake_failures_total{service=\"ack+tls\",reason=\"timeout\"}", 1),
        ("multiclient_tls_handshake_failures_total{service=\"ack+tls\",reason=\"eof\"}", 1),
        ("multiclient_tls_handshake_failures_total{service=\"ack+tls\",reason=\"protocol\"}", 0),
        ("multiclient_connections_refused_total{service=\"ack+tls\",reason=\"tls\"}", 3),
        ("multiclient_connections_refused_total{service=\"ack\",reason=\"tls\"}", 0),
    ] {
        assert_eq!(samples.get(series), Some(&(want as f64)), "{series}:\n{m}");
    }
    assert!(
        !m.contains("multiclient_tls_handshakes_total{service=\"ack\""),
        "a plain listener has no TLS series"
    );
    match promtool(&m) {
        Some((ok, said)) => assert!(ok, "promtool check metrics: {said}\n{m}"),
        None => eprintln!(
            "promtool is not installed: the exposition is checked by parse_exposition only"
        ),
    }
}
