//! A `redis-server` of the test's own on a free loopback port, or a Redis Cluster of
//! them, and chat instances on it, for the chat suites that run with `--redis`
//! (ignored by a plain `cargo test`; `.ci/chat.sh` and `.ci/cluster.sh` install
//! redis-server and run them). Without `redis-server` a test fails with a clear
//! message rather than passing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use multiclient::hub::Hub;
use multiclient::model::{Limits, Model, Server};
use multiclient::serve::{ServiceName, ServiceOptions};
use multiclient::service::chat::ChatOptions;

/// A chat instance of the test's own, in this process, on a Redis (its `ChatOptions`
/// say which); drained when dropped.
pub struct ChatInstance {
    server: Option<Server>,
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
}

impl ChatInstance {
    /// The chat `chat` under `model` on 127.0.0.1:0, once its Redis link is up.
    pub fn serve(model: Model, chat: ChatOptions) -> ChatInstance {
        // The bridge's log, with RUST_LOG set, shows what a failure went through.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let hub = chat.hub().unwrap();
        let mut server = Server::new(model, Limits::default()).unwrap();
        let l = ServiceName::Chat
            .listen(
                &mut server,
                "127.0.0.1:0".parse().unwrap(),
                &ServiceOptions {
                    chat,
                    ..ServiceOptions::default()
                },
            )
            .unwrap();
        let i = ChatInstance {
            server: Some(server),
            addr: l.addr,
            hub,
        };
        i.wait_available(true);
        i
    }

    /// Waits (bounded) until the hub's Redis link is up or down.
    pub fn wait_available(&self, up: bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.hub.is_available() != up {
            assert!(Instant::now() < deadline, "redis link never became up={up}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChatInstance {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.drain().start();
            s.wait();
        }
    }
}

/// What a suite's chat runs on: one Redis, or a cluster of 3 masters and 3 replicas.
/// A check that holds on both is run on both.
pub enum Redis {
    One(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    /// One `redis-server`.
    pub fn one() -> Redis {
        Redis::One(RedisServer::start())
    }

    /// A cluster of six (see [`RedisCluster`]).
    pub fn cluster() -> Redis {
        Redis::Cluster(RedisCluster::start())
    }

    /// The URL to give `--redis`.
    pub fn url(&self) -> String {
        match self {
            Redis::One(r) => r.url(),
            Redis::Cluster(c) => c.url(),
        }
    }
}

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
        Self::start_with(port, &[])
    }

    /// A server on `port` with more arguments, once it answers; `None` when the port
    /// turns out taken.
    fn start_with(port: u16, more: &[String]) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(more)
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
        query(self.port, "INFO server")?
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
    }

    /// The URL to give `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its port, for [`query`].
    pub fn port(&self) -> u16 {
        self.port
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

    /// The ids of the clients subscribed to a channel now (`CLIENT LIST TYPE pubsub`).
    pub fn subscribers(&self) -> Vec<u64> {
        let list = query(self.port, "CLIENT LIST TYPE pubsub").expect("CLIENT LIST");
        list.lines()
            .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
            .collect()
    }

    /// Closes client `id`'s connection (`CLIENT KILL ID`), as when it breaks.
    pub fn disconnect(&self, id: u64) {
        let r = query(self.port, &format!("CLIENT KILL ID {id}"));
        assert_eq!(r.as_deref(), Some(":1"), "CLIENT KILL ID {id}");
    }

    /// How many times the server ran `command` since it started (lower case, as
    /// `INFO commandstats` names it; commands run by scripts included).
    pub fn calls(&self, command: &str) -> u64 {
        let stats = query(self.port, "INFO commandstats").expect("INFO commandstats");
        let head = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&head))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
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

/// The reply of an inline command to the server on `port`: a bulk string's text, or a
/// status, integer or error line (with its `+`, `:` or `-`); `None` if none came.
pub fn query(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head).ok()?;
    let Some(len) = head.strip_prefix('$') else {
        return Some(head.trim_end().to_string());
    };
    let len: usize = len.trim_end().parse().ok()?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// A Redis Cluster of the test's own: 3 masters and 3 replicas of `redis-server` on
