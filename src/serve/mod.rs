//! `multiclient serve`: run services under one model until SIGINT or SIGTERM.
//!
//! The first signal starts a graceful shutdown (stop accepting, answer what was read,
//! say goodbye, exit 0 within the shutdown timeout); a second one exits at once.
//! SIGHUP reloads the config ([`reload`]). SIGUSR2 hands the listening sockets over to
//! a new process and drains this one ([`upgrade`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::base::per_ip::PerIp;
use crate::model::{Limits, Listening, Model, Server};
pub mod admin;
pub mod config;
pub mod metrics;
mod registry;
pub mod reload;
pub(crate) mod sigmask;
pub mod tls;
pub mod upgrade;
pub mod workers;

pub use registry::{Front, ServiceName, ServiceOptions, TCP_SERVICES};

/// Exit status after a second signal cut the graceful shutdown short.
pub const EXIT_INTERRUPTED: i32 = 130;

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Services with their addresses.
    pub services: Vec<(ServiceName, SocketAddr)>,
    /// The concurrency model.
    pub model: Model,
    /// The limits shared by every listener.
    pub limits: Limits,
    /// Per-service options.
    pub service: ServiceOptions,
    /// Services served over TLS (`--service NAME=ADDR,tls`), with their addresses.
    pub tls_services: Vec<(ServiceName, SocketAddr)>,
    /// Services behind a proxy that sends a PROXY header first (`--service
    /// NAME=ADDR,proxy`), with their addresses and whether TLS follows the header
    /// (`,proxy,tls`).
    pub proxy_services: Vec<(ServiceName, SocketAddr, bool)>,
    /// The certificate and key of the TLS listeners (`--tls-cert`, `--tls-key`).
    pub tls: Option<tls::TlsFiles>,
    /// How long a TLS client has to complete its handshake (`--header-timeout`).
    pub tls_handshake_timeout: std::time::Duration,
    /// Where the admin listener (metrics, health, dashboard) listens.
    pub admin: AdminAddr,
}

/// Where the admin listener listens (`--admin ADDR|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminAddr {
    /// [`admin::DEFAULT_ADDR`]; if that port is taken (a second server on the same
    /// machine) the server runs without it and says so.
    #[default]
    Default,
    /// This address; failing to bind it stops the server, like a service's.
    At(SocketAddr),
    /// No admin listener.
    Off,
}

impl std::str::FromStr for AdminAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<AdminAddr, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(AdminAddr::Off);
        }
        s.parse()
            .map(AdminAddr::At)
            .map_err(|e| format!("{s:?}: {e} (an address such as 127.0.0.1:9180, or off)"))
    }
}

/// Starts the admin listener over `server` and its `listening` services, as
/// `opts.admin` says. `None` when it is off, or when the default port is taken.
pub fn start_admin(
    opts: &ServeOptions,
    server: &Server,
    listening: &[Listening],
) -> anyhow::Result<Option<admin::AdminListener>> {
    start_admin_over(opts, server, metrics::Listeners::new(listening))
}

/// [`start_admin`] over `listeners`, which a reload adds to and removes from.
pub fn start_admin_over(
    opts: &ServeOptions,
    server: &Server,
    listeners: metrics::Listeners,
) -> anyhow::Result<Option<admin::AdminListener>> {
    let addr = match opts.admin {
        AdminAddr::Off => return Ok(None),
        AdminAddr::At(addr) => addr,
        AdminAddr::Default => admin::DEFAULT_ADDR.parse().expect("a valid address"),
    };
    let chat = opts.services.iter().any(|&(name, _)| {
        name == ServiceName::Chat
            || (name == ServiceName::Http && ServiceName::Chat.runs_under(opts.model))
    });
    let sources = metrics::Sources {
        model: opts.model.name(),
        listening: listeners,
        drain: server.drain(),
        budget: server.budget(),
        hub: if chat {
            opts.service.chat.hub().ok()
        } else {
            None
        },
        started: std::time::Instant::now(),
        rss_at_start: metrics::rss_bytes(),
    };
    match admin::start(addr, sources) {
        Ok(a) => {
            tracing::info!(
                "Admin on http://{}/ (/metrics, /healthz, /readyz, /stats, /dashboard)",
                a.addr
            );
            Ok(Some(a))
        }
        Err(e) if opts.admin == AdminAddr::Default => {
            tracing::warn!(
                "No admin listener: {addr}: {e} (choose another with --admin ADDR, or --admin off)"
            );
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("admin: cannot listen on {addr}")),
    }
}

/// Starts every listener; nothing is served if one fails to bind.
pub fn start(opts: &ServeOptions) -> anyhow::Result<(Server, Vec<Listening>)> {
    let (server, listening, _) = start_tls(opts)?;
    Ok((server, listening))
}

/// [`start`], also returning the certificate store of the TLS listeners (there is one
/// when `opts.tls` is set), which SIGHUP reloads.
pub fn start_tls(
    opts: &ServeOptions,
) -> anyhow::Result<(Server, Vec<Listening>, Option<Arc<tls::CertStore>>)> {
    start_counted(opts, per_ip_table(opts.limits.max_conns_per_ip, false))
}

