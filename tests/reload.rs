//! SIGHUP reloads the config of the real binary, nobody dropped: a lowered
//! `--max-conns` refuses the next client while the held ones stay and are answered; a
//! broken file keeps the running config; a listener added accepts, one removed stops
//! accepting while its open connection is still answered (and its port can be taken by
//! a listener added in the same reload); the log level changes; the
//! notification key changes. Under threads, pool and async; readiness from log lines.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use common::{connect, read_n, round_trip, spawn_serve, Child_};
use multiclient::service::{ack, greet};
use rustix::process::Signal;

const MODELS: &[&str] = &["threads", "pool", "async"];

/// A config file unique to this test and model.
struct Config(PathBuf);

impl Config {
    fn new(name: &str, model: &str, text: &str) -> Config {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("reload-{name}-{model}-{}.toml", std::process::id()));
        let c = Config(path);
        c.write(text);
        c
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }

    fn serve(&self, model: &str) -> Child_ {
        spawn_serve(&[
            "--config",
            self.0.to_str().unwrap(),
            "--model",
            model,
            "--admin",
            "off",
        ])
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sends SIGHUP and waits for the reload's line that contains `needle`, returning
/// every line logged until then.
fn reload(srv: &Child_, needle: &str) -> Vec<String> {
    srv.signal(Signal::HUP);
    let mut lines = Vec::new();
    loop {
        let line = srv
            .log
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no log line with {needle:?}; saw {lines:#?}"));
        let done = line.contains(needle);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// The address a `... on ADDR` line names last.
fn addr_in(line: &str) -> SocketAddr {
    line.rsplit(" on ").next().unwrap().trim().parse().unwrap()
}

/// Whether a new client of `addr` is told the server is busy (and closed).
fn refused_busy(addr: SocketAddr) -> bool {
    let mut s = connect(addr);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out == b"ERR server busy\n"
}

/// One ACK round trip on each held connection.
fn each_answered(held: &mut [TcpStream], msg: &[u8]) {
    for s in held {
        round_trip(s, msg, ack::REPLY);
    }
}

#[test]
fn max_conns_lowered_by_sighup_refuses_the_next_client_while_held_clients_stay_answered() {
    for &model in MODELS {
        let cfg = Config::new(
            "max-conns",
            model,
            "service = [\"ack=127.0.0.1:0\"]\nmax-conns = 3\n",
        );
        let srv = cfg.serve(model);
        let mut held: Vec<TcpStream> = (0..2).map(|_| connect(srv.addr)).collect();
        each_answered(&mut held, b"before");

        cfg.write("service = [\"ack=127.0.0.1:0\"]\nmax-conns = 1\n");
        reload(&srv, "max-conns 3 -> 1");
        assert!(
            refused_busy(srv.addr),
            "{model}: the third client is over the new limit"
        );
        each_answered(&mut held, b"after");

        // A broken file: logged, and the running config (max-conns 1) kept.
        cfg.write("service = [\"ack=127.0.0.1:0\"]\nmax-conns = \"many\"\n");
        let lines = reload(&srv, "config not reloaded");
        assert!(lines.last().unwrap().contains("max-conns"), "{lines:?}");
        assert!(refused_busy(srv.addr), "{model}: the old limit holds");
        each_answered(&mut held, b"still");

        // Raised again: the next client is served.
        drop(held.pop());
        cfg.write("service = [\"ack=127.0.0.1:0\"]\nmax-conns = 5\n");
        reload(&srv, "max-conns 1 -> 5");
        let mut fresh: Vec<TcpStream> = (0..3).map(|_| connect(srv.addr)).collect();
        for s in fresh.iter_mut().chain(&mut held) {
            round_trip(s, b"raised", ack::REPLY);
        }
    }
}

#[test]
fn a_listener_added_by_sighup_accepts_and_one_removed_stops_while_its_connection_is_answered() {
    for &model in MODELS {
        let cfg = Config::new("listeners", model, "service = [\"ack=127.0.0.1:0\"]\n");
        let srv = cfg.serve(model);
        let mut open = connect(srv.addr);
        round_trip(&mut open, b"before", ack::REPLY);

        cfg.write("service = [\"greet=127.0.0.1:0\"]\n");
        let lines = reload(&srv, "config reloaded");
        let added = lines
            .iter()
            .find(|l| l.contains("added the listener greet"))
            .unwrap_or_else(|| panic!("{model}: {lines:#?}"));
        assert!(
            lines
                .iter()
                .any(|l| l.contains("Stopped listening on") && l.contains(&srv.addr.to_string())),
            "{model}: {lines:#?}"
        );
        let mut g = connect(addr_in(added));
        assert_eq!(read_n(&mut g, greet::GREETING.len()), greet::GREETING);

        let e = TcpStream::connect(srv.addr).map(|_| ()).unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{model}: the removed listener's port is closed"
        );
        round_trip(&mut open, b"after", ack::REPLY);
        drop(open);

        // The service comes back on a listener of its own.
        cfg.write("service = [\"greet=127.0.0.1:0\", \"ack=127.0.0.1:0\"]\n");
        let lines = reload(&srv, "config reloaded");
        let added = lines
            .iter()
            .find(|l| l.contains("added the listener ack"))
            .unwrap_or_else(|| panic!("{model}: {lines:#?}"));
        let mut again = connect(addr_in(added));
        round_trip(&mut again, b"back", ack::REPLY);
    }
}

#[test]
fn sighup_changes_the_log_level_and_a_setting_that_needs_a_restart_is_kept() {
    for &model in MODELS {
        let cfg = Config::new("log-level", model, "service = [\"ack=127.0.0.1:0\"]\n");
        let srv = cfg.serve(model);
        let mut s = connect(srv.addr);
        round_trip(&mut s, b"quiet-one", ack::REPLY);

        cfg.write("service = [\"ack=127.0.0.1:0\"]\nverbose = 1\nworkers = 3\n");
        let lines = reload(&srv, "config reloaded");
        assert!(
            lines.iter().all(|l| !l.contains("quiet-one")),
            "{model}: info level hides what a client said: {lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("workers none -> 3 needs a restart")),
            "{model}: {lines:#?}"
        );
        assert!(
            lines.last().unwrap().contains("verbose 0 -> 1"),
            "{lines:?}"
        );
        s.write_all(b"loud-one").unwrap();
        srv.expect_log("Received: loud-one");
    }
}

#[test]
fn sighup_swaps_the_notification_key() {
    let model = "threads";
    let cfg = Config::new(
        "api-key",
        model,
        "service = [\"http=127.0.0.1:0\"]\napi-key = \"old-key\"\n",
    );
    let srv = cfg.serve(model);
    // A key that passes gets to the room (404: nobody is in it); a wrong one is 403.
    let post = |key: &str| -> String {
        let mut s = connect(srv.addr);
        write!(
            s,
            "POST /rooms/lobby/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\nhi"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].to_string();
        if status == "404" {
            assert!(out.contains("no such room"), "{out}");
        }
        status
    };
    assert_eq!(post("old-key"), "404");
    assert_eq!(post("new-key"), "403");
    cfg.write("service = [\"http=127.0.0.1:0\"]\napi-key = \"new-key\"\n");
    let lines = reload(&srv, "config reloaded");
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("new-key") && !l.contains("old-key")),
        "a key is never logged: {lines:#?}"
    );
    assert!(lines.last().unwrap().contains("api-key changed"));
    assert_eq!(post("old-key"), "403");
    assert_eq!(post("new-key"), "404");
}

#[test]
fn a_port_freed_by_a_removed_listener_is_taken_by_one_added_in_the_same_reload() {
    for &model in MODELS {
        let cfg = Config::new("same-port", model, "service = [\"ack=127.0.0.1:0\"]\n");
        let srv = cfg.serve(model);
        let mut open = connect(srv.addr);
        round_trip(&mut open, b"before", ack::REPLY);

        cfg.write(&format!("service = [\"greet={}\"]\n", srv.addr));
        let lines = reload(&srv, "config reloaded");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("added the listener greet")
                    && l.ends_with(&srv.addr.to_string())),
            "{model}: {lines:#?}"
        );
        let mut g = connect(srv.addr);
        assert_eq!(read_n(&mut g, greet::GREETING.len()), greet::GREETING);
        round_trip(&mut open, b"after", ack::REPLY);
    }
}

