//! The load tester against real servers on port 0: exact operation counts with no
//! errors against our own server (plain and over TLS, kept connections and a new
//! connection per request), and wrong replies and untrusted certificates counted as
//! errors; `--procs` (several tester processes) sums its copies' figures and fails
//! when one dies.

#![cfg(feature = "bench")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use multiclient::bench::hold::{run_hold, HoldConfig, Probe};
use multiclient::bench::run::{run_load, LoadConfig};
use multiclient::bench::workload::{TlsClient, Workload};
use multiclient::model::{Limits, Model, Server, Stats};
use multiclient::serve::tls::{CertStore, TlsFiles, TlsListen};
use multiclient::serve::{ServiceName, ServiceOptions};
use multiclient::service::http::HttpOptions;
use multiclient::service::http::Ws;
use multiclient::service::ws::WsOptions;
use multiclient::service::{ack::Ack, greet::Greet, hello::Hello, Service};

/// Our server with `service` on a free loopback port.
fn serve<S: Service>(service: S) -> (Server, SocketAddr) {
    let mut server = Server::new(Model::Async { workers: 2 }, Limits::default()).unwrap();
    let addr = server.listen("127.0.0.1:0", service).unwrap().addr;
    (server, addr)
}

fn stop(server: Server) {
    server.drain().start();
    assert_eq!(server.wait(), 0, "connections cut off at shutdown");
}

fn bounded(workload: Workload, addr: SocketAddr, conns: usize, requests: u64) -> LoadConfig {
    let mut cfg = LoadConfig::new(workload, addr);
    cfg.conns = conns;
    cfg.requests = Some(requests);
    cfg.duration = Duration::from_secs(30);
    cfg.threads = 2;
    cfg
}

#[test]
fn ack_runs_the_exact_count_without_errors() {
    let (server, addr) = serve(Ack);
    let r = run_load(&bounded(Workload::Ack, addr, 8, 2_000)).unwrap();
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert_eq!(r.ok, 2_000);
    assert_eq!(r.latency.count, 2_000);
    stop(server);
}

#[test]
fn greet_runs_the_exact_count_without_errors() {
    let (server, addr) = serve(Greet);
    let r = run_load(&bounded(Workload::Greet, addr, 5, 1_000)).unwrap();
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert_eq!(r.ok, 1_000);
    stop(server);
}

#[test]
fn hello_runs_the_exact_count_without_errors() {
    let (server, addr) = serve(Hello);
    let r = run_load(&bounded(Workload::Hello, addr, 4, 300)).unwrap();
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert_eq!(r.ok, 300);
    stop(server);
}

/// Our ws service; with `echo` it answers with the message itself instead of the
/// seed's `Server received: <message>`.
fn ws_service(echo: bool) -> Ws {
    let ws = WsOptions {
        echo,
        ..WsOptions::default()
    };
    Ws::new(HttpOptions {
        ws: Arc::new(ws),
        ..HttpOptions::default()
    })
}

#[test]
fn ws_runs_the_exact_count_without_errors() {
    let (server, addr) = serve(ws_service(false));
    let w = Workload::Ws { path: "/".into() };
    let r = run_load(&bounded(w, addr, 6, 1_200)).unwrap();
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert_eq!(r.ok, 1_200);
    assert_eq!(r.latency.count, 1_200);
    assert_eq!(r.unfinished, 0, "{r:?}");
    stop(server);
}

#[test]
fn ws_reply_without_the_seed_prefix_is_a_wrong_reply() {
    // The echo variant answers `abcd...` where the seed's server says
    // `Server received: abcd...`: a well-formed WebSocket reply with the wrong bytes.
    let (server, addr) = serve(ws_service(true));
    let w = Workload::Ws { path: "/".into() };
    let r = run_load(&bounded(w, addr, 2, 20)).unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    assert_eq!(r.errors.wrong_reply, 20, "{r:?}");
    assert_eq!(r.errors.total(), 20, "{r:?}");
    stop(server);
}

