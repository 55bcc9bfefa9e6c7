//! `multiclient connect` as a user runs it: the binary, its stdin a pipe the test keeps
//! open (as a terminal is), against a listener the test controls or a real server.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{spawn_serve, TIMEOUT};

/// `multiclient connect ARGS` with stdin, stdout and stderr piped.
fn connect(args: &[&str]) -> (Child, ChildStdin) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_multiclient"))
        .arg("connect")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn multiclient connect");
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

/// Waits for the client to exit by itself (its stdin still open), then its stdout and
/// stderr.
fn exited(mut child: Child) -> (ExitStatus, String, String) {
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("connect did not exit after the server closed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out).unwrap();
    }
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

/// A listener that does `then` with the first client it accepts.
fn one_client(then: impl FnOnce(std::net::TcpStream) + Send + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        then(s);
    });
    addr
}

#[test]
fn connect_exits_at_once_when_the_server_says_goodbye_and_closes() {
    let addr = one_client(|mut s| {
        s.write_all(b"ERR idle timeout\n").unwrap();
    });
    let (child, _stdin_left_open) = connect(&["ack", "--addr", &addr.to_string()]);
    let (status, out, err) = exited(child);
    assert!(status.success(), "a clean close exits 0: {status:?} {err}");
    assert_eq!(out, "ERR idle timeout\n");
    assert!(
        err.contains("connection closed by the server (last: ERR idle timeout)"),
        "the reason is printed: {err:?}"
    );
}

#[test]
fn connect_says_closed_by_the_server_when_it_left_without_a_word() {
    let addr = one_client(drop);
    let (child, _stdin_left_open) = connect(&["greet", "--addr", &addr.to_string()]);
    let (status, out, err) = exited(child);
    assert!(status.success(), "{status:?} {err}");
    assert_eq!(out, "");
    assert!(err.contains("connection closed by the server"), "{err:?}");
}

#[test]
fn connect_exits_non_zero_on_a_reset() {
    let addr = one_client(|s| {
        let s = socket2::Socket::from(s);
        s.set_linger(Some(Duration::ZERO)).unwrap();
        drop(s); // RST
    });
    let (child, _stdin_left_open) = connect(&["ack", "--addr", &addr.to_string()]);
    let (status, _, err) = exited(child);
    assert!(!status.success(), "a reset is a failure");
    assert!(err.contains("reset"), "{err:?}");
}

#[test]
fn connect_exits_non_zero_when_refused() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // dropped: nothing listens there now
    let (child, _stdin) = connect(&["ack", "--addr", &addr.to_string()]);
    let (status, _, err) = exited(child);
    assert!(!status.success());
    assert!(err.contains("refused"), "{err:?}");
}

#[test]
fn a_terminal_escape_received_is_printed_escaped_never_raw() {
    let addr = one_client(|mut s| {
        s.write_all(b"MSG lobby 1 eve \x1b[2J\x1b]0;pwned\x07 hi\n")
            .unwrap();
    });
    let (child, _stdin_left_open) = connect(&["chat", "--addr", &addr.to_string()]);
    let (status, out, _) = exited(child);
    assert!(status.success());
    assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out:?}");
    assert_eq!(out, "MSG lobby 1 eve \\u{1b}[2J\\u{1b}]0;pwned\\u{7} hi\n");
}

/// Reads stdout lines until one equals `want`.
fn expect_line(lines: &mut impl Iterator<Item = std::io::Result<String>>, want: &str) {
    for line in lines.by_ref() {
        let line = line.expect("stdout");
        if line == want {
            return;
        }
    }
    panic!("no line {want:?}");
}

#[test]
fn connect_ws_sends_each_line_as_a_message_and_prints_each_answer() {
    let server = spawn_serve(&["--service", "ws=127.0.0.1:0"]);
    let (mut child, mut stdin) = connect(&["ws", "--addr", &server.addr.to_string()]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin.write_all(b"hello\n").unwrap();
    expect_line(&mut lines, "Server received: hello");
    stdin.write_all(b"again\n").unwrap();
    expect_line(&mut lines, "Server received: again");
    drop(stdin); // Ctrl-D: a close frame, the server's close, exit 0
    let (status, _, err) = exited(child);
    assert!(status.success(), "{status:?} {err}");
}

#[test]
fn connect_chat_ws_speaks_the_json_wire() {
    let server = spawn_serve(&["--service", "http=127.0.0.1:0"]);
    let (mut child, mut stdin) = connect(&["chat", "--ws", "--addr", &server.addr.to_string()]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin.write_all(b"NICK ann\nJOIN lobby\n").unwrap();
    expect_line(&mut lines, r#"{"cmd":"join","room":"lobby","type":"ok"}"#);
    stdin.write_all(b"SAY lobby hi\n").unwrap();
    let msg = lines.next().unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
    assert_eq!(v["type"], "msg");
    assert_eq!(v["nick"], "ann");
    assert_eq!(v["text"], "hi");
    stdin.write_all(b"QUIT\n").unwrap();
    let (status, _, err) = exited(child);
    assert!(status.success(), "{status:?} {err}");
}

#[test]
fn completions_for_each_shell_and_the_man_page_are_printed() {
    let bin = env!("CARGO_BIN_EXE_multiclient");
    for (args, needle) in [
        (&["completions", "bash"][..], "complete -F _multiclient"),
        (&["completions", "zsh"][..], "#compdef multiclient"),
        (&["completions", "fish"][..], "complete -c multiclient"),
        (&["man"][..], ".TH multiclient 1"),
    ] {
        let out = Command::new(bin).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(needle), "{args:?} lacks {needle:?}");
        assert!(text.contains("connect"), "{args:?} lacks the subcommands");
    }
}

#[test]
fn generated_texts_end_quietly_when_the_reader_closes_the_pipe_early() {
    // `multiclient man | head -1`: the reader closes its end early. The rest of the
    // output is not wanted, which is no error and certainly no panic.
    let bin = env!("CARGO_BIN_EXE_multiclient");
    for args in [
        &["completions", "bash"][..],
        &["completions", "zsh"][..],
        &["man"][..],
        &["config-example"][..],
    ] {
        // The read end is closed before the program starts: its first write fails
        // with EPIPE, whatever the pipe's buffer size.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut child = Command::new(bin)
            .args(args)
            .env_remove("RUST_BACKTRACE")
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{args:?}: {status:?} {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