/// Reads lines from `r` until one contains `needle` (the read timeout of
/// `common::connect` fails the test if it never comes).
fn until(r: &mut impl std::io::BufRead, needle: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "closed before {needle:?}"
        );
        if line.contains(needle) {
            return line;
        }
    }
}

#[test]
fn a_chat_listener_added_by_sighup_joins_the_running_chat() {
    for &model in MODELS {
        let cfg = Config::new("chat", model, "service = [\"chat=127.0.0.1:0\"]\n");
        let srv = cfg.serve(model);
        let mut ann = connect(srv.addr);
        let mut ann_in = std::io::BufReader::new(ann.try_clone().unwrap());
        ann.write_all(b"NICK ann\nJOIN lobby\n").unwrap();
        until(&mut ann_in, "OK JOIN lobby");

        cfg.write("service = [\"chat=127.0.0.1:0\", \"chat=127.0.0.2:0\"]\n");
        let lines = reload(&srv, "config reloaded");
        let added = lines
            .iter()
            .find(|l| l.contains("added the listener chat=127.0.0.2:0"))
            .unwrap_or_else(|| panic!("{model}: {lines:#?}"));
        let mut bob = connect(addr_in(added));
        let mut bob_in = std::io::BufReader::new(bob.try_clone().unwrap());
        bob.write_all(b"NICK bob\nJOIN lobby\nSAY lobby hi from the new listener\n")
            .unwrap();
        until(&mut bob_in, "OK JOIN lobby");
        until(&mut ann_in, "JOIN lobby bob");
        until(&mut ann_in, "bob hi from the new listener");
    }
}

