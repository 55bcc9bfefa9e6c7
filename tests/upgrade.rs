//! SIGUSR2 through the real binary: a new process takes over the listening sockets
//! while clients keep connecting, and none of them is refused, reset or left
//! unanswered; a new process that cannot start leaves the old one serving.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// Safety net for every wait in these tests.
const BOUND: Duration = Duration::from_secs(60);
/// Most connections one client thread makes.
const MAX_PER_THREAD: usize = 20_000;
/// Client threads connecting at once.
const THREADS: usize = 4;

/// Makes this test process the reaper of the new server processes (children of the
/// old one, orphaned when it exits), so that it can wait for their exit status.
fn reap_orphans() {
    rustix::process::set_child_subreaper(Pid::from_raw(1)).expect("PR_SET_CHILD_SUBREAPER");
}

/// Clients that each connect, send one message, read its `ACK!` and close, until told
/// to stop; every failure is kept with what failed.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..THREADS)
            .map(|t| {
                let (stop, answered, failures) = (stop.clone(), answered.clone(), failures.clone());
                std::thread::spawn(move || {
                    let started = Instant::now();
                    for i in 0..MAX_PER_THREAD {
                        if stop.load(Ordering::Relaxed) || started.elapsed() > BOUND {
                            break;
                        }
                        match one_round_trip(addr, &format!("message {t}-{i}")) {
                            Ok(()) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(format!("{t}-{i}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            answered,
            failures,
            threads,
        }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until `n` messages in all were answered.
    fn until_answered(&self, n: usize) {
        let deadline = Instant::now() + BOUND;
        while self.answered() < n {
            assert!(
                Instant::now() < deadline,
                "only {} answered",
                self.answered()
            );
            assert!(
                self.failures.lock().unwrap().is_empty(),
                "{:?}",
                self.failures
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.answered.load(Ordering::Relaxed), failures)
    }
}

fn one_round_trip(addr: SocketAddr, msg: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(msg.as_bytes())?;
    let mut reply = [0u8; 4];
    s.read_exact(&mut reply)?;
    if &reply != b"ACK!" {
        return Err(std::io::Error::other(format!("answered {reply:?}")));
    }
    Ok(())
}

/// The PID in the old process's `new process PID is ready` line.
fn new_pid(server: &common::Child_) -> Pid {
    let line = server.expect_log("is ready; process");
    let pid = line
        .split("new process ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no PID in {line:?}"));
    Pid::from_raw(pid).expect("a PID")
}

/// Stops the new process with SIGTERM and returns its exit code.
fn terminate(pid: Pid) -> Option<i32> {
    rustix::process::kill_process(pid, Signal::TERM).unwrap();
    let deadline = Instant::now() + BOUND;
    loop {
        let waited = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG)
            .expect("the new process is this test's to reap");
        if let Some((_, status)) = waited {
            return status.exit_status();
        }
        if Instant::now() > deadline {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            panic!("the new process did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn swap_under_load(model: &str) {
    reap_orphans();
    let mut old = common::spawn_serve(&[
        "--service",
        "ack=127.0.0.1:0",
        "--model",
        model,
        "--admin",
        "off",
        "--shutdown-timeout",
        "5s",
    ]);
    let addr = old.addr;
    let load = Load::start(addr);
    load.until_answered(200);
    old.signal(Signal::USR2);
    let new = new_pid(&old);
    assert_ne!(new.as_raw_nonzero().get() as u32, old.child.id());
    let status = old.wait();
    assert!(status.success(), "the old process exited with {status}");
    let at_exit = load.answered();
    // The new process alone answers from here on.
    load.until_answered(at_exit + 200);
    let (answered, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} failed across the swap: {:?}",
        failures.len(),
        answered + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(answered >= at_exit + 200);
    one_round_trip(addr, "after").expect("the new process serves");
    assert_eq!(terminate(new), Some(0));
}

#[test]
fn under_threads_no_client_connecting_across_a_sigusr2_swap_fails() {
    swap_under_load("threads");
}

#[test]
fn under_async_no_client_connecting_across_a_sigusr2_swap_fails() {
    swap_under_load("async");
}

fn config_file(text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("upgrade-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_new_process_that_cannot_start_leaves_the_old_one_serving_until_a_later_sigusr2() {
    reap_orphans();
    let good = "service = [\"ack=127.0.0.1:0\"]\nadmin = \"off\"\n";
    let path = config_file(good);
    let mut old = common::spawn_serve(&["--config", path.to_str().unwrap()]);
    let addr = old.addr;
    one_round_trip(addr, "before").unwrap();

    // The binary on disk now refuses its configuration: the upgrade fails.
    std::fs::write(&path, "no_such_setting = 1\n").unwrap();
    old.signal(Signal::USR2);
    old.expect_log("upgrade failed, serving on");
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old process exited"
    );
    one_round_trip(addr, "still served").expect("the old process still serves");

    // Fixed, the next SIGUSR2 hands over.
    std::fs::write(&path, good).unwrap();
    old.signal(Signal::USR2);
    let new = new_pid(&old);
    assert!(old.wait().success());
    one_round_trip(addr, "after").expect("the new process serves");
    assert_eq!(terminate(new), Some(0));
    let _ = std::fs::remove_file(&path);
}

/// A server that hands its listeners over (`Drain::stop_accepting`) still counts every
/// client it accepted until that client is answered: the count is what the old process
/// waits on before it exits, and a client it missed would be reset by the exit.
fn a_handed_over_server_counts_each_client_it_accepted(model: multiclient::model::Model) {
    use multiclient::model::{Limits, Server};
    use multiclient::service::ack::Ack;
    for i in 0..30 {
        let mut server = Server::new(model, Limits::default()).unwrap();
        let l = server.listen("127.0.0.1:0", Ack).unwrap();
        // A thread that served a client waits for the next one (the threads model).
        one_round_trip(l.addr, "warm").unwrap();
        let closed_before = Instant::now() + common::TIMEOUT;
        while l.stats.closed.load(Ordering::Relaxed) < 1 {
            assert!(Instant::now() < closed_before);
            std::thread::yield_now();
        }
        let mut c = TcpStream::connect(l.addr).unwrap();
        let accepted_before = Instant::now() + common::TIMEOUT;
        while l.stats.accepted.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < accepted_before);
            std::thread::yield_now();
        }
        let drain = server.drain();
        drain.stop_accepting();
        let left = drain.wait_idle(Instant::now() + Duration::from_millis(50));
        assert!(
            left >= 1,
            "iteration {i}: an accepted client was not counted"
        );
        c.set_read_timeout(Some(common::TIMEOUT)).unwrap();
        c.write_all(b"late").unwrap();
        let mut reply = [0u8; 4];
        c.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ACK!");
        drop(c);
        drain.start();
        assert_eq!(server.wait(), 0);
    }
}

#[test]
fn under_threads_a_handed_over_server_counts_each_client_it_accepted() {
    a_handed_over_server_counts_each_client_it_accepted(multiclient::model::Model::Threads);
}

#[test]
fn under_async_a_handed_over_server_counts_each_client_it_accepted() {
    a_handed_over_server_counts_each_client_it_accepted(multiclient::model::Model::Async {
        workers: 2,
    });
}

/// The port in the next log line that has `needle` before an address.
fn logged_addr(server: &common::Child_, needle: &str) -> SocketAddr {
    let line = server.expect_log(needle);
    let rest = line.split(needle).nth(1).unwrap();
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.parse()
        .unwrap_or_else(|_| panic!("no address in {line:?}"))
}

#[test]
fn listeners_asked_for_the_same_port_0_and_the_admin_get_their_own_sockets_back() {
    reap_orphans();
    let mut old = common::spawn_serve(&[
        "--service",
        "ack=127.0.0.1:0",
        "--service",
        "hello=127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--model",
        "threads",
    ]);
    let ack = old.addr;
    let hello = logged_addr(&old, "Listening on ");
    let admin = logged_addr(&old, "Admin on http://");
    old.signal(Signal::USR2);
    let new = new_pid(&old);
    assert!(old.wait().success());
    one_round_trip(ack, "ack").expect("ack on its own port");
    let mut s = TcpStream::connect(hello).unwrap();
    s.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    s.write_all(b"hi").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "Hello from server!");
    let mut a = TcpStream::connect(admin).unwrap();
    a.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    a.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    a.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(terminate(new), Some(0));
}
