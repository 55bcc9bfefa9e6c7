//! The `multiclient` command: argument parsing, and nothing else.

/// The binary's allocator with `--features jemalloc`. tokio allocates every task and
/// every socket registration 128-byte aligned; glibc's malloc leaves about 150 bytes of
/// unusable fragments around each such allocation, jemalloc none (its size classes come
/// aligned): an idle async connection takes 0.70 KiB instead of glibc's 1.01 (the
/// default allocator below now gets the same 0.70 from glibc). But jemalloc's
/// per-thread caches double the memory of a thread-per-connection client (13.6 to
/// 27.6 KiB), hence not the default (bench/results/async-memory-cpu.md).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The binary's default allocator: glibc's, with small over-aligned blocks (tokio's
/// task cells and socket registrations) cut from slabs, so they cost their size and
/// not glibc's `memalign` fragments around them ([`multiclient::base::aligned`]).
#[cfg(not(all(feature = "jemalloc", not(target_env = "msvc"))))]
#[global_allocator]
static ALLOC: multiclient::base::aligned::Aligned = multiclient::base::aligned::Aligned::new();

use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use multiclient::connect::{self, ConnectOptions};
use multiclient::logging::{self, LogFormat};
use multiclient::model::{Limits, Model};
use multiclient::serve::config::{self, parse_duration, Settings};
use multiclient::serve::{self, ServeOptions};
use multiclient::serve::{ServiceName, ServiceOptions, TCP_SERVICES};
use multiclient::service::http::HttpOptions;
use multiclient::service::ws::WsOptions;

