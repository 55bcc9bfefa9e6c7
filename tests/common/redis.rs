//! A `redis-server` of the test's own on a free loopback port, for the chat suites that
//! run with `--redis` (ignored by a plain `cargo test`; `.ci/chat.sh` installs
//! redis-server and runs them). Without `redis-server` a test fails with a clear
//! message rather than passing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server process; killed (by its PID) when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers. The port is checked to be
    /// served by this very process (its `INFO` names its PID): on a shared machine
    /// another test's server may have taken the port meanwhile, and chatting through
    /// it would mix two tests' rooms. Then another port is tried.
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            if let Some(server) = Self::try_start() {
                return server;
            }
        }
        panic!("redis-server could not start on a free port in 5 tries");
    }

    fn try_start() -> Option<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        Self::start_on(port)
    }

    /// A server on `port`, once it answers; `None` when the port turns out taken.
    fn start_on(port: u16) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): install it (Debian: apt-get install \
                     redis-server; .ci/chat.sh does it)"
                )
            });
        let mut server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = server.child.try_wait() {
                return None; // It exited: the port was taken.
            }
            match server.served_by() {
                Some(pid) if pid == server.child.id() => return Some(server),
                Some(_) => return None, // Someone else's server.
                None => {}
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The PID of the server answering on the port, if one answers.
    fn served_by(&self) -> Option<u32> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.write_all(b"INFO server\r\n").ok()?;
        let mut r = BufReader::new(s);
        let mut head = String::new();
        r.read_line(&mut head).ok()?;
        let len: usize = head.strip_prefix('$')?.trim_end().parse().ok()?;
        let mut body = vec![0; len];
        r.read_exact(&mut body).ok()?;
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
    }

    /// The URL to give `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered, as
    /// when Redis hangs.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Kills the server (SIGKILL, reaped): clients find the port closed, as when Redis
    /// dies. [`RedisServer::start_again`] brings up a fresh one on the same port.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A fresh, empty server on the same port, as when Redis restarts after a crash
    /// without persistence; checked to be this very process, like [`RedisServer::start`].
    pub fn start_again(&mut self) {
        self.kill();
        *self = Self::start_on(self.port)
            .unwrap_or_else(|| panic!("redis-server could not start again on {}", self.port));
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} redis-server");
    }
}

impl Drop for RedisServer {
    /// SIGKILL ends it even when paused.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
