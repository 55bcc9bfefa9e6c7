//! A protocol of your own in a few lines: an upper-casing line echo, run under every
//! model with the shared limits, timeouts, logging and graceful shutdown.
//!
//! ```text
//! cargo run --example upper -- threads 127.0.0.1:7007
//! printf 'hello\nworld\n' | nc 127.0.0.1 7007     # HELLO / WORLD
//! ```

use multiclient::model::{Limits, Model, Server};
use multiclient::service::{line_goodbye, ConnInfo, Cx, Goodbye, Service, Session};

/// Longest line accepted; longer ones are refused and the connection closed.
const MAX_LINE: usize = 4096;

pub struct Upper;
pub struct UpperSession;

impl Service for Upper {
    type Session = UpperSession;
    fn name(&self) -> &str {
        "upper"
    }
    fn session(&self, _conn: &ConnInfo) -> UpperSession {
        UpperSession
    }
}

impl Session for UpperSession {
    type Event = ();

    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, ()>) -> usize {
        let mut used = 0;
        // Answer every complete line; an incomplete tail waits for more bytes.
        while let Some(end) = input[used..].iter().position(|&b| b == b'\n') {
            let line = &input[used..used + end + 1];
            cx.send(&line.to_ascii_uppercase());
            used += end + 1;
        }
        if input.len() - used > MAX_LINE {
            cx.send(b"ERR line too long\n");
            cx.close();
            return input.len();
        }
        used
    }

    fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, ()>) {
        line_goodbye(why, cx);
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = match args.next().as_deref().unwrap_or("async") {
        "single" => Model::Single,
        "threads" => Model::Threads,
        "pool" => Model::Pool { workers: 10 },
        _ => Model::Async { workers: 2 },
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7007".into());
    multiclient::logging::init(multiclient::logging::LogFormat::Pretty, 0);
    let mut server = Server::new(model, Limits::default())?;
    server.listen(addr.as_str(), Upper)?;
    let drain = server.drain();
    ctrlc_like(move || drain.start());
    server.wait();
    Ok(())
}

/// Starts a graceful shutdown on SIGINT or SIGTERM.
fn ctrlc_like(on_signal: impl Fn() + Send + 'static) {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .expect("signal handlers");
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            on_signal();
        }
    });
}