#[test]
fn max_body_lowered_by_sighup_refuses_the_next_request_with_413() {
    for &model in MODELS {
        let cfg = Config::new("max-body", model, "service = [\"http=127.0.0.1:0\"]\n");
        let srv = cfg.serve(model);
        let status = || -> String {
            let mut s = connect(srv.addr);
            let body = [b'x'; 100];
            s.write_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
            s.write_all(&body).unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out[9..12]).into_owned()
        };
        assert_ne!(status(), "413", "{model}: 100 bytes are within the default");
        cfg.write("service = [\"http=127.0.0.1:0\"]\nmax-body = 10\n");
        reload(&srv, "max-body 1048576 -> 10");
        assert_eq!(status(), "413", "{model}");
    }
}

/// The chat's answer to `AUTH` with a token signed by `secret`.
fn auth_with(addr: SocketAddr, secret: &str) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let token = encode(
        &Header::default(),
        &serde_json::json!({"sub": "ann"}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let mut s = connect(addr);
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    until(&mut r, "WELCOME");
    writeln!(s, "AUTH {token}").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut r, &mut line).unwrap();
    line
}

#[test]
fn sighup_swaps_the_chat_token_key_for_new_connections_and_never_logs_it() {
    let model = "async";
    let cfg = Config::new(
        "jwt",
        model,
        "service = [\"chat=127.0.0.1:0\"]\njwt-secret = \"first-secret\"\n",
    );
    let srv = cfg.serve(model);
    assert_eq!(auth_with(srv.addr, "first-secret"), "OK AUTH ann\n");
    assert!(auth_with(srv.addr, "second-secret").starts_with("ERR bad-token"));
    cfg.write("service = [\"chat=127.0.0.1:0\"]\njwt-secret = \"second-secret\"\n");
    let lines = reload(&srv, "config reloaded");
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("first-secret") && !l.contains("second-secret")),
        "a secret is never logged: {lines:#?}"
    );
    assert!(
        lines.last().unwrap().contains("jwt-secret changed"),
        "{lines:#?}"
    );
    assert_eq!(auth_with(srv.addr, "second-secret"), "OK AUTH ann\n");
    assert!(auth_with(srv.addr, "first-secret").starts_with("ERR bad-token"));
}

/// The admin address a server logged (`Admin on http://ADDR/ ...`).
fn admin_of(srv: &Child_) -> SocketAddr {
    let line = srv.expect_log("Admin on http://");
    let rest = line.split("Admin on http://").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// The value of one series (`name{labels}`) in a scrape of `admin`'s `/metrics`, 0
/// when the series is not there.
fn scrape(admin: SocketAddr, series: &str) -> u64 {
    let mut s = connect(admin);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.parse().expect("a whole number"))
}

