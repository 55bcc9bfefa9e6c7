//! `serve --processes N` through the real binary: the workers share the service's
//! address, a killed worker is restarted without losing the clients queued for it,
//! SIGTERM drains every worker, and a chat over several processes needs Redis.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use rustix::process::{Pid, Signal};

fn round_trip(addr: SocketAddr, msg: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(common::TIMEOUT))?;
    s.write_all(msg.as_bytes())?;
    let mut reply = [0u8; 4];
    s.read_exact(&mut reply)?;
    if &reply != b"ACK!" {
        return Err(std::io::Error::other(format!("answered {reply:?}")));
    }
    Ok(())
}

/// The PID in the next `worker I started (PID P)` line, with I.
fn started(server: &common::Child_) -> (usize, i32) {
    let line = server.expect_log(" started (PID ");
    let index = line
        .split("worker ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("no worker in {line:?}"));
    let pid = line
        .split("(PID ")
        .nth(1)
        .and_then(|r| r.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no PID in {line:?}"));
    (index, pid)
}

fn two_workers() -> (common::Child_, Vec<i32>) {
    let server = common::spawn_serve(&[
        "--processes",
        "2",
        "--service",
        "ack=127.0.0.1:0",
        "--admin",
        "off",
    ]);
    let mut pids = vec![0; 2];
    for _ in 0..2 {
        let (i, pid) = started(&server);
        pids[i] = pid;
    }
    (server, pids)
}

#[test]
fn two_worker_processes_serve_and_a_killed_one_is_restarted_without_losing_queued_clients() {
    let (server, pids) = two_workers();
    assert_ne!(pids[0], pids[1]);
    server.expect_log("worker 1: ");
    for i in 0..20 {
        round_trip(server.addr, &format!("before {i}")).unwrap();
    }
    rustix::process::kill_process(Pid::from_raw(pids[0]).unwrap(), Signal::KILL).unwrap();
    // Clients the kernel gives to the dead worker's socket wait in its queue: the
    // supervisor keeps the socket and the restarted worker takes them.
    let failures: Vec<String> = (0..40)
        .filter_map(|i| {
            round_trip(server.addr, &format!("across {i}"))
                .err()
                .map(|e| format!("{i}: {e}"))
        })
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    server.expect_log("worker 0 (PID");
    let (i, pid) = started(&server);
    assert_eq!(i, 0);
    assert_ne!(pid, pids[0]);
    for i in 0..20 {
        round_trip(server.addr, &format!("after {i}")).unwrap();
    }
}

#[test]
fn sigterm_drains_every_worker_and_the_supervisor_exits_0() {
    let (mut server, _) = two_workers();
    let mut held = TcpStream::connect(server.addr).unwrap();
    held.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    held.write_all(b"held").unwrap();
    let mut reply = [0u8; 4];
    held.read_exact(&mut reply).unwrap();
    server.signal(Signal::TERM);
    let mut rest = Vec::new();
    held.read_to_end(&mut rest)
        .expect("the held client is closed, not reset");
    let status = server.wait();
    assert!(status.success(), "the supervisor exited with {status}");
    server.expect_log("All workers exited (0 restarts)");
}

/// SIGTERM the moment both workers are started, before either can have set up its
/// signal handling: a worker that is still starting keeps the signal for when it can
/// drain, instead of dying of it (which made the supervisor exit 1).
#[test]
fn sigterm_while_the_workers_start_still_drains_and_exits_0() {
    for _ in 0..5 {
        let (mut server, _) = two_workers();
        server.signal(Signal::TERM);
        let status = server.wait();
        assert!(status.success(), "the supervisor exited with {status}");
        server.expect_log("All workers exited (0 restarts)");
    }
}

#[test]
fn a_chat_over_two_processes_without_redis_is_refused_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_multiclient"))
        .args([
            "serve",
            "--processes",
            "2",
            "--service",
            "chat=127.0.0.1:0",
            "--admin",
            "off",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--redis"), "{err}");
}

#[test]
fn sigusr2_replaces_every_worker_while_clients_keep_connecting() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let (mut server, old) = two_workers();
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, answered) = (stop.clone(), answered.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let started = std::time::Instant::now();
            for i in 0..20_000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > common::TIMEOUT * 6 {
                    break;
                }
                match round_trip(addr, &format!("message {i}")) {
                    Ok(()) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(format!("{i}: {e}")),
                }
            }
            failures
        })
    };
    let wait_for = |n: usize| {
        let deadline = std::time::Instant::now() + common::TIMEOUT * 3;
        while answered.load(Ordering::Relaxed) < n {
            assert!(std::time::Instant::now() < deadline, "the load stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(100);
    server.signal(Signal::USR2);
    for i in 0..2 {
        let line = server.expect_log(" handed over to PID ");
        assert!(
            line.contains(&format!("(PID {})", old[0]))
                || line.contains(&format!("(PID {})", old[1])),
            "{line} ({i})"
        );
    }
    let after = answered.load(Ordering::Relaxed);
    wait_for(after + 100);
    stop.store(true, Ordering::Relaxed);
    let failures = load.join().unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    server.signal(Signal::TERM);
    assert!(server.wait().success());
    server.expect_log("All workers exited (0 restarts)");
}
