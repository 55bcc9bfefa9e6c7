//! Log output: `tracing` to stderr, human-readable or JSON, with a span per
//! connection. Per-message lines are at debug level (`-v`) so that a loaded server
//! does not spend its time writing logs.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Pretty,
    /// One JSON object per event.
    Json,
}

/// Installs the global subscriber. `verbosity` counts `-v` minus `-q`: 0 is info.
/// `RUST_LOG`, when set, overrides it.
pub fn init(format: LogFormat, verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written (stderr closed: the reader of a pipe has
        // gone) is dropped: reporting it would `eprintln!` to the same closed stderr
        // and panic whatever thread logged, signal handling included.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
