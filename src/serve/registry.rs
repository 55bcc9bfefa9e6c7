//! The built-in services by name, with their default ports: what `serve --service`
//! and `connect` accept.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::base::per_ip::PerIp;
use crate::model::{Listening, Server};
use crate::service::gate::Gate;
use crate::service::tls::Tls;
use crate::service::Service;

use super::tls::TlsListen;

/// A built-in service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ServiceName {
    /// `ACK!` for every message (seeds 000/001), port 9999.
    Ack,
    /// `Hi! I am server` on connect and after every message (seed 002), port 52000.
    Greet,
    /// One message, one `Hello from server!`, close (seed 003), port 8081.
    Hello,
    /// HTTP/1.1: `GET /` says `Hello from Multi-threaded Flask Server!`, `GET /ws`
    /// upgrades (seed 003, Flask), port 8080.
    Http,
    /// WebSocket: `Server received: <message>` (seed 003, websockets), port 8765.
    Ws,
    /// Chat rooms over a TCP line protocol (seed 003's "real-time chat"), port 7000.
    Chat,
}

/// Options of the services, set from the command line; each service reads its own.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// http and ws: HTTP settings (header timeout, body limit) and WebSocket settings
    /// (echo, message limit).
    pub http: crate::base::Live<crate::service::http::HttpOptions>,
    /// The chat's options and its shared hub.
    pub chat: crate::service::chat::ChatOptions,
    /// The chat on the http service: the notification key, swapped by a reload.
    pub web: crate::base::Live<crate::service::chat::web::WebOptions>,
}

/// The services `serve` runs when none is named.
pub const TCP_SERVICES: &[ServiceName] = &[
    ServiceName::Ack,
    ServiceName::Greet,
    ServiceName::Hello,
    ServiceName::Http,
    ServiceName::Ws,
    ServiceName::Chat,
];

impl ServiceName {
    /// The name as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Ack => "ack",
            ServiceName::Greet => "greet",
            ServiceName::Hello => "hello",
            ServiceName::Http => "http",
            ServiceName::Ws => "ws",
            ServiceName::Chat => "chat",
        }
    }

    /// The port the service listens on by default.
    pub fn default_port(self) -> u16 {
        match self {
            ServiceName::Ack => 9999,
            ServiceName::Greet => 52000,
            ServiceName::Hello => 8081,
            ServiceName::Http => 8080,
            ServiceName::Ws => 8765,
            ServiceName::Chat => 7000,
        }
    }

    /// `127.0.0.1:<default port>`.
    pub fn default_addr(self) -> SocketAddr {
        ([127, 0, 0, 1], self.default_port()).into()
    }

    /// Whether the server speaks first (the client waits for it before sending).
    pub fn server_speaks_first(self) -> bool {
        matches!(self, ServiceName::Greet)
    }

    /// Whether messages are lines (sent with a newline) rather than raw text.
    pub fn is_line_protocol(self) -> bool {
        matches!(self, ServiceName::Chat)
    }

    /// Whether the service can run under `model`. Chat cannot run under `single`: one
    /// client at a time means the first member waits alone while everyone else sits
    /// unserved in the backlog. The default set of `serve` leaves it out there.
    pub fn runs_under(self, model: crate::model::Model) -> bool {
        !(self == ServiceName::Chat && model == crate::model::Model::Single)
    }

    /// Starts this service on `server`, listening on `addr`.
    pub fn listen(
        self,
        server: &mut Server,
        addr: SocketAddr,
        opts: &ServiceOptions,
    ) -> io::Result<Listening> {
        self.listen_on(server, addr, opts, None)
    }

    /// Starts this service on `server`, listening on `addr`, over TLS when `tls` is
    /// given (ALPN `http/1.1` on the http and ws listeners).
    pub fn listen_on(
        self,
        server: &mut Server,
        addr: SocketAddr,
        opts: &ServiceOptions,
        tls: Option<&TlsListen>,
    ) -> io::Result<Listening> {
        self.listen_behind(server, addr, opts, tls, &Front::default())
    }

    /// [`ServiceName::listen_on`], behind `front`: a PROXY header read first, a
    /// per-address limit (see [`Gate`]).
    pub fn listen_behind(
        self,
        server: &mut Server,
        addr: SocketAddr,
        opts: &ServiceOptions,
        tls: Option<&TlsListen>,
        front: &Front,
    ) -> io::Result<Listening> {
        let http = matches!(self, ServiceName::Http | ServiceName::Ws);
        let mut server = Put {
            server,
            tls,
            http,
            front,
        };
        let server = &mut server;
        match self {
            ServiceName::Ack => server.listen(addr, crate::service::ack::Ack),
            ServiceName::Greet => server.listen(addr, crate::service::greet::Greet),
            ServiceName::Hello => server.listen(addr, crate::service::hello::Hello),
            // The http service carries the chat's page, WebSocket and notifications
            // (on the process's one hub) wherever a chat can run.
            ServiceName::Http if ServiceName::Chat.runs_under(server.model()) => {
                let hub = opts
                    .chat
                    .hub()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let http = crate::service::chat::web::ChatHttp::new(
                    hub,
                    opts.http.clone(),
                    &opts.chat,
                    opts.web.clone(),
                );
                server.listen(addr, http)
            }
            ServiceName::Http => {
                server.listen(addr, crate::service::http::Http::new(opts.http.clone()))
            }
            ServiceName::Ws => {
                server.listen(addr, crate::service::http::Ws::new(opts.http.clone()))
            }
            ServiceName::Chat => {
                if !self.runs_under(server.model()) {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "chat needs many members at once; --model single serves one \
                         client at a time (use threads, pool or async)",
                    ));
                }
                let hub = opts
                    .chat
                    .hub()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let chat = crate::service::chat::Chat::new(hub, &opts.chat);
                server.listen(addr, chat)
            }
        }
    }
}

