//! The config file of `multiclient serve`, through the real binary: settings from a
//! file take effect, the environment overrides the file and a flag both, a bad file is
//! refused with its line, and every `serve` flag is a key of the file and of
//! `config-example`.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{connect, read_to_end, round_trip, Child_};

/// The binary with no `MULTICLIENT_*` variable inherited from the test's environment.
fn multiclient() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_multiclient"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MULTICLIENT_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("RUST_BACKTRACE", "0");
    cmd
}

/// A file under the test target's temporary directory, unique to this test.
fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("config-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `multiclient serve ARGS` with `env` set and waits for its `Listening on` line.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Child_ {
    common::spawn_serve_env(args, env)
}

/// Runs the binary to completion with `stdin` as its input.
fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = multiclient()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn multiclient");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn settings_in_the_file_take_effect() {
    let path = config_file(
        "effect",
        "service = [\"ack=127.0.0.1:0\"]\nmodel = \"threads\"\nmax-conns = 1\n",
    );
    let s = serve(&["--config", path.to_str().unwrap()], &[]);
    assert!(
        s.listening.contains("(ack, threads)"),
        "the file's service and model: {}",
        s.listening
    );
    let mut first = connect(s.addr);
    round_trip(&mut first, b"one", b"ACK!");
    let mut second = connect(s.addr);
    assert_eq!(
        read_to_end(&mut second),
        b"ERR server busy\n",
        "max-conns = 1 from the file refuses the second client"
    );
    round_trip(&mut first, b"two", b"ACK!");
}

#[test]
fn the_environment_overrides_the_file() {
    let path = config_file(
        "env",
        "service = [\"ack=127.0.0.1:0\"]\nmodel = \"threads\"\nmax-conns = 1\n",
    );
    let s = serve(
        &["--config", path.to_str().unwrap()],
        &[
            ("MULTICLIENT_MODEL", "pool"),
            ("MULTICLIENT_MAX_CONNS", "2"),
        ],
    );
    assert!(s.listening.contains("(ack, pool)"), "{}", s.listening);
    let mut first = connect(s.addr);
    round_trip(&mut first, b"one", b"ACK!");
    let mut second = connect(s.addr);
    round_trip(&mut second, b"two", b"ACK!");
}

#[test]
fn a_flag_overrides_the_environment_and_the_file() {
    let path = config_file(
        "flag",
        "service = [\"greet=127.0.0.1:0\"]\nmodel = \"threads\"\n",
    );
    let s = serve(
        &[
            "--config",
            path.to_str().unwrap(),
            "--model",
            "async",
            "--service",
            "ack=127.0.0.1:0",
        ],
        &[
            ("MULTICLIENT_MODEL", "pool"),
            ("MULTICLIENT_SERVICE", "hello=127.0.0.1:0"),
        ],
    );
    assert!(s.listening.contains("(ack, async)"), "{}", s.listening);
}

#[test]
fn the_config_file_can_come_from_the_environment() {
    let path = config_file("envfile", "service = [\"hello=127.0.0.1:0\"]\n");
    let s = serve(&[], &[("MULTICLIENT_CONFIG", path.to_str().unwrap())]);
    assert!(s.listening.contains("(hello, async)"), "{}", s.listening);
}

#[test]
fn an_unknown_key_is_refused_with_its_line() {
    let path = config_file(
        "unknown",
        "# limits\nmax-conns = 5\n\nmax-cons = 5\nidle-timeout = \"soon\"\n",
    );
    let path = path.to_str().unwrap();
    let out = run(&["check-config", path], b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{path}:4: unknown key `max-cons`")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:5: `idle-timeout`: invalid value 'soon'")),
        "{err}"
    );
    let out = run(&["serve", "--config", path], b"");
    assert_eq!(out.status.code(), Some(1), "serve refuses it too");
    assert!(stderr(&out).contains(&format!("{path}:4: unknown key")));
}

