//! The load tester: `multiclient bench <workload>` drives a server with many tokio
//! client connections and reports throughput, latency percentiles, errors by kind, its
//! own CPU and (with `--server-pid`) the server's CPU per operation and memory;
//! `bench compare` runs one workload against every model and any peer server and
//! prints the seeds' comparison table, measured.
//!
//! One file per concern: [`workload`] (what an operation is and the exact reply),
//! [`http`] (response framing), [`run`] (the driver), [`hold`] (idle connections),
//! [`report`] (histograms and summaries), [`proc`] (sampling /proc), [`compare`] and
//! `plot`, and [`chat`] (the chat fan-out workload, `bench chat`, in files of its own).
//!
//! Behind the default-on cargo feature `bench`: the server and the library build
//! without it (`cargo build --no-default-features`) and without its dependencies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

pub mod chat;
pub mod compare;
pub mod fanout;
pub mod hold;
pub mod http;
mod plot;
pub mod proc;
pub mod report;
pub mod run;
pub mod workload;

use fanout::{ChildLine, Share};
use hold::{HoldConfig, HoldReport, Probe};
use run::LoadConfig;
use workload::{TlsClient, Workload};

/// `multiclient bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to run.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The workloads and `compare`.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Round trips to the ack service: a message, an `ACK!`.
    Ack(LoadArgs),
    /// Round trips to the greet service: `HI! I am client.`, `Hi! I am server`.
    Greet(LoadArgs),
    /// Connections per second to the hello service: connect, send, read to EOF, close.
    Hello(LoadArgs),
    /// Keep-alive `GET`s to the http service (`--pipeline N` in flight per connection).
    Http(LoadArgs),
    /// WebSocket message round trips to the ws service.
    Ws(LoadArgs),
    /// Open `--conns` idle connections at `--ramp` per second and hold them.
    Hold(HoldArgs),
    /// Fan-out through the chat service: members in rooms, senders at a rate,
    /// every delivery checked.
    Chat(chat::ChatArgs),
    /// Every model (and `--peer` servers) under one workload at several concurrencies.
    Compare(compare::CompareArgs),
}

/// Options every workload shares: the tester's threads and what it reports.
#[derive(Args, Debug, Clone)]
pub struct TesterArgs {
    /// The server's PID: report its CPU per operation, RSS, threads and memory per
    /// connection (with its child processes summed: the workers of
    /// `serve --processes`).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Tester processes: past one process's descriptor limit, N copies of the tester
    /// each open their share of the connections from source addresses of their own
    /// (--src-ips each), and their figures are summed (every workload; chat copies
    /// run in step).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Tester threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of a load run.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// The server (default: 127.0.0.1 and the service's default port).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 10)]
    pub conns: usize,
    /// Run for this many seconds (default 10; with --requests, at most this long,
    /// default 60).
    #[arg(long)]
    pub secs: Option<f64>,
    /// Stop after this many operations.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Open loop at this many operations per second in total; latency is measured from
    /// each operation's intended send time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Message size in bytes (ack, hello, ws).
    #[arg(long, default_value_t = 16)]
    pub msg_size: usize,
    /// HTTP requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Path for http and ws.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// The body every http response must have.
    #[arg(long, default_value = "Hello from Multi-threaded Flask Server!")]
    pub expect_body: String,
    /// Spread connections over source addresses 127.0.0.1..=127.0.0.N (past the ~28k
    /// ephemeral ports of one source address).
    #[arg(long, default_value_t = 1)]
    pub src_ips: u8,
    /// Seconds one operation may take before it counts as a timeout; shorter than
    /// --secs (a longer one is halved to fit, with a warning).
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// A new connection for every operation: connect (and, with --tls, a full
    /// handshake), one request, close. Measures connections (handshakes) per second.
    #[arg(long)]
    pub new_conn: bool,
    /// TLS on every connection (`--tls`, `--ca`, `--server-name`).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The options every workload shares (`--server-pid`, `--threads`, `--json`).
    #[command(flatten)]
    pub tester: TesterArgs,
}

/// TLS options of a load run.
#[derive(Args, Debug, Clone)]
pub struct TlsArgs {
    /// Speak TLS (https, wss, a `,tls` listener); session resumption is off, so each
    /// new connection is a full handshake.
    #[arg(long)]
    pub tls: bool,
    /// PEM certificates to trust (default: the system's store).
    #[arg(long, requires = "tls")]
    pub ca: Option<PathBuf>,
    /// The name to check in the server's certificate (default: the address's IP).
    #[arg(long, requires = "tls")]
    pub server_name: Option<String>,
}

