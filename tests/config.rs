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