/// Scrapes until `series` reads `want` (a reply is counted once its send returns,
/// which may be just after the client read it), failing after the safety net.
fn scrape_until(admin: SocketAddr, series: &str, want: u64) {
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        let got = scrape(admin, series);
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is {got}, not {want}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_listener_added_by_sighup_is_counted_in_the_metrics_and_keeps_its_counts_once_removed() {
    const N: u64 = 5;
    let accepted = "multiclient_connections_accepted_total{service=\"ack\"}";
    for &model in MODELS {
        let cfg = Config::new("metrics", model, "service = [\"greet=127.0.0.1:0\"]\n");
        let srv = spawn_serve(&[
            "--config",
            cfg.0.to_str().unwrap(),
            "--model",
            model,
            "--admin",
            "127.0.0.1:0",
        ]);
        let admin = admin_of(&srv);
        let both = "service = [\"greet=127.0.0.1:0\", \"ack=127.0.0.1:0\"]\n";
        cfg.write(both);
        let lines = reload(&srv, "config reloaded");
        let added = lines
            .iter()
            .find(|l| l.contains("added the listener ack"))
            .unwrap_or_else(|| panic!("{model}: {lines:#?}"));
        let ack_addr = addr_in(added);
        for _ in 0..N {
            let mut c = connect(ack_addr);
            round_trip(&mut c, b"counted", ack::REPLY);
        }
        scrape_until(admin, accepted, N);
        let answers = format!(
            "multiclient_answer_duration_seconds_count{{service=\"ack\",model=\"{model}\",kind=\"message\"}}"
        );
        scrape_until(admin, &answers, N);
        scrape_until(
            admin,
            "multiclient_received_bytes_total{service=\"ack\"}",
            N * b"counted".len() as u64,
        );
        scrape_until(
            admin,
            "multiclient_connections_closed_total{service=\"ack\",reason=\"eof\"}",
            N,
        );

        // Removed: its counts stay, so a counter never goes back while its series is
        // listed (Prometheus would read a drop as a restart).
        cfg.write("service = [\"greet=127.0.0.1:0\"]\n");
        reload(&srv, "config reloaded");
        assert_eq!(scrape(admin, accepted), N, "{model}");
        assert_eq!(scrape(admin, &answers), N, "{model}");

        // The service back on a new listener adds to the same series.
        cfg.write(both);
        let lines = reload(&srv, "config reloaded");
        let added = lines
            .iter()
            .find(|l| l.contains("added the listener ack"))
            .unwrap_or_else(|| panic!("{model}: {lines:#?}"));
        let mut c = connect(addr_in(added));
        round_trip(&mut c, b"again", ack::REPLY);
        scrape_until(admin, accepted, N + 1);
    }
}

/// What a new client of the ack service at `addr` is told before it is closed, if
/// anything (a served one says something first: it is closed without a word).
fn refused_for_its_address(addr: SocketAddr) -> bool {
    let mut s = connect(addr);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out == b"ERR too many connections from your address\n"
}

#[test]
fn max_conns_per_ip_set_by_sighup_refuses_the_next_client_while_held_ones_stay_and_zero_lifts_it() {
    for &model in MODELS {
        let cfg = Config::new("per-ip", model, "service = [\"ack=127.0.0.1:0\"]\n");
        let srv = cfg.serve(model);
        let mut held: Vec<TcpStream> = (0..2).map(|_| connect(srv.addr)).collect();
        each_answered(&mut held, b"before");

        // From no limit to 2: the two held count, the third is refused.
        cfg.write("service = [\"ack=127.0.0.1:0\"]\nmax-conns-per-ip = 2\n");
        reload(&srv, "max-conns-per-ip 0 -> 2");
        assert!(
            refused_for_its_address(srv.addr),
            "{model}: a third connection from 127.0.0.1 is over the new limit"
        );
        each_answered(&mut held, b"held");

        // Raised to 3 with a listener added: one count for every listener, the new
        // one included.
        cfg.write("service = [\"ack=127.0.0.1:0\", \"greet=127.0.0.1:0\"]\nmax-conns-per-ip = 3\n");
        let lines = reload(&srv, "max-conns-per-ip 2 -> 3");
        let added = lines
            .iter()
            .find(|l| l.contains("added the listener greet"))
            .unwrap_or_else(|| panic!("{model}: {lines:#?}"));
        let greet_addr = addr_in(added);
        let mut third = connect(greet_addr);
        assert_eq!(read_n(&mut third, greet::GREETING.len()), greet::GREETING);
        let mut fourth = connect(greet_addr);
        let mut out = Vec::new();
        let _ = fourth.read_to_end(&mut out);
        assert_eq!(
            out, b"ERR too many connections from your address\n",
            "{model}: the added listener counts the same address"
        );

        // 0 lifts it: the next clients are served, the held ones still are.
        cfg.write("service = [\"ack=127.0.0.1:0\"]\n");
        reload(&srv, "max-conns-per-ip 3 -> 0");
        let mut fresh: Vec<TcpStream> = (0..3).map(|_| connect(srv.addr)).collect();
        for s in fresh.iter_mut().chain(&mut held) {
            round_trip(s, b"lifted", ack::REPLY);
        }
    }
}

#[test]
fn a_proxy_listener_added_by_sighup_takes_the_client_from_its_header() {
    for &model in MODELS {
        let cfg = Config::new("proxy", model, "service = [\"ack=127.0.0.1:0\"]\n");
        let srv = cfg.serve(model);
        cfg.write("service = [\"ack=127.0.0.1:0\", \"ack=127.0.0.1:0,proxy\"]\n");
        let lines = reload(&srv, "config reloaded");
        let added = lines
            .iter()
            .find(|l| l.contains("added the listener ack=127.0.0.1:0,proxy"))
            .unwrap_or_else(|| panic!("{model}: {lines:#?}"));
        let mut s = connect(addr_in(added));
        s.write_all(b"PROXY TCP4 198.51.100.22 127.0.0.1 35646 9999\r\nhi")
            .unwrap();
        assert_eq!(read_n(&mut s, ack::REPLY.len()), ack::REPLY, "{model}");
        srv.expect_log("is client 198.51.100.22:35646");
    }
}

/// A process this test started (through an upgrade), sent SIGTERM when the test ends,
/// passed or failed.
struct Terminated(rustix::process::Pid);

impl Drop for Terminated {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.0, Signal::TERM);
    }
}