/// The count of connections per client address that every listener of a server
/// shares: a table when `--max-conns-per-ip` is set, or when a reload may set it later
/// (`reloadable`), since the limit must then hold against the connections already
/// open. `None` otherwise: a server that can never have the limit does not pay for
/// the count (a lock per connection, a wrapper around every session).
fn per_ip_table(limit: usize, reloadable: bool) -> Option<Arc<PerIp>> {
    (limit > 0 || reloadable).then(|| PerIp::new(limit))
}

/// [`start_tls`], every listener counting its clients in `per_ip` when there is one.
fn start_counted(
    opts: &ServeOptions,
    per_ip: Option<Arc<PerIp>>,
) -> anyhow::Result<(Server, Vec<Listening>, Option<Arc<tls::CertStore>>)> {
    let store = match &opts.tls {
        Some(files) => Some(tls::CertStore::load(files.clone()).context("loading TLS")?),
        None if !opts.tls_services.is_empty() || opts.proxy_services.iter().any(|p| p.2) => {
            anyhow::bail!("a `,tls` listener needs --tls-cert and --tls-key")
        }
        None => None,
    };
    let tls_listen = store.as_ref().map(|store| tls::TlsListen {
        store: store.clone(),
        handshake_timeout: opts.tls_handshake_timeout,
    });
    let mut server = Server::new(opts.model, opts.limits.clone()).context("starting the server")?;
    let front = Front {
        proxy: None,
        per_ip,
    };
    let mut listening = Vec::new();
    for &(name, addr) in &opts.services {
        let l = name
            .listen_behind(&mut server, addr, &opts.service, None, &front)
            .with_context(|| format!("{name}: cannot listen on {addr}"))?;
        listening.push(l);
    }
    for &(name, addr) in &opts.tls_services {
        let l = name
            .listen_behind(
                &mut server,
                addr,
                &opts.service,
                tls_listen.as_ref(),
                &front,
            )
            .with_context(|| format!("{name} (tls): cannot listen on {addr}"))?;
        listening.push(l);
    }
    let proxied = Front {
        proxy: Some(opts.service.http.load().header_timeout),
        ..front
    };
    for &(name, addr, tls) in &opts.proxy_services {
        let tls = if tls { tls_listen.as_ref() } else { None };
        let l = name
            .listen_behind(&mut server, addr, &opts.service, tls, &proxied)
            .with_context(|| format!("{name} (proxy): cannot listen on {addr}"))?;
        listening.push(l);
    }
    Ok((server, listening, store))
}

/// Serves until a signal, then drains. Returns the process exit status. SIGHUP only
/// reads the TLS certificate again: [`run_reloading`] reloads the whole config.
pub fn run(opts: &ServeOptions) -> anyhow::Result<i32> {
    run_reloading(opts, None)
}

/// [`run`], with SIGHUP reading the config again from `source` and applying it.
pub fn run_reloading(opts: &ServeOptions, source: Option<reload::Source>) -> anyhow::Result<i32> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
    // Register before binding so a signal that arrives early is not the default
    // (immediate, unclean) exit.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2])
        .context("installing signal handlers")?;
    // A supervisor or an upgrade starts this process with them blocked.
    sigmask::unblock();
    let from_file = source.as_ref().is_some_and(|s| s.from_file);
    let per_ip = per_ip_table(opts.limits.max_conns_per_ip, from_file);
    let (server, listening, certs) = start_counted(opts, per_ip.clone())?;
    let listeners = metrics::Listeners::new(&listening);
    let _admin = start_admin_over(opts, &server, listeners.clone())?;
    let drain = server.drain();
    let server_drain = server.drain();
    let server = Arc::new(std::sync::Mutex::new(Some(server)));
    let mut reloader =
        reload::Reloader::new(opts, source, listeners, certs, per_ip, server.clone());
    upgrade::notify_ready();
    // The drain after an upgrade takes the shutdown timeout as last reloaded.
    let started_with = opts.limits.shutdown_timeout;
    let limits_of = server.clone();
    let upgrader = upgrade::Upgrader::new(drain.clone(), move || {
        let server = limits_of.lock().unwrap_or_else(|p| p.into_inner());
        server
            .as_ref()
            .map_or(started_with, |s| s.limits().shutdown_timeout)
    });
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    reloader.reload();
                    continue;
                }
                if sig == SIGUSR2 {
                    upgrader.start();
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        "Signal {sig}: shutting down gracefully (again to exit at once)"
                    );
                    drain.start();
                } else {
                    tracing::warn!("Second signal: exiting now");
                    std::process::exit(EXIT_INTERRUPTED);
                }
            }
        })?;
    server_drain.wait_started();
    let server = server.lock().unwrap_or_else(|p| p.into_inner()).take();
    let cut = server.expect("only this thread takes the server").wait();
    if cut > 0 {
        tracing::warn!("{cut} connections did not finish within the shutdown timeout");
    }
    Ok(0)
}
