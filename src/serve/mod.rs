//! `multiclient serve`: run services under one model until SIGINT or SIGTERM.
//!
//! The first signal starts a graceful shutdown (stop accepting, answer what was read,
//! say goodbye, exit 0 within the shutdown timeout); a second one exits at once.

use std::net::SocketAddr;

use anyhow::Context;

use crate::model::{Limits, Listening, Model, Server};
pub mod config;
mod registry;

pub use registry::{ServiceName, ServiceOptions, TCP_SERVICES};

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
}

/// Starts every listener; nothing is served if one fails to bind.
pub fn start(opts: &ServeOptions) -> anyhow::Result<(Server, Vec<Listening>)> {
    let mut server = Server::new(opts.model, opts.limits.clone()).context("starting the server")?;
    let mut listening = Vec::new();
    for &(name, addr) in &opts.services {
        let l = name
            .listen(&mut server, addr, &opts.service)
            .with_context(|| format!("{name}: cannot listen on {addr}"))?;
        listening.push(l);
    }
    Ok((server, listening))
}

/// Serves until a signal, then drains. Returns the process exit status.
pub fn run(opts: &ServeOptions) -> anyhow::Result<i32> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Register before binding so a signal that arrives early is not the default
    // (immediate, unclean) exit.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    let (server, _listening) = start(opts)?;
    let drain = server.drain();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
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
    let cut = server.wait();
    if cut > 0 {
        tracing::warn!("{cut} connections did not finish within the shutdown timeout");
    }
    Ok(0)
}
