//! SIGHUP: the config read again (the same `--config` file and environment, the
//! command line's flags still winning) and applied to the running server, nobody
//! dropped.
//!
//! What changes at run time ([`RELOADABLE`]):
//!
//! - the limits (`max-conns` at the next accept; timeouts, `max-queue` and
//!   `coalesce` for the connections accepted after the reload, each connection keeping
//!   the ones it started with; `max-buffered` for every buffer that grows from then
//!   on; `shutdown-timeout` for a drain that starts later);
//! - the log level (`verbose`, `quiet`), unless `RUST_LOG` decides it;
//! - the notification key (`api-key`), asked for by the next request;
//! - the chat's token key (`jwt-secret`, or `jwt-public-key` read again from its
//!   file), for the chat connections opened after the reload: each connection keeps
//!   the key it was opened with;
//! - the HTTP and WebSocket limits (`header-timeout`, `body-timeout`, `max-body`,
//!   `max-message`), for the connections accepted after the reload;
//! - the TLS certificate and key, read again from their files;
//! - the listeners (`service`, `addr`): one that appears starts accepting; one that
//!   disappears stops accepting (the clients already in its backlog are still served),
//!   closes its socket, and its connections carry on until they end.
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

use crate::model::{Listening, Server};

use super::tls::{CertStore, TlsListen};
use super::{ServeOptions, ServiceName};

/// The settings a reload applies; a change to any other one needs a restart.
pub const RELOADABLE: &[&str] = &[
    "service",
    "addr",
    "max-conns",
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
}

/// A listener as configured: its service, its address as written (port 0 stays 0, so
/// an unchanged line is the same listener), and whether it is TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    name: ServiceName,
    addr: SocketAddr,
    tls: bool,
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.addr)?;
        if self.tls {
            f.write_str(",tls")?;
        }
        Ok(())
    }
}

fn specs(opts: &ServeOptions) -> Vec<Spec> {
    let plain = opts.services.iter().map(|&(name, addr)| Spec {
        name,
        addr,
        tls: false,
    });
    let tls = opts.tls_services.iter().map(|&(name, addr)| Spec {
        name,
        addr,
        tls: true,
    });
    plain.chain(tls).collect()
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
    certs: Option<Arc<CertStore>>,
    server: SharedServer,
}

impl Reloader {
    /// A reloader of `server`, started from `opts` with `listening` (in the order
    /// [`super::start_tls`] returns them). Without a `source` a reload only reads the
    /// TLS certificate again.
    pub fn new(
        opts: &ServeOptions,
        source: Option<Source>,
        listening: &[Listening],
        certs: Option<Arc<CertStore>>,
        server: SharedServer,
    ) -> Reloader {
        let listeners = specs(opts)
            .into_iter()
            .zip(listening.iter().map(|l| l.addr))
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
            certs,
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
            if RELOADABLE.contains(&key.as_str()) {
                changed.push(shown);
                self.settings.insert(key.clone(), value.clone());
            } else {
                tracing::warn!("SIGHUP: {shown} needs a restart; keeping {old}");
            }
        }
        server.set_limits(new.opts.limits.clone());
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
        Ok(spec
            .name
            .listen_on(server, spec.addr, &self.running.service, tls.as_ref())?)
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
