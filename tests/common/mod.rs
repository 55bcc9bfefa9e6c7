//! Helpers shared by the integration tests: in-process servers on port 0, clients with
//! a safety-net read timeout, and the server binary run as a child process.

#![allow(dead_code)]

pub mod chat;
pub mod lines;
pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use multiclient::model::{Limits, Listening, Model, Server};
use multiclient::service::Service;

/// Every model, as the matrix runs them.
pub const MODELS: [Model; 4] = [
    Model::Single,
    Model::Threads,
    Model::Pool { workers: 10 },
    Model::Async { workers: 2 },
];

/// The models that serve clients concurrently.
pub const CONCURRENT: [Model; 3] = [
    Model::Threads,
    Model::Pool { workers: 10 },
    Model::Async { workers: 2 },
];

/// A safety net only: a test that waits this long has already failed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A server running one service on 127.0.0.1:0.
pub struct Running {
    pub server: Option<Server>,
    pub listening: Listening,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.listening.addr
    }

    /// Drains and waits; returns how many connections the shutdown timeout cut off.
    pub fn stop(mut self) -> usize {
        let server = self.server.take().expect("running");
        server.drain().start();
        server.wait()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.drain().start();
            server.wait();
        }
    }
}

pub fn start<S: Service>(model: Model, limits: Limits, service: S) -> Running {
    let mut server = Server::new(model, limits).expect("server");
    let listening = server.listen("127.0.0.1:0", service).expect("listen");
    Running {
        server: Some(server),
        listening,
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads exactly `n` bytes.
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    buf
}

/// Reads until the server closes.
pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("read to EOF");
    v
}

/// Sends `msg` and expects exactly `reply` back.
pub fn round_trip(s: &mut TcpStream, msg: &[u8], reply: &[u8]) {
    s.write_all(msg).unwrap();
    assert_eq!(
        read_n(s, reply.len()),
        reply,
        "reply to {:?}",
        String::from_utf8_lossy(msg)
    );
}

/// Whether nothing arrives within `window` (the client is not being served).
pub fn silent_for(s: &mut TcpStream, window: Duration) -> bool {
    s.set_read_timeout(Some(window)).unwrap();
    let mut b = [0u8; 64];
    let r = s.read(&mut b);
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    match r {
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        Ok(_) => false,
    }
}

/// The server binary as a child, with the address it reported.
pub struct Child_ {
    pub child: Child,
    pub addr: SocketAddr,
    /// The `Listening on` line it printed (service and model are in it).
    #[allow(dead_code)]
    pub listening: String,
    pub log: std::sync::mpsc::Receiver<String>,
}

/// Starts `multiclient serve ARGS` and waits for its `Listening on` line.
pub fn spawn_serve(args: &[&str]) -> Child_ {
    spawn_serve_env(args, &[])
}

/// [`spawn_serve`] with environment variables set for the server.
pub fn spawn_serve_env(args: &[&str], env: &[(&str, &str)]) -> Child_ {
    let mut child = Command::new(env!("CARGO_BIN_EXE_multiclient"))
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn multiclient");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (addr, listening) = loop {
        let line = rx
            .recv_timeout(TIMEOUT)
            .expect("server printed no Listening line");
        if let Some(rest) = line.split("Listening on ").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            break (addr, line);
        }
    };
    Child_ {
        child,
        addr,
        listening,
        log: rx,
    }
}

impl Child_ {
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Waits for the exit status, failing the test after the safety-net timeout.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + TIMEOUT * 2;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a log line containing `needle`.
    pub fn expect_log(&self, needle: &str) -> String {
        loop {
            let line = self
                .log
                .recv_timeout(TIMEOUT)
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }
}

impl Drop for Child_ {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A self-signed certificate for `localhost`, written as PEM files in a fresh directory
/// `<name>-<pid>` under the tests' target directory: the directory (the caller removes
/// it if it wants), the files a `,tls` listener loads, and the certificate a client
/// trusts.
pub fn self_signed_pem(
    name: &str,
) -> (
    std::path::PathBuf,
    multiclient::serve::tls::TlsFiles,
    rustls::pki_types::CertificateDer<'static>,
) {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let files = multiclient::serve::tls::TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, key.cert.pem()).unwrap();
    std::fs::write(&files.key, key.signing_key.serialize_pem()).unwrap();
    (dir, files, key.cert.der().clone())
}
