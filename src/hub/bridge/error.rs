//! Why the bridge's connection to Redis failed: every one ends the connection, which
//! is made again after a backoff.

use std::time::Duration;

/// A failure of the bridge's connection (the texts are those of its log lines).
#[derive(Debug, thiserror::Error)]
pub(super) enum BridgeError {
    /// The Redis client failed (connection refused or broken, protocol error).
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// A pipeline or a connection got no answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A pipeline got another number of replies than it had commands.
    #[error("{replies} replies to {commands} commands")]
    Replies {
        /// Replies received.
        replies: usize,
        /// Commands sent.
        commands: usize,
    },
    /// Redis no longer knows a script (flushed): the next connection loads them again.
    #[error("Redis lost the bridge's scripts")]
    ScriptsLost,
    /// `SCRIPT LOAD` answered another hash than the script's.
    #[error("SCRIPT LOAD answered {got}, expected {want}")]
    ScriptHash {
        /// The hash Redis answered.
        got: String,
        /// The script's own hash.
        want: String,
    },
    /// `TIME` answered something else than a time.
    #[error("TIME answered no time")]
    NoTime,
    /// A cluster: the channel of a room could not be subscribed to, so its requests
    /// were not sent.
    #[error("a room's channel could not be subscribed to")]
    Subscribe,
    /// The pub/sub connection closed.
    #[error("subscription closed")]
    SubscriptionClosed,
}
