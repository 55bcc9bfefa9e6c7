//! SIGHUP: the config read again (the same `--config` file and environment, the
//! command line's flags still winning) and applied to the running server, nobody
//! dropped.
//!
//! What changes at run time ([`RELOADABLE`]):
//!
//! - the limits (`max-conns` at the next accept, `max-conns-per-ip` at the next
//!   connection, the connections open already counted against it; timeouts,
//!   `max-queue` and `coalesce` for the connections accepted after the reload, each
//!   connection keeping the ones it started with; `max-buffered` for every buffer
//!   that grows from then on; `shutdown-timeout` for a drain that starts later, the
//!   old process's after an upgrade included);
//! - the log level (`verbose`, `quiet`), unless `RUST_LOG` decides it;
//! - the notification key (`api-key`), asked for by the next request;
//! - the chat's token key (`jwt-secret`, or `jwt-public-key` read again from its
//!   file), for the chat connections opened after the reload: each connection keeps
//!   the key it was opened with;
//! - the HTTP and WebSocket limits (`header-timeout`, `body-timeout`, `max-body`,
//!   `max-message`), for the connections accepted after the reload;
//! - the TLS certificate and key, read again from their files;
//! - the listeners (`service`, `addr`, with their `,tls` and `,proxy` marks): one that
//!   appears starts accepting, in the admin listener's figures from then on; one that
//!   disappears stops accepting (the clients already in its backlog are still served),
//!   closes its socket, and its connections carry on until they end (its counts stay in
//!   the figures: a counter never goes back).
//!
//! Every other setting (the model, the workers, the chat's limits, the WebSocket `echo`,
//! the admin address, ...) is logged as needing a restart and left as it runs. A config
//! that does not read or validate is logged with its error and the running one kept.
//! What changed is logged in one line (`max-conns 1000 -> 10`); a secret's value never.
//!
//! A service's own setting is made reloadable by holding it in a
//! [`Live`](crate::base::Live) handle in [`ServiceOptions`](super::ServiceOptions),
//! read per connection or per request, and `set` in [`Reloader::apply_services`]: one
//! line there, and its key in [`RELOADABLE`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::base::per_ip::PerIp;
use crate::model::{Listening, Server};

use super::metrics::Listeners;
use super::tls::{CertStore, TlsListen};
use super::{Front, ServeOptions, ServiceName};

/// The settings a reload applies; a change to any other one needs a restart.
pub const RELOADABLE: &[&str] = &[
    "service",
    "addr",
    "max-conns",
    "max-conns-per-ip",
    "idle-timeout",
    "shutdown-timeout",
    "write-timeout",
    "max-queue",
    "coalesce",
    "max-buffered",
    "header-timeout",
    "body-timeout",
    "max-body",
    "max-message",
    "verbose",
    "quiet",
    "api-key",
    "jwt-secret",
    "jwt-public-key",
];

/// Settings whose values are never logged, only that they changed.
const SECRET: &[&str] = &["api-key", "jwt-secret"];

/// The config as read once: the options to run, and every setting's value as text
/// (by key, as [`super::config::effective`] gives them) to tell what a reload changed.
pub struct Loaded {
    /// The options.
    pub opts: ServeOptions,
    /// Every setting's value, by key.
    pub settings: BTreeMap<String, String>,
    /// `-v` count minus `-q` count: the log level.
    pub verbosity: i8,
}

/// Reads the config again, as at start (file, environment, then the command line).
pub type Loader = Box<dyn FnMut() -> anyhow::Result<Loaded> + Send>;

/// Where a reload reads the config from, and what it read at start.
pub struct Source {
    /// Reads it again.
    pub load: Loader,
    /// The settings the server started with.
    pub settings: BTreeMap<String, String>,
    /// Whether the config comes from a file (`--config`). Without one a reload reads
    /// the same environment and command line again, so no setting can change (only
    /// the files they name: the TLS pair, the chat's public key), and the server does
    /// not count connections per address for a `max-conns-per-ip` that cannot come.
    pub from_file: bool,
}