#[test]
fn open_loop_keeps_the_rate_and_the_count() {
    let (server, addr) = serve(Ack);
    let mut cfg = bounded(Workload::Ack, addr, 4, 200);
    cfg.rate = Some(1_000.0);
    let r = run_load(&cfg).unwrap();
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert_eq!(r.ok, 200);
    // 200 operations at 1000/s cannot finish in much less than 0.2 s.
    assert!(
        r.secs >= 0.19,
        "open loop ran ahead of its schedule: {} s",
        r.secs
    );
    stop(server);
}

#[test]
fn hold_establishes_every_connection_and_measures_the_server() {
    let (server, addr) = serve(Ack);
    let cfg = HoldConfig {
        addr,
        conns: 200,
        ramp: 2_000.0,
        hold: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
        probe: Probe::Ack,
        src_ips: 2,
        server_pid: Some(std::process::id()),
        threads: 2,
        progress: false,
        src_first: 1,
        gate: false,
    };
    let r = run_hold(&cfg).unwrap();
    assert_eq!(r.established, 200, "{r:?}");
    assert_eq!(
        r.refused + r.reset + r.closed + r.timeout + r.other,
        0,
        "{r:?}"
    );
    assert!(r.rss_held_kib.unwrap() > 0);
    assert!(r.kib_per_conn.is_some());
    stop(server);
}

#[test]
fn refused_connections_are_counted() {
    // A port with nothing listening: bind, learn the port, close.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = run_load(&bounded(Workload::Ack, addr, 2, 20)).unwrap();
    assert_eq!(r.ok, 0);
    assert_eq!(r.errors.refused, 20, "{r:?}");
}

/// A server that answers every read with `reply`, on a thread of its own, for at most
/// `conns` connections.
fn liar(reply: &'static [u8], conns: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(conns) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(reply).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn wrong_reply_is_an_error_not_a_success() {
    let addr = liar(b"NAK!", 50);
    let r = run_load(&bounded(Workload::Ack, addr, 2, 10)).unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    assert_eq!(r.errors.wrong_reply, 10, "{r:?}");
}

#[test]
fn wrong_http_body_is_an_error() {
    let resp: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    let addr = liar(resp, 50);
    let w = Workload::Http {
        pipeline: 1,
        path: "/".into(),
        body: b"Hello from Multi-threaded Flask Server!".to_vec(),
    };
    let r = run_load(&bounded(w, addr, 1, 5)).unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    assert_eq!(r.errors.wrong_reply, 5, "{r:?}");
}

#[test]
fn http_keep_alive_and_pipelining_count_every_response() {
    let resp: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    // One read may hold several pipelined requests: answer each request in it.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(4) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..i + 4);
                        if s.write_all(resp).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let w = Workload::Http {
        pipeline: 4,
        path: "/".into(),
        body: b"hello".to_vec(),
    };
    let r = run_load(&bounded(w, addr, 2, 400)).unwrap();
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert_eq!(r.ok, 400);
}

/// A run bounded by time only, as `bench` and `bench compare` run.
fn timed(workload: Workload, addr: SocketAddr, conns: usize, secs: f64) -> LoadConfig {
    let mut cfg = LoadConfig::new(workload, addr);
    cfg.conns = conns;
    cfg.duration = Duration::from_secs_f64(secs);
    cfg.threads = 2;
    cfg
}

#[test]
fn clients_the_single_model_never_gets_to_are_counted_unanswered() {
    let mut server = Server::new(Model::Single, Limits::default()).unwrap();
    let addr = server.listen("127.0.0.1:0", Ack).unwrap().addr;
    // The case: the timeout not shorter than the run, so no client times out;
    // the one served client holds the single thread, the four others wait throughout.
    let mut cfg = timed(Workload::Ack, addr, 5, 1.5);
    cfg.timeout = Duration::from_secs(5);
    let r = run_load(&cfg).unwrap();
    assert!(r.ok > 0, "{r:?}");
    assert_eq!(r.errors.unanswered, 4, "{r:?}");
    assert_eq!(r.errors.total(), 4, "{r:?}");
    assert!(r.summary().contains("unanswered 4"), "{}", r.summary());
    stop(server);
}