#[derive(Parser)]
#[command(
    name = "multiclient",
    version,
    about = "Serve many network clients at the same time"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the `serve` flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run services (default: ack, greet, hello, http, ws and chat on 127.0.0.1, async
    /// model; chat, and its page on http's port, under every model but single).
    Serve(ServeArgs),
    /// Talk to a service from the terminal.
    Connect(ConnectArgs),
    /// Load-test a server, or compare every model (`bench compare`).
    #[cfg(feature = "bench")]
    Bench(multiclient::bench::BenchArgs),
    /// Check a `serve` config file: every error with its line, exit status 1 if any.
    CheckConfig {
        /// The file (`-` for standard input).
        file: PathBuf,
    },
    /// Print a config file with every `serve` setting, its help and its default.
    ConfigExample,
    /// Print a shell completion script (`multiclient completions bash > ~/.local/share/bash-completion/completions/multiclient`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `multiclient man | man -l -`.
    Man,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelName {
    Single,
    Threads,
    Pool,
    Async,
}

#[derive(Args)]
struct ServeArgs {
    /// A service to run, optionally with its address: `ack` or `ack=127.0.0.1:9999`;
    /// `,tls` at the end serves it over TLS (`http=127.0.0.1:8443,tls`); `,proxy`
    /// expects a PROXY header (v1 or v2) first on every connection, from a proxy such
    /// as HAProxy, and takes the client's address from it (`,proxy,tls`: TLS after the
    /// header).
    /// Repeatable. Default: every service (ack, greet, hello, http, ws, chat; chat not
    /// under `--model single`) on its default port. Reloaded by SIGHUP: a line added
    /// starts a listener, a line removed stops one (its connections carry on).
    #[arg(long = "service", value_name = "NAME[=ADDR][,tls][,proxy]")]
    services: Vec<String>,
    /// TLS: the certificate chain (PEM, the server's certificate first), for the
    /// `,tls` listeners. The file is read again on SIGHUP (new handshakes get the new
    /// pair); another path needs a restart.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// TLS: the private key (PEM: PKCS#8, RSA or EC); read again on SIGHUP with the
    /// certificate.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Concurrency model.
    #[arg(long, value_enum, default_value = "async")]
    model: ModelName,
    /// Address to listen on, with a single service. Reloaded by SIGHUP (a new address
    /// is a new listener; the old one stops accepting).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Worker threads: pool size (default 10) or async runtime threads (default: cores);
    /// single and threads have none to set.
    #[arg(long)]
    workers: Option<usize>,
    /// Connections served at once per listener (under pool: running plus queued); the
    /// next client is told it is busy. Reloaded by SIGHUP, for the next accept.
    #[arg(long, default_value_t = Limits::default().max_conns)]
    max_conns: usize,
    /// Connections one client address may have open at once, every service together;
    /// the next is told why in its protocol (`ERR too many connections from your
    /// address`, HTTP 503, WebSocket close 1013). 0 (the default) is no limit: load
    /// tests and clients behind one NAT come from one address. On a `,proxy` listener
    /// the address is the PROXY header's. Reloaded by SIGHUP (0 to N too) when the
    /// server runs with `--config`: the connections open count against the new limit.
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_conns_per_ip: usize,
    /// Close a connection silent for this long (`300`, `300s`, `500ms`, `5m`); a chat
    /// member in a room is kept. Reloaded by SIGHUP, for connections accepted after it.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// How long connections get to finish once the server stops: on SIGINT/SIGTERM
    /// every client is answered and told goodbye, and those still open this long after
    /// are cut off; after a SIGUSR2 upgrade the old process first serves its open
    /// clients this long, then does the same. Reloaded by SIGHUP, for a stop that
    /// starts after it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
    /// Drop a client whose replies make no progress for this long. Reloaded by SIGHUP,
    /// for connections accepted after it.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    write_timeout: Duration,
    /// http/ws: a request head must be complete this long after its first byte (408).
    /// TLS listeners: a client must complete its handshake this long after connecting;
    /// `,proxy` listeners: its PROXY header. Reloaded by SIGHUP for the http/ws
    /// connections accepted after it (a listener keeps its handshake and header bound).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// http: a request body must be complete this long after its head (408). Reloaded
    /// by SIGHUP, for connections accepted after it.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// http: largest request body in bytes (413). Reloaded by SIGHUP, for connections
    /// accepted after it.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// ws: answer every message with exactly itself (for conformance suites). A change
    /// needs a restart.
    #[arg(long)]
    echo: bool,
    /// ws: largest message in bytes (close 1009). Reloaded by SIGHUP, for connections
    /// accepted after it.
    #[arg(long, default_value_t = 1 << 20)]
    max_message: usize,
    /// Bytes buffered for clients across the whole server (unconsumed input, WebSocket
    /// messages being assembled, HTTP bodies being read); a client whose buffer would
    /// pass it is told the server is busy (`ERR server busy`, WebSocket close 1013,
    /// HTTP 503) and closed. Reloaded by SIGHUP, for every buffer that grows after it.
    #[arg(long, default_value_t = Limits::default().max_buffered)]
    max_buffered: usize,
    /// Bytes of events queued for one client before it is dropped as a slow consumer
    /// (chat: `ERR slow-consumer`). Reloaded by SIGHUP, for connections accepted after
    /// it.
    #[arg(long, default_value_t = Limits::default().max_queue)]
    max_queue: usize,
    /// Events (chat messages) to a client written to by events less than this long
    /// ago wait until this long after that write, so one write carries many of them
    /// (`0` writes each event at once). Reloaded by SIGHUP, for connections accepted
    /// after it.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    coalesce: Duration,
    /// Chat: messages kept per room for HISTORY and JOIN ... AFTER.
    #[arg(long, default_value_t = multiclient::hub::DEFAULT_HISTORY)]
    history: usize,
    /// Chat: bytes of history kept by all rooms together; past it the oldest messages
    /// of any room are dropped first.
    #[arg(long, default_value_t = multiclient::hub::DEFAULT_HISTORY_BYTES)]
    history_bytes: usize,
    /// Chat: most rooms one connection may be in; a JOIN beyond gets
    /// `ERR too-many-rooms`.
    #[arg(long, default_value_t = multiclient::hub::DEFAULT_MAX_ROOMS_PER_CONN)]
    max_rooms_per_conn: usize,
    /// Chat: longest command line in bytes; longer ones get `ERR line-too-long`.
    #[arg(long, default_value_t = multiclient::service::chat::DEFAULT_MAX_LINE)]
    max_line: usize,
    /// Chat: commands per second per connection, beyond which `ERR rate-limited`
    /// (default: unlimited).
    #[arg(long)]
    max_rate: Option<u32>,
    /// Chat: a Redis URL (`redis://127.0.0.1:6379`); every process given the same one
    /// is one chat. A Redis Cluster: `redis+cluster://host:port` or several
    /// comma-separated URLs (`?wait=N`: replicas that must have a message).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Chat with Redis: how long the members of a process that stopped (even killed)
    /// stay listed before they part everywhere.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    presence_ttl: Duration,
    /// Chat: JOIN and PART lines are sent only in rooms of at most this many members
    /// (counting the one joining or leaving); in a larger room only `WHO` tells who is
    /// there, since each join would be a line to every member. Give every instance
    /// sharing a Redis the same value.
    #[arg(long, default_value_t = multiclient::hub::DEFAULT_PRESENCE_LIMIT)]
    presence_limit: usize,
    /// http: the key backends present (`Authorization: Bearer <key>`) to post
    /// notifications to `/rooms/<room>/messages`; without one that endpoint is 404.
    /// Prefer the environment variable: arguments are visible to other local users.
    /// Reloaded by SIGHUP, for the next request (never logged).
    #[arg(
        long,
        env = "MULTICLIENT_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    api_key: Option<String>,
    /// Chat: require a JSON Web Token signed with this HS256 secret (`AUTH <token>`;
    /// its `sub` is the nick). Prefer the environment variable: arguments are visible
    /// to other local users. Reloaded by SIGHUP, for chat connections opened after it
    /// (never logged).
    #[arg(
        long,
        env = "MULTICLIENT_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        conflicts_with = "jwt_public_key"
    )]
    jwt_secret: Option<String>,
    /// Chat: require a JSON Web Token signed by the private half of this public key
    /// (a PEM file: RSA for RS256, EC P-256 for ES256). Reloaded by SIGHUP (the file
    /// is read again), for chat connections opened after it.
    #[arg(long, value_name = "PEM")]
    jwt_public_key: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "pretty")]
    log_format: LogFormat,
    /// More logs (-v: every message received). Reloaded by SIGHUP, unless `RUST_LOG`
    /// sets the filter.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Fewer logs (-q: warnings only). Reloaded by SIGHUP, unless `RUST_LOG` sets the
    /// filter.
    #[arg(short, long, action = clap::ArgAction::Count)]
    quiet: u8,
    /// A TOML file of settings: every flag above without its dashes
    /// (`max-conns = 100`, `service = ["ack", "http=127.0.0.1:8080"]`). Environment
    /// variables `MULTICLIENT_<FLAG>` override it, flags override both. SIGHUP reads it
    /// again and applies the settings whose help says "Reloaded by SIGHUP"; a change to
    /// any other is logged as needing a restart and not applied.
    #[arg(long, value_name = "FILE", env = "MULTICLIENT_CONFIG")]
    config: Option<PathBuf>,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`, `/stats`, `/dashboard`):
    /// an address, or `off`. Default 127.0.0.1:9180, skipped with a warning if taken.
    #[arg(long, value_name = "ADDR|off")]
    admin: Option<serve::AdminAddr>,
    /// Worker processes: above 1, a supervisor runs N copies of this server on shared
    /// `SO_REUSEPORT` sockets, each with its own descriptor limit and admin port
    /// (admin port + i), and restarts one that dies. A chat needs --redis.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    processes: u16,
}

#[derive(Args)]
struct ConnectArgs {
    /// The service to talk to.
    #[arg(value_enum)]
    service: ServiceName,
    /// Its address (default: 127.0.0.1 and the service's port; 8080 for `chat --ws`).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// chat: speak the JSON wire on the http service's `/chat/ws` (type the line
    /// protocol's commands, `SAY lobby hi`, or JSON objects).
    #[arg(long)]
    ws: bool,
    /// A message to send; repeatable. Each waits for the server's answer.
    #[arg(long = "send", value_name = "TEXT")]
    send: Vec<String>,
    /// Rounds of the messages (for greet: answers to the greeting).
    #[arg(long)]
    count: Option<u64>,
    /// Pause between messages, in milliseconds.
    #[arg(long, default_value_t = 0)]
    interval: u64,
    /// Speak TLS; the server's certificate must name the address's IP.
    #[arg(long)]
    tls: bool,
    /// With --tls: trust the CA certificates in this PEM file instead of the system's.
    #[arg(long, value_name = "PATH", requires = "tls")]
    ca: Option<std::path::PathBuf>,
    /// chat: a token (JWT) for a server run with --jwt-secret or --jwt-public-key,
    /// sent as `AUTH <token>` first.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MULTICLIENT_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

/// The `serve` command as clap describes it: the source of the config file's keys.
fn serve_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("serve"))
}

/// Reads a config file (`-`: standard input) against the `serve` settings.
fn read_config(cmd: &clap::Command, path: &Path) -> anyhow::Result<Settings> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    Ok(config::parse_file(cmd, &path.display().to_string(), &text)?)
}

/// The `serve` arguments as given on the command line (`own`, the words after
/// `serve`), over the environment, over the config file, over the defaults; with
/// every setting's value by key (what a reload compares).
fn layered_serve_args(own: &[OsString]) -> anyhow::Result<(ServeArgs, SettingValues)> {
    let cmd = serve_command();
    let matches = cmd.clone().no_binary_name(true).try_get_matches_from(own)?;
    let file = match matches.get_one::<PathBuf>("config") {
        Some(path) => read_config(&cmd, path)?,
        None => Settings::default(),
    };
    let env = config::parse_env(&cmd, |name| {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    })?;
    let mut tokens = config::layered(&cmd, &matches, &[&env, &file]);
    tokens.extend(own.iter().cloned());
    let matches = cmd
        .clone()
        .no_binary_name(true)
        .try_get_matches_from(tokens)?;
    let settings = config::effective(&cmd, &matches);
    Ok((ServeArgs::from_arg_matches(&matches)?, settings))
}

/// Every setting's value as text, by key.
type SettingValues = std::collections::BTreeMap<String, String>;

/// The config as `serve` reads it, at start and at each SIGHUP.
fn load_serve(own: &[OsString]) -> anyhow::Result<serve::reload::Loaded> {
    let (a, settings) = layered_serve_args(own)?;
    loaded(&a, settings)
}

/// The options of `a`, with its settings' values.
fn loaded(a: &ServeArgs, settings: SettingValues) -> anyhow::Result<serve::reload::Loaded> {
    Ok(serve::reload::Loaded {
        opts: serve_options(a)?,
        settings,
        verbosity: a.verbose as i8 - a.quiet as i8,
    })
}

/// `check-config`: the file's own errors, each with its line, then what only the
/// settings together can tell (`addr` with several services).
fn check_config(path: &Path) -> anyhow::Result<()> {
    let cmd = serve_command();
    let file = read_config(&cmd, path)?;
    let nothing = cmd
        .clone()
        .no_binary_name(true)
        .try_get_matches_from([""; 0])?;
    let tokens = config::layered(&cmd, &nothing, &[&file]);
    let matches = cmd.no_binary_name(true).try_get_matches_from(tokens)?;
    serve_options(&ServeArgs::from_arg_matches(&matches)?)
        .with_context(|| format!("{}", path.display()))?;
    println!("{}: ok", path.display());
    Ok(())
}

fn serve_options(a: &ServeArgs) -> anyhow::Result<ServeOptions> {
    let mut services = Vec::new();
    let mut tls_services = Vec::new();
    let mut proxy_services = Vec::new();
    for spec in &a.services {
        let (spec, tls, proxy) = listener_marks(spec)?;
        if proxy {
            let Some((name, addr)) = spec.split_once('=') else {
                bail!("--service {spec},proxy: give the listener its address (NAME=ADDR,proxy)")
            };
            let name = ServiceName::from_str(name, true)
                .map_err(|e| anyhow::anyhow!("--service {name}: {e}"))?;
            proxy_services.push((name, addr.parse::<SocketAddr>()?, tls));
            continue;
        }
        if tls {
            let (name, addr) = match spec.split_once('=') {
                Some((n, addr)) => (n, addr.parse::<SocketAddr>()?),
                None => {
                    bail!("--service {spec},tls: give the TLS listener its address (NAME=ADDR,tls)")
                }
            };
            let name = ServiceName::from_str(name, true)
                .map_err(|e| anyhow::anyhow!("--service {name}: {e}"))?;
            tls_services.push((name, addr));
            continue;
        }
        let (name, addr) = match spec.split_once('=') {
            Some((n, addr)) => (n, Some(addr.parse::<SocketAddr>()?)),
            None => (spec, None),
        };
        let name = ServiceName::from_str(name, true)
            .map_err(|e| anyhow::anyhow!("--service {name}: {e}"))?;
        services.push((name, addr));
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = match a.model {
        ModelName::Single => Model::Single,
        ModelName::Threads => Model::Threads,
        ModelName::Pool => Model::Pool {
            workers: a.workers.unwrap_or(10),
        },
        ModelName::Async => Model::Async {
            workers: a.workers.unwrap_or(cores),
        },
    };
    if services.is_empty() && tls_services.is_empty() && proxy_services.is_empty() {
        services = TCP_SERVICES
            .iter()
            .filter(|s| s.runs_under(model))
            .map(|&s| (s, None))
            .collect();
    }
    if a.addr.is_some() && services.len() != 1 {
        bail!("--addr needs exactly one --service (or use --service NAME=ADDR)");
    }
    let services = services
        .into_iter()
        .map(|(name, addr)| (name, addr.or(a.addr).unwrap_or_else(|| name.default_addr())))
        .collect();
    let limits = Limits {
        max_conns: a.max_conns,
        idle_timeout: a.idle_timeout,
        shutdown_timeout: a.shutdown_timeout,
        write_timeout: a.write_timeout,
        max_queue: a.max_queue,
        coalesce: a.coalesce,
        max_buffered: a.max_buffered,
        max_conns_per_ip: a.max_conns_per_ip,
        ..Limits::default()
    };
    let service = ServiceOptions {
        chat: Default::default(),
        web: multiclient::service::chat::web::WebOptions {
            api_key: a
                .api_key
                .as_deref()
                .and_then(multiclient::service::chat::web::ApiKey::new),
        }
        .into(),
        http: HttpOptions {
            header_timeout: a.header_timeout,
            body_timeout: a.body_timeout,
            max_body: a.max_body,
            ws: std::sync::Arc::new(WsOptions {
                echo: a.echo,
                max_message: a.max_message,
                ..WsOptions::default()
            }),
        }
        .into(),
    };
    let mut service = service;
    service.chat.history = a.history;
    service.chat.history_bytes = a.history_bytes;
    service.chat.max_rooms_per_conn = a.max_rooms_per_conn;
    service.chat.max_line = a.max_line;
    service.chat.max_rate = a.max_rate;
    service.chat.redis = a.redis.clone();
    service.chat.presence_ttl = a.presence_ttl;
    service.chat.presence_limit = a.presence_limit;
    service.chat.auth = multiclient::service::chat::auth::AuthHandle::from_options(
        a.jwt_secret.as_deref(),
        a.jwt_public_key.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(serve::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    if tls.is_some() && tls_services.is_empty() && !proxy_services.iter().any(|p| p.2) {
        bail!("--tls-cert is set but no listener ends in `,tls` (--service NAME=ADDR,tls)");
    }
    Ok(ServeOptions {
        services,
        model,
        limits,
        service,
        tls_services,
        proxy_services,
        tls,
        tls_handshake_timeout: a.header_timeout,
        admin: a.admin.unwrap_or_default(),
    })
}

/// Splits the `,tls` and `,proxy` marks (in either order) off a `--service` value.
fn listener_marks(spec: &str) -> anyhow::Result<(&str, bool, bool)> {
    let (mut spec, mut tls, mut proxy) = (spec, false, false);
    loop {
        if let Some(rest) = spec.strip_suffix(",tls") {
            (spec, tls) = (rest, true);
        } else if let Some(rest) = spec.strip_suffix(",proxy") {
            (spec, proxy) = (rest, true);
        } else if let Some((_, mark)) = spec.rsplit_once(',') {
            bail!("--service {spec}: unknown mark `{mark}` (`,tls` or `,proxy`)");
        } else {
            return Ok((spec, tls, proxy));
        }
    }
}

/// Writes a generated text (completions, the man page, the example config) to stdout.
/// A reader that stops early (`multiclient man | head`) closes the pipe: that ends the
/// output, as it does for any Unix filter, and is not an error. (`print!` would panic
/// there, since Rust ignores SIGPIPE and the write fails with `EPIPE`.)
fn print_out(text: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::parse_from(&argv);
    match cli.command {
        Command::Serve(_) => {
            // `serve` is always the first word: the command has no global options.
            let own = argv.get(2..).unwrap_or_default().to_vec();
            let (a, settings) = layered_serve_args(&own)?;
            logging::init(a.log_format, a.verbose as i8 - a.quiet as i8);
            let first = loaded(&a, settings)?;
            let source = serve::reload::Source {
                load: Box::new(move || load_serve(&own)),
                settings: first.settings,
                from_file: a.config.is_some(),
            };
            let mut opts = first.opts;
            let code = match serve::workers::worker_index() {
                Some(i) => {
                    serve::workers::as_worker(&mut opts, i);
                    serve::run_reloading(&opts, Some(source))?
                }
                // The supervisor passes SIGHUP on: each worker reloads for itself.
                None if a.processes > 1 => serve::workers::supervise(&opts, a.processes.into())?,
                None => serve::run_reloading(&opts, Some(source))?,
            };
            std::process::exit(code);
        }
        Command::Connect(a) => {
            let default = if a.ws {
                ServiceName::Http.default_addr()
            } else {
                a.service.default_addr()
            };
            let opts = ConnectOptions {
                service: a.service,
                addr: a.addr.unwrap_or(default),
                ws: a.ws,
                send: a.send,
                count: a.count,
                interval: Duration::from_millis(a.interval),
                tls: a.tls.then(|| connect::ConnectTls { ca: a.ca.clone() }),
                token: a.token,
            };
            connect::run(&opts, &mut std::io::stdout())
        }
        #[cfg(feature = "bench")]
        Command::Bench(a) => multiclient::bench::run(a),
        Command::CheckConfig { file } => check_config(&file),
        Command::ConfigExample => print_out(config::example(&serve_command()).as_bytes()),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "multiclient", &mut out);
            print_out(&out)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            print_out(&out)
        }
    }
}