/// A listener as configured: its service, its address as written (port 0 stays 0, so
/// an unchanged line is the same listener), and its marks: a PROXY header first, TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    name: ServiceName,
    addr: SocketAddr,
    proxy: bool,
    tls: bool,
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.addr)?;
        if self.proxy {
            f.write_str(",proxy")?;
        }
        if self.tls {
            f.write_str(",tls")?;
        }
        Ok(())
    }
}

/// The listeners of `opts`, in the order [`super::start_tls`] starts them.
fn specs(opts: &ServeOptions) -> Vec<Spec> {
    let plain = opts.services.iter().map(|&(name, addr)| Spec {
        name,
        addr,
        proxy: false,
        tls: false,
    });
    let tls = opts.tls_services.iter().map(|&(name, addr)| Spec {
        name,
        addr,
        proxy: false,
        tls: true,
    });
    let proxied = opts.proxy_services.iter().map(|&(name, addr, tls)| Spec {
        name,
        addr,
        proxy: true,
        tls,
    });
    plain.chain(tls).chain(proxied).collect()
}

/// The server, shared between the thread that waits for its end and the one that
/// reloads it; `None` once the drain has started and the waiting thread took it.
pub type SharedServer = Arc<Mutex<Option<Server>>>;

/// Applies SIGHUP to a running server (see the module documentation).
pub struct Reloader {
    source: Option<Source>,
    /// The options the server runs with: the service options (with the chat's hub)
    /// new listeners share, and the TLS handshake bound.
    running: ServeOptions,
    /// The settings in force: a reloadable one as last applied, one that needs a
    /// restart as the server started with it.
    settings: BTreeMap<String, String>,
    /// Each listener running, with its bound address.
    listeners: Vec<(Spec, SocketAddr)>,
    /// The listeners the admin listener reads its figures from.
    figures: Listeners,
    certs: Option<Arc<CertStore>>,
    /// The per-address count every listener shares, when the server keeps one.
    per_ip: Option<Arc<PerIp>>,
    server: SharedServer,
}

impl Reloader {
    /// A reloader of `server`, started from `opts` with `listening` (in the order
    /// [`super::start_tls`] returns them; the admin listener's figures read them, and
    /// the ones the reloads add), and the per-address count `per_ip` its listeners
    /// share (without one, `max-conns-per-ip` needs a restart). Without a `source` a
    /// reload only reads the TLS certificate again.
    pub fn new(
        opts: &ServeOptions,
        source: Option<Source>,
        listening: Listeners,
        certs: Option<Arc<CertStore>>,
        per_ip: Option<Arc<PerIp>>,
        server: SharedServer,
    ) -> Reloader {
        let listeners = specs(opts)
            .into_iter()
            .zip(listening.accepting().iter().map(|l| l.addr))
            .collect();
        let settings = source
            .as_ref()
            .map(|s| s.settings.clone())
            .unwrap_or_default();
        Reloader {
            source,
            running: opts.clone(),
            settings,
            listeners,
            figures: listening,
            certs,
            per_ip,
            server,
        }
    }