/// Options of `bench hold`.
#[derive(Args, Debug, Clone)]
pub struct HoldArgs {
    /// The server (default: 127.0.0.1:9999).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// The service, for the probe that proves each connection is served: `ack` sends
    /// one message, `greet` waits for the greeting, anything else only connects.
    #[arg(long, default_value = "ack")]
    pub service: String,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Connections opened per second.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,
    /// Seconds to hold them once all are open.
    #[arg(long, default_value_t = 2.0)]
    pub secs: f64,
    /// Seconds one connect and probe may take.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Spread connections over source addresses 127.0.0.1..=127.0.0.N.
    #[arg(long, default_value_t = 1)]
    pub src_ips: u8,
    /// The options every workload shares (`--server-pid`, `--threads`, `--json`).
    #[command(flatten)]
    pub tester: TesterArgs,
}

fn secs(v: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

impl LoadArgs {
    /// The run these options describe, for `workload`.
    pub fn config(&self, workload: Workload) -> anyhow::Result<LoadConfig> {
        let addr = self
            .addr
            .unwrap_or_else(|| ([127, 0, 0, 1], workload.default_port()).into());
        let duration = match (self.secs, self.requests) {
            (Some(s), _) => secs(s, "--secs")?,
            (None, Some(_)) => Duration::from_secs(60),
            (None, None) => Duration::from_secs(10),
        };
        let mut cfg = LoadConfig::new(workload.clone(), addr);
        cfg.conns = self.conns;
        cfg.duration = duration;
        cfg.requests = self.requests;
        cfg.rate = self.rate;
        cfg.msg_size = self.msg_size;
        cfg.src_ips = self.src_ips;
        let (timeout, warning) = run::fit_timeout(secs(self.timeout, "--timeout")?, duration);
        if let Some(w) = warning {
            eprintln!("{w}");
        }
        cfg.timeout = timeout;
        cfg.server_pid = self.tester.server_pid;
        cfg.threads = self.tester.threads.unwrap_or_else(run::default_threads);
        cfg.progress = !self.tester.json;
        cfg.new_conn = self.new_conn;
        if self.tls.tls {
            let alpn = matches!(workload, Workload::Http { .. } | Workload::Ws { .. })
                .then_some(b"http/1.1".as_slice());
            cfg.tls = Some(TlsClient::new(
                self.tls.ca.as_deref(),
                self.tls.server_name.as_deref(),
                addr,
                alpn,
            )?);
        }
        Ok(cfg)
    }
}

/// Runs `multiclient bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (a, workload) = match args.command {
        BenchCommand::Ack(a) => (a, Workload::Ack),
        BenchCommand::Greet(a) => (a, Workload::Greet),
        BenchCommand::Hello(a) => (a, Workload::Hello),
        BenchCommand::Http(a) => {
            let w = Workload::Http {
                pipeline: a.pipeline.max(1),
                path: a.path.clone(),
                body: a.expect_body.clone().into_bytes(),
            };
            (a, w)
        }
        BenchCommand::Ws(a) => {
            let w = Workload::Ws {
                path: a.path.clone(),
            };
            (a, w)
        }
        BenchCommand::Hold(h) => return hold(h),
        BenchCommand::Compare(c) => return compare::run(c),
        BenchCommand::Chat(c) => return chat::run(c),
    };
    let cfg = a.config(workload)?;
    let report = match (Share::from_env()?, a.tester.procs) {
        (Some(share), _) => return run::run_load_child(&cfg, share),
        (None, 1) => run::run_load(&cfg)?,
        (None, n) => run::run_load_fanout(&cfg, n)?,
    };
    if a.tester.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(())
}

fn hold(h: HoldArgs) -> anyhow::Result<()> {
    let probe = match h.service.as_str() {
        "ack" => Probe::Ack,
        "greet" => Probe::Greet,
        _ => Probe::None,
    };
    let cfg = HoldConfig {
        addr: h.addr.unwrap_or_else(|| ([127, 0, 0, 1], 9999).into()),
        conns: h.conns,
        ramp: h.ramp,
        hold: secs(h.secs, "--secs")?,
        timeout: secs(h.timeout, "--timeout")?,
        probe,
        src_ips: h.src_ips,
        src_first: 1,
        server_pid: h.tester.server_pid,
        threads: h.tester.threads.unwrap_or_else(run::default_threads),
        progress: !h.tester.json,
        gate: false,
    };
    let report = match (Share::from_env()?, h.tester.procs) {
        (Some(share), _) => {
            let report = hold::run_hold(&cfg.share(share))?;
            return fanout::emit(&ChildLine::<HoldReport>::Report {
                report,
                histogram: Vec::new(),
            });
        }
        (None, 1) => hold::run_hold(&cfg)?,
        (None, n) => hold::run_hold_fanout(&cfg, n)?,
    };
    if h.tester.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(())
}