#[test]
fn a_served_clients_last_round_trip_at_the_end_is_not_an_error() {
    let (server, addr) = serve(Ack);
    let r = run_load(&timed(Workload::Ack, addr, 10, 0.5)).unwrap();
    assert!(r.ok > 0, "{r:?}");
    assert_eq!(r.errors.total(), 0, "{r:?}");
    stop(server);
}

/// A certificate for `localhost` written as PEM under the target's scratch directory:
/// the CA a TLS run trusts, and the store our `,tls` listeners present.
struct Pki {
    dir: std::path::PathBuf,
    files: TlsFiles,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let (dir, files, _) = common::self_signed_pem(&format!("bench-tls-{name}"));
        Pki { dir, files }
    }

    /// A run's TLS client trusting this certificate, checking the name `localhost`.
    fn client(&self, addr: SocketAddr, alpn: Option<&[u8]>) -> TlsClient {
        TlsClient::new(Some(&self.files.cert), Some("localhost"), addr, alpn).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Our server with `name` on a free loopback port over TLS; its counters too.
fn serve_tls(pki: &Pki, name: ServiceName) -> (Server, SocketAddr, Arc<Stats>) {
    let mut server = Server::new(Model::Async { workers: 2 }, Limits::default()).unwrap();
    let tls = TlsListen {
        store: CertStore::load(pki.files.clone()).unwrap(),
        handshake_timeout: Duration::from_secs(10),
    };
    let l = name
        .listen_on(
            &mut server,
            "127.0.0.1:0".parse().unwrap(),
            &ServiceOptions::default(),
            Some(&tls),
        )
        .unwrap();
    (server, l.addr, l.stats)
}

fn http_workload() -> Workload {
    Workload::Http {
        pipeline: 1,
        path: "/".into(),
        body: b"Hello from Multi-threaded Flask Server!".to_vec(),
    }
}

#[test]
fn every_workload_over_tls_runs_the_exact_count_on_kept_connections() {
    let pki = Pki::new("kept");
    let http = Some(b"http/1.1".as_slice());
    let runs = [
        (ServiceName::Ack, Workload::Ack, None),
        (ServiceName::Http, http_workload(), http),
        (ServiceName::Ws, Workload::Ws { path: "/".into() }, http),
    ];
    for (name, workload, alpn) in runs {
        let (server, addr, stats) = serve_tls(&pki, name);
        let mut cfg = bounded(workload.clone(), addr, 4, 600);
        cfg.tls = Some(pki.client(addr, alpn));
        let r = run_load(&cfg).unwrap();
        assert_eq!(r.errors.total(), 0, "{workload:?}: {r:?}");
        assert_eq!(r.ok, 600, "{workload:?}");
        assert_eq!(
            stats.accepted.load(Ordering::Relaxed),
            4,
            "{workload:?}: one connection (and handshake) per client"
        );
        stop(server);
    }
}

#[test]
fn new_conn_over_tls_makes_one_handshake_per_request() {
    let pki = Pki::new("new-conn");
    let runs = [
        (
            ServiceName::Http,
            http_workload(),
            Some(b"http/1.1".as_slice()),
        ),
        (ServiceName::Ack, Workload::Ack, None),
        (ServiceName::Hello, Workload::Hello, None),
    ];
    for (name, workload, alpn) in runs {
        let (server, addr, stats) = serve_tls(&pki, name);
        let mut cfg = bounded(workload.clone(), addr, 3, 90);
        cfg.tls = Some(pki.client(addr, alpn));
        cfg.new_conn = true;
        let r = run_load(&cfg).unwrap();
        assert_eq!(r.errors.total(), 0, "{workload:?}: {r:?}");
        assert_eq!(r.ok, 90, "{workload:?}");
        assert_eq!(
            stats.accepted.load(Ordering::Relaxed),
            90,
            "{workload:?}: a connection per request"
        );
        stop(server);
    }
}

#[test]
fn a_certificate_the_run_does_not_trust_is_a_tls_error() {
    let (pki, other) = (Pki::new("served"), Pki::new("trusted"));
    let (server, addr, _) = serve_tls(&pki, ServiceName::Ack);
    let mut cfg = bounded(Workload::Ack, addr, 2, 10);
    cfg.tls = Some(other.client(addr, None));
    let r = run_load(&cfg).unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    assert_eq!(r.errors.tls, 10, "{r:?}");
    assert_eq!(r.errors.total(), 10, "{r:?}");
    stop(server);
}

#[test]
fn new_conn_with_a_pipeline_is_refused() {
    let w = Workload::Http {
        pipeline: 4,
        path: "/".into(),
        body: Vec::new(),
    };
    let mut cfg = bounded(w, "127.0.0.1:1".parse().unwrap(), 1, 1);
    cfg.new_conn = true;
    let e = run_load(&cfg).unwrap_err();
    assert!(e.to_string().contains("--pipeline"), "{e}");
}

/// `multiclient bench ARGS --json` as a child with piped stdout and stderr.
fn bench_cmd(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_multiclient"));
    c.arg("bench").args(args).arg("--json");
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c
}

/// Runs `multiclient bench ARGS --json` to the end and parses its report.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = bench_cmd(args).output().unwrap();
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn hold_over_two_tester_processes_sums_their_connections_and_the_workers_memory() {
    let mut server = common::spawn_serve(&["--service", "ack=127.0.0.1:0", "--processes", "2"]);
    server.expect_log("worker 1");
    let addr = server.addr.to_string();
    let pid = server.child.id().to_string();
    let r = bench_json(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        "41",
        "--procs",
        "2",
        "--src-ips",
        "2",
        "--secs",
        "0.2",
        "--server-pid",
        &pid,
        "--threads",
        "1",
    ]);
    assert_eq!(r["established"], 41, "{r}");
    assert_eq!(r["established_at_sample"], 41, "{r}");
    assert_eq!(r["procs"], 2, "{r}");
    assert_eq!(
        r["established_by_process"],
        serde_json::json!([21, 20]),
        "{r}"
    );
    // The supervisor's RSS alone is far below that of it and its two workers.
    let supervisor = multiclient::bench::proc::sample(Some(server.child.id())).unwrap();
    let summed = r["rss_held_kib"].as_u64().unwrap();
    assert!(
        summed > supervisor.rss_kib * 2,
        "{summed} vs {supervisor:?}"
    );
    server.signal(rustix::process::Signal::TERM);
    assert!(server.wait().success());
}

