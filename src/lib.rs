//! multiclient: serve many network clients at the same time, correctly, safely and
//! fast.
//!
//! The crate has layers, each using only the ones below it:
//!
//! - [`base`]: the clock and the mailbox, shared by every layer;
//! - [`hub`]: the chat's shared state, reached by sessions through their mailboxes;
//! - [`service`]: protocols as sans-IO state machines (bytes in, bytes out, close);
//! - [`model`]: concurrency models that own the sockets and drive sessions with shared
//!   limits, timeouts, logging and graceful shutdown;
//! - the command line tools on top: [`serve`], [`connect`], and the load tester
//!   `bench` (the default-on cargo feature `bench`).
//!
//! To serve a protocol of your own, implement [`service::Service`] and
//! [`service::Session`] and hand the service to [`model::Server::listen`]; see
//! `examples/upper.rs`.

#![warn(missing_docs, unreachable_pub)]

pub mod base;
#[cfg(feature = "bench")]
pub mod bench;
pub mod connect;
pub mod hub;
pub mod logging;
pub mod model;
pub mod serve;
pub mod service;
