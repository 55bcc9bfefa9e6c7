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
    /// Speak TLS (`--tls`), trusting `--ca` or the system's certificates.
    pub tls: Option<ConnectTls>,
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
    if let Some(tls) = &opts.tls {
        let mut stream = tls::connect(tls, opts.addr, stream)?;
        return if opts.send.is_empty() && opts.count.is_none() {
            tls::interactive(opts, stream, out)
        } else {
            stream.sock.set_read_timeout(Some(REPLY_TIMEOUT))?;
            scripted(opts, &mut stream, out)
        };
    }
    if opts.send.is_empty() && opts.count.is_none() {
        interactive(opts, stream, out)
    } else {
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        scripted(opts, stream, out)
    }
}

/// A connection `scripted` can talk over: a TCP stream, or TLS over one.
trait Stream: Read + Write {
    /// The socket underneath, for timeouts.
    fn tcp(&self) -> &TcpStream;
    /// Ends the client's side (TLS: a close_notify).
    fn end(&mut self);
}

impl Stream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }

    fn end(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl<S: Stream + ?Sized> Stream for &mut S {
    fn tcp(&self) -> &TcpStream {
        (**self).tcp()
    }

    fn end(&mut self) {
        (**self).end()
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
fn answer(stream: &mut impl Read, buf: &mut [u8]) -> io::Result<Option<usize>> {
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
    mut stream: impl Stream,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
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
    stream.end();
    // Print whatever the server still says until it closes (a one-shot server's answer,
    // a last greeting).
    stream
        .tcp()
        .set_read_timeout(Some(Duration::from_millis(500)))?;
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

/// `connect --tls`: rustls over the TCP stream, trusting `--ca` or the system's store.
mod tls {
    use std::io::{self, BufRead, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    use super::{frame, print_chunk, ConnectOptions, ConnectTls, Stream};

    /// How often the interactive TLS client looks for a typed line while waiting
    /// for the server: one thread owns the connection, so reads wait this long at most.
    const POLL: Duration = Duration::from_millis(50);

    pub(super) type Tls = StreamOwned<ClientConnection, TcpStream>;

    impl Stream for Tls {
        fn tcp(&self) -> &TcpStream {
            &self.sock
        }

        fn end(&mut self) {
            self.conn.send_close_notify();
            while self.conn.wants_write() {
                if self.conn.write_tls(&mut self.sock).is_err() {
                    break;
                }
            }
        }
    }

    /// Opens TLS to `addr` (its IP is the name checked in the certificate) and
    /// completes the handshake, so a bad certificate is reported before anything is sent.
    pub(super) fn connect(
        tls: &ConnectTls,
        addr: SocketAddr,
        sock: TcpStream,
    ) -> anyhow::Result<Tls> {
        let mut roots = RootCertStore::empty();
        match &tls.ca {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .with_context(|| format!("--ca {}", path.display()))?;
                for cert in certs {
                    roots
                        .add(cert)
                        .with_context(|| format!("--ca {}", path.display()))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            anyhow::bail!("no certificate to trust: give --ca PATH (PEM)");
        }
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let name = ServerName::IpAddress(addr.ip().into());
        let conn = ClientConnection::new(Arc::new(config), name)?;
        let mut stream = StreamOwned::new(conn, sock);
        stream.sock.set_read_timeout(Some(super::REPLY_TIMEOUT))?;
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .context("TLS handshake")?;
        }
        Ok(stream)
    }

    /// Sends each line typed and prints what arrives, over TLS: a thread reads stdin
    /// and hands lines over a channel to the one thread that owns the connection.
    pub(super) fn interactive(
        opts: &ConnectOptions,
        mut stream: Tls,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        stream.sock.set_read_timeout(Some(POLL))?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let script = opts.clone();
        std::thread::spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(frame(&script, &line)).is_err() {
                    break;
                }
            }
        });
        let mut typing = true;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while typing {
                match rx.try_recv() {
                    Ok(bytes) => stream.write_all(&bytes)?,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        typing = false;
                        stream.end();
                    }
                }
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => print_chunk(out, &buf[..n])?,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// `connect --tls`: which certificates the client trusts.
#[derive(Debug, Clone, Default)]
pub struct ConnectTls {
    /// A PEM file of CA certificates (`--ca`); without it, the system's store.
    pub ca: Option<std::path::PathBuf>,
}