/// free loopback ports, made by `redis-cli --cluster create`. A failed master's
/// replica takes over after `cluster-node-timeout` (1 s here), and the other masters
/// keep serving meanwhile (`cluster-require-full-coverage no`).
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts the six servers, makes them one cluster and waits until every node
    /// sees every slot served.
    pub fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "mc-cluster-{}-{}",
            std::process::id(),
            cluster_ports_salt()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        while nodes.len() < 6 {
            let port = bus_free_port();
            if let Some(n) = RedisServer::start_with(port, &Self::args(&dir, port)) {
                nodes.push(n);
            }
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): install redis-tools"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes, dir };
        c.wait_ok(&[]);
        c.wait_replicated(3);
        c
    }

    /// Waits (bounded) until `masters` masters each have a replica in sync: before
    /// that, a message to be acknowledged by a replica is refused.
    pub fn wait_replicated(&self, masters: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = (0..self.nodes.len())
                .filter(|&i| {
                    query(self.nodes[i].port, "INFO replication")
                        .is_some_and(|r| r.contains("role:master") && r.contains("state=online"))
                })
                .count();
            if synced >= masters {
                return;
            }
            assert!(Instant::now() < deadline, "the replicas never caught up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn args(dir: &std::path::Path, port: u16) -> Vec<String> {
        let conf = dir.join(format!("nodes-{port}.conf"));
        [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            conf.to_str().unwrap(),
            "--cluster-node-timeout",
            "1000",
            "--cluster-require-full-coverage",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Waits (bounded) until every node but `dead` says the cluster is ok and sees
    /// all 16384 slots served by masters that are not failed.
    pub fn wait_ok(&self, dead: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = (0..self.nodes.len())
                .filter(|i| !dead.contains(i))
                .all(|i| {
                    let info = query(self.nodes[i].port, "CLUSTER INFO").unwrap_or_default();
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The seeds to give `--redis`: every node.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The index of the node that serves `room`'s slot now, as node `ask` sees it
    /// (none while the slot's master has failed and no replica has taken over).
    pub fn master_of(&self, room: &str, ask: usize) -> Option<usize> {
        let slot = query(
            self.nodes[ask].port,
            &format!("CLUSTER KEYSLOT mc:room:{{{room}}}:seq"),
        )
        .and_then(|s| s.trim_start_matches(':').parse::<u32>().ok())
        .expect("CLUSTER KEYSLOT");
        let nodes = query(self.nodes[ask].port, "CLUSTER NODES").expect("CLUSTER NODES");
        for line in nodes.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u32>().is_ok_and(|a| a <= slot)
                        && b.parse::<u32>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<u32>() == Ok(slot),
            });
            if serves {
                let port: u16 = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// How many times node `i` ran `command` (lower case, as `INFO commandstats`
    /// names it: `wait`, `cluster|myid`).
    pub fn calls(&self, i: usize, command: &str) -> u64 {
        self.nodes[i].calls(command)
    }

    /// The index of a replica of master `i`.
    pub fn replica_of(&self, i: usize) -> usize {
        let nodes = query(self.nodes[i].port, "CLUSTER NODES").expect("CLUSTER NODES");
        let id = nodes
            .lines()
            .find(|l| l.contains("myself"))
            .and_then(|l| l.split(' ').next())
            .expect("its own id")
            .to_string();
        for line in nodes.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() > 3 && f[2].contains("slave") && f[3] == id {
                let port: u16 = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("node {i} has no replica");
    }

    /// Freezes node `i` (SIGSTOP), as when a host stalls.
    pub fn pause(&self, i: usize) {
        self.nodes[i].pause();
    }

    /// Thaws node `i` (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.nodes[i].resume();
    }

    /// Kills node `i` (SIGKILL), as when a host dies.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its port with its cluster state: a master that was
    /// failed over comes back as its successor's replica.
    pub fn restart(&mut self, i: usize) {
        let port = self.nodes[i].port;
        self.nodes[i] = RedisServer::start_with(port, &Self::args(&self.dir, port))
            .unwrap_or_else(|| panic!("redis-server could not start again on {port}"));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cluster_ports_salt() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// A free loopback port whose cluster bus port (+10000) is free too.
fn bus_free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl Drop for RedisServer {
    /// SIGKILL ends it even when paused.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