/// What stands before a listener's service, both optional: a PROXY header
/// (`--service NAME=ADDR,proxy`) and the per-address limit (`--max-conns-per-ip`).
#[derive(Debug, Clone, Default)]
pub struct Front {
    /// Every connection opens with a PROXY header, within this long.
    pub proxy: Option<Duration>,
    /// The server's count of connections per client address, shared by its listeners.
    pub per_ip: Option<Arc<PerIp>>,
}

/// A server with the listener's TLS setting and front: `listen` wraps the service
/// when they are set, so every service is written once for all of them.
struct Put<'a> {
    server: &'a mut Server,
    tls: Option<&'a TlsListen>,
    http: bool,
    front: &'a Front,
}

impl Put<'_> {
    fn model(&self) -> crate::model::Model {
        self.server.model()
    }

    fn listen<S: Service>(&mut self, addr: SocketAddr, service: S) -> io::Result<Listening> {
        match self.tls {
            None => self.gated(addr, service),
            Some(t) => {
                let config = t
                    .store
                    .server_config(self.http)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let tls = Tls::new(service, config, t.handshake_timeout);
                let stats = tls.stats();
                let mut l = self.gated(addr, tls)?;
                l.tls = Some(stats);
                Ok(l)
            }
        }
    }

    /// Listens with the service behind the gate when the front asks for one (the
    /// PROXY header comes before TLS, so the gate wraps the TLS wrapper).
    fn gated<S: Service>(&mut self, addr: SocketAddr, service: S) -> io::Result<Listening> {
        let Front { proxy, per_ip } = self.front.clone();
        if proxy.is_none() && per_ip.is_none() {
            return self.server.listen(addr, service);
        }
        let gate = Gate::new(service, proxy, per_ip);
        let refused = gate.refused();
        let mut l = self.server.listen(addr, gate)?;
        l.refused_per_ip = Some(refused);
        Ok(l)
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