    /// SIGHUP: reads the config and applies it, logging what changed, what needs a
    /// restart, and any error.
    pub fn reload(&mut self) {
        self.reload_certificate();
        let Some(source) = &mut self.source else {
            if self.certs.is_none() {
                tracing::info!("SIGHUP: nothing to reload (no config source, no TLS)");
            }
            return;
        };
        let new = match (source.load)() {
            Ok(new) => new,
            Err(e) => {
                tracing::error!("SIGHUP: config not reloaded, keeping the running one: {e:#}");
                return;
            }
        };
        let shared = self.server.clone();
        let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
        let Some(server) = guard.as_mut() else {
            tracing::info!("SIGHUP: shutting down; config not reloaded");
            return;
        };
        let mut changed = Vec::new();
        for (key, value) in &new.settings {
            let old = self.settings.get(key).map_or("none", String::as_str);
            if old == value {
                continue;
            }
            let shown = if SECRET.contains(&key.as_str()) {
                format!("{key} changed")
            } else {
                format!("{key} {old} -> {value}")
            };
            let reloadable = RELOADABLE.contains(&key.as_str())
                && (key != "max-conns-per-ip" || self.per_ip.is_some());
            if reloadable {
                changed.push(shown);
                self.settings.insert(key.clone(), value.clone());
            } else {
                tracing::warn!("SIGHUP: {shown} needs a restart; keeping {old}");
            }
        }
        server.set_limits(new.opts.limits.clone());
        if let Some(table) = &self.per_ip {
            table.set_limit(new.opts.limits.max_conns_per_ip);
        }
        self.apply_services(&new.opts);
        let level_changed = changed
            .iter()
            .any(|c| c.starts_with("verbose ") || c.starts_with("quiet "));
        match crate::logging::set_verbosity(new.verbosity) {
            Ok(false) if level_changed => {
                tracing::warn!(
                    "SIGHUP: RUST_LOG decides the log level; verbose and quiet not applied"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::error!("SIGHUP: log level not changed: {e}"),
        }
        self.apply_listeners(server, &new.opts);
        if changed.is_empty() {
            tracing::info!("SIGHUP: config reloaded, nothing changed");
        } else {
            tracing::info!("SIGHUP: config reloaded: {}", changed.join(", "));
        }
    }

    /// Swaps the services' reloadable settings for the ones of `new`.
    fn apply_services(&self, new: &ServeOptions) {
        let web = &self.running.service.web;
        web.set((*new.service.web.get()).clone());
        // `echo` is part of a listener's routes, built once: it needs a restart.
        let http = &self.running.service.http;
        let mut fresh = (*new.service.http.get()).clone();
        let mut ws = (*fresh.ws).clone();
        ws.echo = http.load().ws.echo;
        fresh.ws = Arc::new(ws);
        http.set(fresh);
        // The key file is read again at every reload, so a key rotated in place at the
        // same path is taken too.
        self.running
            .service
            .chat
            .auth
            .set_shared(new.service.chat.auth.get());
    }

    /// Starts the listeners `new` has and the server does not, and stops those it no
    /// longer has.
    fn apply_listeners(&mut self, server: &mut Server, new: &ServeOptions) {
        let wanted = specs(new);
        let mut kept = Vec::new();
        for (spec, bound) in std::mem::take(&mut self.listeners) {
            if wanted.contains(&spec) {
                kept.push((spec, bound));
            } else {
                tracing::info!("SIGHUP: removing the listener {spec} on {bound}");
                server.stop_listening(bound);
                self.figures.remove(bound);
            }
        }
        self.listeners = kept;
        for spec in wanted {
            if self.listeners.iter().any(|(s, _)| *s == spec) {
                continue;
            }
            match self.listen(server, spec) {
                Ok(l) => {
                    tracing::info!("SIGHUP: added the listener {spec} on {}", l.addr);
                    self.listeners.push((spec, l.addr));
                    self.figures.add(l);
                }
                Err(e) => tracing::error!("SIGHUP: listener {spec} not added: {e:#}"),
            }
        }
    }

    fn listen(&self, server: &mut Server, spec: Spec) -> anyhow::Result<Listening> {
        let tls = match (&self.certs, spec.tls) {
            (_, false) => None,
            (Some(store), true) => Some(TlsListen {
                store: store.clone(),
                handshake_timeout: self.running.tls_handshake_timeout,
            }),
            (None, true) => anyhow::bail!(
                "the server started without --tls-cert and --tls-key; a TLS listener \
                 needs a restart"
            ),
        };
        let front = Front {
            proxy: spec
                .proxy
                .then(|| self.running.service.http.load().header_timeout),
            per_ip: self.per_ip.clone(),
        };
        Ok(spec.name.listen_behind(
            server,
            spec.addr,
            &self.running.service,
            tls.as_ref(),
            &front,
        )?)
    }

    /// Reads the certificate and key again. New handshakes present the new pair; a
    /// pair that does not load is logged and the old one kept.
    fn reload_certificate(&self) {
        let Some(store) = &self.certs else {
            return;
        };
        match store.reload() {
            Ok(()) => tracing::info!(
                "SIGHUP: TLS certificate reloaded from {}",
                store.files().cert.display()
            ),
            Err(e) => {
                tracing::error!("SIGHUP: TLS certificate not reloaded, keeping the old one: {e}")
            }
        }
    }
}