#[test]
fn check_config_refuses_settings_that_do_not_go_together() {
    let out = run(
        &["check-config", "-"],
        b"service = [\"ack\", \"greet\"]\naddr = \"127.0.0.1:9\"\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--addr needs exactly one --service"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_example_is_accepted_by_check_config() {
    let example = run(&["config-example"], b"");
    assert!(example.status.success());
    let out = run(&["check-config", "-"], &example.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "-: ok\n");
}

/// The long flags `serve --help` lists, but `--help` and `--config` themselves.
fn serve_flags() -> Vec<String> {
    let out = run(&["serve", "--help"], b"");
    let mut help = String::new();
    out.stdout.as_slice().read_to_string(&mut help).unwrap();
    let mut flags: Vec<String> = help
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .flat_map(str::split_whitespace)
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
        .filter(|w| !w.is_empty() && w != "help" && w != "config")
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

#[test]
fn every_serve_flag_is_a_config_key_and_in_the_example() {
    let flags = serve_flags();
    assert!(
        flags.len() >= 20 && flags.iter().any(|f| f == "max-conns"),
        "{flags:?}"
    );
    let example = String::from_utf8(run(&["config-example"], b"").stdout).unwrap();
    for flag in &flags {
        let written = format!("{flag} = ");
        assert!(
            example
                .lines()
                .any(|l| l.starts_with(&written) || l.starts_with(&format!("# {written}"))),
            "--{flag} is not in config-example"
        );
        let out = run(
            &["check-config", "-"],
            format!("{flag} = \"x\"\n").as_bytes(),
        );
        assert!(
            !stderr(&out).contains("unknown key"),
            "--{flag} is not a config key: {}",
            stderr(&out)
        );
    }
    let out = run(&["check-config", "-"], b"no-such-flag = 1\n");
    assert!(stderr(&out).contains("-:1: unknown key `no-such-flag`"));
}

/// Joins `room` on a fresh line-protocol connection; returns the reader and the writer.
fn chat_member(
    addr: std::net::SocketAddr,
    room: &str,
) -> (std::io::BufReader<std::net::TcpStream>, std::net::TcpStream) {
    use std::io::BufRead;
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("WELCOME "), "{line:?}");
    w.write_all(format!("JOIN {room}\n").as_bytes()).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK JOIN {room}\n"));
    (r, w)
}

/// What the first member heard of the room filling to three: every line up to its own
/// message said after the joins (room events come in the room's order, so any JOIN
/// line comes before it), then its `WHO` answer.
fn heard_while_three_join(args: &[&str]) -> Vec<String> {
    use std::io::BufRead;
    let server = common::spawn_serve(args);
    let (mut first, mut w) = chat_member(server.addr, "big");
    let _second = chat_member(server.addr, "big");
    let _third = chat_member(server.addr, "big");
    w.write_all(b"SAY big after the joins\nWHO big\n").unwrap();
    let mut heard = Vec::new();
    loop {
        let mut line = String::new();
        first.read_line(&mut line).unwrap();
        let done = line.starts_with("WHO big ");
        heard.push(line.trim_end().to_owned());
        if done {
            return heard;
        }
    }
}

#[test]
fn presence_limit_stops_join_lines_past_it_while_who_stays_exact() {
    let base = ["--service", "chat=127.0.0.1:0", "--admin", "off"];
    // Default (100): both later joins are announced.
    let heard = heard_while_three_join(&base);
    let joins = heard.iter().filter(|l| l.starts_with("JOIN big ")).count();
    assert_eq!(joins, 2, "{heard:?}");
    // --presence-limit 2: the second join (2 members) is announced, the third is not.
    let heard = heard_while_three_join(&[&base[..], &["--presence-limit", "2"]].concat());
    let joins: Vec<_> = heard
        .iter()
        .filter(|l| l.starts_with("JOIN big "))
        .collect();
    assert_eq!(joins, ["JOIN big guest-2"], "{heard:?}");
    let who = heard.last().unwrap();
    assert_eq!(
        who.split(' ').count(),
        2 + 3,
        "WHO lists all three: {who:?}"
    );
}
