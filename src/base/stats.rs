//! The counters of one listener, as the engine and the models add to them and the
//! metrics endpoint reads them.

use std::sync::atomic::{AtomicU64, AtomicUsize};

/// Counters of one listener. Per-connection figures are added at accept and close;
/// the per-message ones (bytes, answer durations) go to the [`Stats::meter`], whose
/// shards are per thread, so the per-message path touches no shared cache line.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections refused at `--max-conns`.
    pub refused: AtomicU64,
    /// Connections open now (served or queued).
    pub active: AtomicUsize,
    /// Connections closed.
    pub closed: AtomicU64,
    /// Bytes in and out, and the time each answer took, counted live: a connection
    /// reports them once per batch of replies sent (sharded by thread: no shared cache
    /// line per message).
    pub meter: crate::base::meter::Meter,
    /// Writes (`send(2)` calls that sent bytes), from closed connections: with
    /// `deliveries`, how well events are coalesced.
    pub writes: AtomicU64,
    /// Idle timeouts.
    pub idle_timeouts: AtomicU64,
    /// Connections dropped because they stopped reading.
    pub slow_readers: AtomicU64,
    /// Sessions whose mailbox overflowed.
    pub slow_consumers: AtomicU64,
    /// Failed `accept` calls.
    pub accept_errors: AtomicU64,
    /// Connections closed because their buffered input would pass `--max-buffered`:
    /// the engine's pending input, or a session's own buffer (a TLS record, a request
    /// body, a WebSocket message being assembled).
    pub over_budget: AtomicU64,
    /// Connections closed because their client failed authentication (the chat's
    /// third bad token).
    pub refused_auth: AtomicU64,
    /// Connections closed, by why: indexed like [`CLOSE_REASONS`].
    pub closed_by: [AtomicU64; CLOSE_REASONS.len()],
}

/// Why connections close, as the names [`Stats::closed_by`] is indexed by (`eof`:
/// the client closed; `done`: the session ended it; `busy`: refused at
/// `--max-conns`; `input_limit`: a session that neither consumed a full input buffer
/// nor closed). The first entry, `open`, stays 0: a connection dropped while open
/// counts as `shutdown`.
pub const CLOSE_REASONS: [&str; 11] = [
    "open",
    "eof",
    "done",
    "busy",
    "idle",
    "shutdown",
    "slow_reader",
    "slow_consumer",
    "input_limit",
    "over_budget",
    "error",
];