#[test]
fn a_failure_in_one_tester_process_is_counted_in_the_sum() {
    // Copy 0 opens 6 connections from 127.0.0.1, copy 1 opens 5 from 127.0.0.2: only
    // copy 0 passes the limit of 5 per address.
    let mut server =
        common::spawn_serve(&["--service", "ack=127.0.0.1:0", "--max-conns-per-ip", "5"]);
    let addr = server.addr.to_string();
    let r = bench_json(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        "11",
        "--procs",
        "2",
        "--secs",
        "0.2",
        "--threads",
        "1",
    ]);
    assert_eq!(r["established"], 10, "{r}");
    assert_eq!(
        r["established_by_process"],
        serde_json::json!([5, 5]),
        "{r}"
    );
    let failed: u64 = ["refused", "reset", "closed", "timeout", "other"]
        .iter()
        .map(|k| r[k].as_u64().unwrap())
        .sum();
    assert_eq!(failed, 1, "{r}");
    server.signal(rustix::process::Signal::TERM);
    assert!(server.wait().success());
}

#[test]
fn a_tester_process_that_dies_while_holding_makes_the_run_an_error() {
    use std::io::BufRead;
    let mut server = common::spawn_serve(&["--service", "ack=127.0.0.1:0"]);
    let addr = server.addr.to_string();
    let mut bench = bench_cmd(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        "10",
        "--procs",
        "2",
        "--secs",
        "30",
        "--threads",
        "1",
    ])
    .spawn()
    .unwrap();
    let mut stderr = std::io::BufReader::new(bench.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("connections held by 2 tester processes") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "bench ended early"
        );
    }
    let copies = multiclient::bench::proc::children(bench.id());
    assert_eq!(copies.len(), 2, "{copies:?}");
    let victim = rustix::process::Pid::from_raw(copies[1] as i32).unwrap();
    rustix::process::kill_process(victim, rustix::process::Signal::KILL).unwrap();
    let started = std::time::Instant::now();
    let status = bench.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(!status.success(), "a lost copy went unreported: {rest}");
    assert!(rest.contains("tester process"), "{rest}");
    // Found while holding, not after the 30 s hold.
    assert!(started.elapsed() < Duration::from_secs(10));
    server.signal(rustix::process::Signal::TERM);
    assert!(server.wait().success());
}

