//! `multiclient connect`: a terminal client for the services.
//!
//! Interactive, it sends each line typed and prints whatever the server sends as it
//! arrives. Scripted (`--send`, `--count`), it takes turns like the seeds' clients:
//! send, wait for the answer, print it; for `greet` it waits for the greeting first
//! and answers `HI! I am client.` like the seed.

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use crate::serve::ServiceName;
use crate::service::greet::CLIENT_REPLY;

/// How long a scripted exchange waits for the server's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What `connect` does.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The service spoken to.
    pub service: ServiceName,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Messages to send in order (scripted mode).
    pub send: Vec<String>,
    /// Rounds of the script.
    pub count: Option<u64>,
    /// Pause between messages.
    pub interval: Duration,
}

/// Runs the client; output goes to `out`.
pub fn run(opts: &ConnectOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    if opts.service == ServiceName::Ws {
        // Raw lines are not WebSocket frames: say so rather than send garbage.
        anyhow::bail!(
            "connect does not speak WebSocket yet; try `python3 -m websockets ws://{}/`",
            opts.addr
        );
    }
    let stream = TcpStream::connect(opts.addr)?;
    stream.set_nodelay(true)?;
    if opts.send.is_empty() && opts.count.is_none() {
        interactive(opts, stream, out)
    } else {
        scripted(opts, stream, out)
    }
}

fn frame(opts: &ConnectOptions, text: &str) -> Vec<u8> {
    let mut v = text.as_bytes().to_vec();
    if opts.service.is_line_protocol() {
        v.push(b'\n');
    }
    v
}

fn print_chunk(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&String::from_utf8_lossy(bytes).into_owned().into_bytes())?;
    if !bytes.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads one answer; `None` when the server closed.
fn answer(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match stream.read(buf) {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer from the server",
            ))
        }
        Err(e) => Err(e),
    }
}

fn scripted(
    opts: &ConnectOptions,
    mut stream: TcpStream,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut buf = vec![0u8; 64 * 1024];
    let default_reply = String::from_utf8_lossy(CLIENT_REPLY).into_owned();
    let messages: Vec<String> = if opts.send.is_empty() {
        vec![default_reply]
    } else {
        opts.send.clone()
    };
    let rounds = opts.count.unwrap_or(1);
    let speaks_first = opts.service.server_speaks_first();
    'rounds: for round in 0..rounds {
        for (i, msg) in messages.iter().enumerate() {
            if (round > 0 || i > 0) && !opts.interval.is_zero() {
                std::thread::sleep(opts.interval);
            }
            if speaks_first {
                match answer(&mut stream, &mut buf)? {
                    Some(n) => print_chunk(out, &buf[..n])?,
                    None => break 'rounds,
                }
            }
            stream.write_all(&frame(opts, msg))?;
            if !speaks_first {
                match answer(&mut stream, &mut buf)? {
                    Some(n) => print_chunk(out, &buf[..n])?,
                    None => break 'rounds,
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    // Print whatever the server still says until it closes (a one-shot server's answer,
    // a last greeting).
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    while let Ok(Some(n)) = answer(&mut stream, &mut buf) {
        print_chunk(out, &buf[..n])?;
    }
    Ok(())
}

fn interactive(
    opts: &ConnectOptions,
    stream: TcpStream,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut reader = stream.try_clone()?;
    let printer = std::thread::spawn(move || {
        let stdout = io::stdout();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if print_chunk(&mut stdout.lock(), &buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut writer = stream;
    for line in io::stdin().lock().lines() {
        let line = line?;
        if writer.write_all(&frame(opts, &line)).is_err() {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Write);
    let _ = printer.join();
    let _ = out.flush();
    Ok(())
}
