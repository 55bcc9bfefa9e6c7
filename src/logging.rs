//! Log output: `tracing` to stderr, human-readable or JSON, with a span per
//! connection. Per-message lines are at debug level (`-v`) so that a loaded server
//! does not spend its time writing logs. The level can change while the server runs
//! (SIGHUP reloads `verbose` and `quiet` from the config).

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Pretty,
    /// One JSON object per event.
    Json,
}

/// Swaps the filter of the installed subscriber (its type depends on the format, so
/// it is kept as a function); `None` while `RUST_LOG` decides the filter, or before
/// [`init`].
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;
static SET_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// The level `verbosity` (`-v` count minus `-q` count) stands for: 0 is info.
pub fn level(verbosity: i8) -> &'static str {
    match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// Installs the global subscriber. `verbosity` counts `-v` minus `-q`: 0 is info.
/// `RUST_LOG`, when set, overrides it. The level can change later with
/// [`set_verbosity`] (a config reload).
pub fn init(format: LogFormat, verbosity: i8) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let by_env = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(level(verbosity)));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written (stderr closed: the reader of a pipe has
        // gone) is dropped: reporting it would `eprintln!` to the same closed stderr
        // and panic whatever thread logged, signal handling included.
        .log_internal_errors(false);
    let set: Option<SetFilter> = match format {
        LogFormat::Pretty => {
            let b = builder.with_filter_reloading();
            let handle = b.reload_handle();
            b.try_init()
                .ok()
                .map(|()| Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())) as _)
        }
        LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            let handle = b.reload_handle();
            b.try_init()
                .ok()
                .map(|()| Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())) as _)
        }
    };
    if let (Some(set), false) = (set, by_env) {
        let _ = SET_FILTER.set(set);
    }
}

/// Changes the log level of the running process to what `verbosity` stands for.
/// `Ok(false)` when it cannot: `RUST_LOG` decides the filter, or no subscriber of
/// ours is installed.
pub fn set_verbosity(verbosity: i8) -> Result<bool, String> {
    match SET_FILTER.get() {
        Some(set) => set(EnvFilter::new(level(verbosity))).map(|()| true),
        None => Ok(false),
    }
}