#[test]
fn a_shutdown_timeout_lowered_by_sighup_bounds_the_drain_after_an_upgrade() {
    for model in ["threads", "async"] {
        let cfg = Config::new(
            "upgrade-timeout",
            model,
            "service = [\"ack=127.0.0.1:0\"]\nshutdown-timeout = \"60s\"\n",
        );
        let mut srv = cfg.serve(model);
        let mut held = connect(srv.addr);
        round_trip(&mut held, b"held", ack::REPLY);
        cfg.write("service = [\"ack=127.0.0.1:0\"]\nshutdown-timeout = \"200ms\"\n");
        reload(&srv, "shutdown-timeout 60s -> 200ms");

        srv.signal(Signal::USR2);
        let line = srv.expect_log("is ready; process");
        let started = std::time::Instant::now();
        let new: i32 = line
            .split("new process ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no PID in {line:?}"));
        let _new = Terminated(rustix::process::Pid::from_raw(new).unwrap());
        let status = srv.wait();
        let took = started.elapsed();
        assert!(status.success(), "{model}: {status:?}");
        assert!(
            took < std::time::Duration::from_secs(5),
            "{model}: the old process drained for {took:?}, not the reloaded 200ms"
        );
        let mut rest = Vec::new();
        let _ = held.read_to_end(&mut rest);
    }
}

#[test]
fn serve_help_says_reloaded_by_sighup_on_exactly_the_settings_a_reload_applies() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_multiclient"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    // Each option's block: its `--name` line and the lines until the next option.
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if line.starts_with("  ") && t.starts_with('-') {
            let long = t
                .split_whitespace()
                .find_map(|w| w.strip_prefix("--"))
                .unwrap_or_default()
                .trim_end_matches(['.', ','])
                .to_string();
            blocks.push((long, String::new()));
        } else if let Some((_, text)) = blocks.last_mut() {
            text.push_str(t);
            text.push(' ');
        }
    }
    let reloadable = multiclient::serve::reload::RELOADABLE;
    for (long, text) in &blocks {
        let says = text.contains("Reloaded by SIGHUP");
        if long == "config" {
            assert!(says, "--config explains which settings reload: {text}");
            continue;
        }
        assert_eq!(
            says,
            reloadable.contains(&long.as_str()),
            "--{long}: its help and RELOADABLE disagree: {text}"
        );
    }
    for key in reloadable {
        assert!(
            blocks.iter().any(|(long, _)| long == key),
            "{key} is no serve flag"
        );
    }
}