#[test]
fn ack_over_two_tester_processes_merges_counts_and_latency_histograms() {
    let mut server = common::spawn_serve(&["--service", "ack=127.0.0.1:0"]);
    let addr = server.addr.to_string();
    let r = bench_json(&[
        "ack",
        "--addr",
        &addr,
        "--conns",
        "4",
        "--procs",
        "2",
        "--requests",
        "1001",
        "--threads",
        "1",
    ]);
    assert_eq!(r["ok"], 1001, "{r}");
    assert_eq!(r["latency"]["count"], 1001, "{r}");
    assert_eq!(r["errors"]["other"], 0, "{r}");
    assert!(r["latency"]["max_us"].as_u64() >= r["latency"]["p50_us"].as_u64());
    server.signal(rustix::process::Signal::TERM);
    assert!(server.wait().success());
}

#[test]
fn chat_over_two_tester_processes_delivers_every_message_to_every_member_once() {
    // Members 0, 2, 4... in copy 0 and 1, 3, 5... in copy 1, so each room's members
    // and its senders are spread over both copies: every latency a member measures
    // from a sender in the other copy uses the shared time origin.
    let mut server = common::spawn_serve(&["--service", "chat=127.0.0.1:0"]);
    let addr = server.addr.to_string();
    let pid = server.child.id().to_string();
    let r = bench_json(&[
        "chat",
        "--addr",
        &addr,
        "--members",
        "31",
        "--rooms",
        "2",
        "--senders",
        "4",
        "--rate",
        "40",
        "--secs",
        "1",
        "--procs",
        "2",
        "--src-ips",
        "2",
        "--ramp",
        "20",
        "--server-pid",
        &pid,
        "--threads",
        "1",
    ]);
    assert_eq!(r["members"], 31, "{r}");
    // Member 30 starts 1.5 s after the origin, whichever copy runs it.
    assert!(r["setup_secs"].as_f64().unwrap() >= 1.5, "{r}");
    let sent = r["sent"].as_u64().unwrap();
    assert!((30..=50).contains(&sent), "{r}");
    // Room 0 has 16 members, room 1 15; senders 0 and 2 are in room 0.
    let deliveries = r["deliveries"].as_u64().unwrap();
    assert!(deliveries >= sent * 15, "{r}");
    assert_eq!(r["expected_deliveries"], deliveries, "{r}");
    assert_eq!(r["latency"]["count"], deliveries, "{r}");
    let max = r["latency"]["max_us"].as_u64().unwrap();
    assert!(
        max > 0 && max < 5_000_000,
        "a shared origin gives sane latencies: {r}"
    );
    for k in [
        "missing",
        "duplicate_or_reordered",
        "wrong",
        "conn",
        "timeout",
    ] {
        assert_eq!(r["errors"][k], 0, "{k}: {r}");
    }
    assert!(r["server"]["cpu_us_per_op"].as_f64().unwrap() > 0.0, "{r}");
    server.signal(rustix::process::Signal::TERM);
    assert!(server.wait().success());
}

#[test]
fn procs_refuse_more_source_addresses_than_loopback_has() {
    let out = bench_cmd(&[
        "hold",
        "--addr",
        "127.0.0.1:9",
        "--procs",
        "6",
        "--src-ips",
        "43",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("do not fit"));
}
