//! Every limit of a server, with its default, in one place: shared by the engine (which
//! enforces the per-connection ones) and the models (which enforce the rest).

use std::time::Duration;

/// Every limit of a server, with its default, in one place.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once per listener; the next client is refused with the
    /// service's busy goodbye. Under `pool` this bounds running plus queued clients.
    pub max_conns: usize,
    /// A connection with no bytes in or out for this long is told and closed.
    pub idle_timeout: Duration,
    /// A connection whose replies make no progress for this long is dropped.
    pub write_timeout: Duration,
    /// After a shutdown signal, how long connections get to finish.
    pub shutdown_timeout: Duration,
    /// Unconsumed input held per connection.
    pub max_input: usize,
    /// Unsent output above which the connection stops reading (backpressure); at
    /// most 1 GiB is used.
    pub max_output: usize,
    /// Bytes a session's mailbox holds before the session is a slow consumer.
    pub max_queue: usize,
    /// Write coalescing for pushed events: a connection written to by events less
    /// than this long ago holds the next ones until this long after that write, so a
    /// busy chat member gets many messages per write, not one write per message. A
    /// lone event is written at once; replies to a client's own input are never held.
    /// Zero writes every event at once.
    pub coalesce: Duration,
    /// Listen backlog.
    pub backlog: i32,
    /// Refused connections being told why at once; beyond this they are just closed.
    pub max_refusing: usize,
    /// Connections one client address may have open at once, across every listener
    /// (`--max-conns-per-ip`); 0 is no limit. Behind a PROXY header the address is
    /// the one the header carries.
    pub max_conns_per_ip: usize,
    /// Bytes held for clients across the whole server (input not yet consumed, a
    /// WebSocket message being assembled); a connection whose buffer would grow past it
    /// is told the server is busy and closed (see [`crate::base::budget`]).
    pub max_buffered: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_conns: 10_000,
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            max_input: 64 * 1024,
            max_output: 1 << 20,
            max_queue: 1 << 20,
            coalesce: Duration::from_millis(5),
            backlog: 1024,
            max_refusing: 64,
            max_buffered: crate::base::budget::DEFAULT_MAX_BUFFERED,
            max_conns_per_ip: 0,
        }
    }
}
