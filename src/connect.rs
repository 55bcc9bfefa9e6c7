//! `multiclient connect`: a terminal client for the services.
//!
//! Interactive, it sends each line typed and prints whatever the server sends as it
//! arrives; when the server closes (a goodbye such as `ERR idle timeout`, a shutdown, a
//! killed process) it says why at once and exits, without waiting for the next line
//! typed. Scripted (`--send`, `--count`), it takes turns like the seeds' clients: send,
//! wait for the answer, print it; for `greet` it waits for the greeting first and
//! answers `HI! I am client.` like the seed.
//!
//! `ws` speaks WebSocket (each line a text message, each message received printed), and
//! `chat` with `--ws` speaks the chat's JSON wire on `/chat/ws`: a line typed in the
//! line protocol's words (`JOIN lobby`, `SAY lobby hi`) is sent as its JSON command, a
//! line starting with `{` as it is. `--token` sends the chat's `AUTH <token>` (on
//! the JSON wire, its `auth` object) before anything else.
//!
//! What a server sends is shown, never obeyed: a control character received (a
//! terminal escape from another chat member, a bell) is printed escaped (`\u{1b}`),
//! so a peer cannot move the cursor, retitle the window or hide text.

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::serve::ServiceName;
use crate::service::greet::CLIENT_REPLY;

/// How long a scripted exchange waits for the server's answer, and connecting waits
/// for the server to accept.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// After the user ends the input (Ctrl-D), how long the server gets to finish its
/// answers and close; a one-shot server answers within it.
const LINGER: Duration = Duration::from_secs(2);

/// How often the interactive loop looks at the typed lines while it waits for the
/// server: short enough that typing feels immediate.
const POLL: Duration = Duration::from_millis(20);

/// What `connect` does.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The service spoken to.
    pub service: ServiceName,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Chat only: speak the JSON wire on the http service's `/chat/ws`.
    pub ws: bool,
    /// Messages to send in order (scripted mode).
    pub send: Vec<String>,
    /// Rounds of the script.
    pub count: Option<u64>,
    /// Pause between messages.
    pub interval: Duration,
    /// Speak TLS (`--tls`), trusting `--ca` or the system's certificates.
    pub tls: Option<ConnectTls>,
    /// Chat only: a token (JWT) sent as `AUTH <token>` before anything else
    /// (`--token`).
    pub token: Option<String>,
}

/// Why a connection ended, as the user is told. Only [`Ending::Closed`] and
/// [`Ending::Finished`] count as success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The server closed cleanly; its last line (or WebSocket close reason), if any.
    Closed(Option<String>),
    /// The user ended the input and the server then closed (or had its linger time).
    Finished,
    /// The server closed the WebSocket with an error code (1008, 1009, 1011, 1013...).
    Refused(String),
    /// The connection was reset.
    Reset,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Closed(Some(last)) => {
                write!(f, "connection closed by the server (last: {last})")
            }
            Ending::Closed(None) => f.write_str("connection closed by the server"),
            Ending::Finished => f.write_str("connection closed"),
            Ending::Refused(why) => write!(f, "connection closed by the server: {why}"),
            Ending::Reset => f.write_str("connection reset by the server"),
        }
    }
}

/// Runs the client reading typed lines from the process's stdin; output goes to `out`,
/// the reason the connection ended to stderr. An error (refused, reset, timed out,
/// closed with a WebSocket error code) is returned so that the process exits non-zero.
pub fn run(opts: &ConnectOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    if opts.ws && opts.service != ServiceName::Chat {
        anyhow::bail!("--ws is for `connect chat` (the chat's JSON wire on /chat/ws)");
    }
    if opts.token.is_some() && opts.service != ServiceName::Chat {
        anyhow::bail!("--token is for `connect chat` (the chat's AUTH)");
    }
    let mut conn = Conn::open(opts)?;
    let ending = if opts.send.is_empty() && opts.count.is_none() {
        if let Some(token) = &opts.token {
            conn.send(&format!("AUTH {token}"))?;
        }
        interactive(&mut conn, stdin_lines(), out)?
    } else {
        scripted(opts, &mut conn, out)?
    };
    finish(ending)
}

/// Tells the user why the connection ended; an error for the endings that are failures.
fn finish(ending: Ending) -> anyhow::Result<()> {
    match ending {
        Ending::Closed(_) | Ending::Finished => {
            eprintln!("{ending}");
            Ok(())
        }
        Ending::Refused(_) | Ending::Reset => Err(anyhow::anyhow!("{ending}")),
    }
}

/// Typed lines, read on a thread of their own so the client never waits on the
/// keyboard while the server speaks; `None` once the input ends.
fn stdin_lines() -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    rx
}

/// What one wait on the connection brought.
enum Recv {
    /// Bytes (TCP) or one message's payload (WebSocket).
    Data(Vec<u8>),
    /// Nothing within the wait.
    Nothing,
    /// The end of the connection.
    End(Ending),
}

/// The connection, raw TCP or WebSocket.
enum Conn {
    Tcp {
        stream: Link,
        line_protocol: bool,
        last_line: LastLine,
    },
    Ws {
        socket: Box<WebSocket<Link>>,
        chat_json: bool,
    },
}

impl Conn {
    fn open(opts: &ConnectOptions) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect_timeout(&opts.addr, REPLY_TIMEOUT)
            .with_context(|| format!("connecting to {}", opts.addr))?;
        stream.set_nodelay(true)?;
        let stream = match &opts.tls {
            Some(tls) => Link::Tls(Box::new(tls::connect(tls, opts.addr, stream)?)),
            None => Link::Plain(stream),
        };
        let path = match (opts.service, opts.ws) {
            (ServiceName::Ws, _) => "/",
            (ServiceName::Chat, true) => "/chat/ws",
            _ => {
                return Ok(Conn::Tcp {
                    stream,
                    line_protocol: opts.service.is_line_protocol(),
                    last_line: LastLine::default(),
                })
            }
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let scheme = if opts.tls.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://{}{path}", opts.addr);
        let (socket, _) = tungstenite::client(url.as_str(), stream)
            .map_err(|e| anyhow::anyhow!("WebSocket handshake with {url}: {e}"))?;
        Ok(Conn::Ws {
            socket: Box::new(socket),
            chat_json: opts.service == ServiceName::Chat,
        })
    }

    fn set_wait(&mut self, wait: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp { stream, .. } => stream.set_read_timeout(Some(wait)),
            Conn::Ws { socket, .. } => socket.get_ref().set_read_timeout(Some(wait)),
        }
    }

    /// Sends one typed line (or scripted message).
    fn send(&mut self, text: &str) -> anyhow::Result<()> {
        match self {
            Conn::Tcp {
                stream,
                line_protocol,
                ..
            } => {
                let mut v = text.as_bytes().to_vec();
                if *line_protocol {
                    v.push(b'\n');
                }
                stream.write_all(&v)?;
            }
            Conn::Ws { socket, chat_json } => {
                let payload = if *chat_json {
                    match chat_command_json(text) {
                        Ok(json) => json,
                        Err(why) => {
                            eprintln!("not sent: {why}");
                            return Ok(());
                        }
                    }
                } else {
                    text.to_owned()
                };
                socket.send(Message::text(payload))?;
            }
        }
        Ok(())
    }

    /// Ends our side: FIN on TCP, a close frame (1000) on WebSocket.
    fn end_input(&mut self) {
        match self {
            Conn::Tcp { stream, .. } => stream.end(),
            Conn::Ws { socket, .. } => {
                let _ = socket.close(None);
                let _ = socket.flush();
            }
        }
    }

    /// Waits up to the read timeout for what the server says next.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Recv> {
        match self {
            Conn::Tcp {
                stream, last_line, ..
            } => match stream.read(buf) {
                Ok(0) => Ok(Recv::End(Ending::Closed(last_line.take()))),
                Ok(n) => {
                    last_line.feed(&buf[..n]);
                    Ok(Recv::Data(buf[..n].to_vec()))
                }
                Err(e) if is_wait(&e) => Ok(Recv::Nothing),
                Err(e) if is_reset(&e) => Ok(Recv::End(Ending::Reset)),
                Err(e) => Err(e),
            },
            Conn::Ws { socket, .. } => ws_recv(socket),
        }
    }
}

/// The byte stream under a connection: plain TCP, or TLS over it (`--tls`).
enum Link {
    Plain(TcpStream),
    Tls(Box<tls::Tls>),
}

impl Link {
    fn set_read_timeout(&self, wait: Option<Duration>) -> io::Result<()> {
        match self {
            Link::Plain(s) => s.set_read_timeout(wait),
            Link::Tls(s) => s.sock.set_read_timeout(wait),
        }
    }

    /// Ends our side: FIN, after a close_notify over TLS.
    fn end(&mut self) {
        if let Link::Tls(s) = self {
            s.conn.send_close_notify();
            while s.conn.wants_write() {
                if s.conn.write_tls(&mut s.sock).is_err() {
                    break;
                }
            }
        }
        let tcp = match self {
            Link::Plain(s) => &*s,
            Link::Tls(s) => &s.sock,
        };
        let _ = tcp.shutdown(Shutdown::Write);
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => s.read(buf),
            Link::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => s.write(buf),
            Link::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Link::Plain(s) => s.flush(),
            Link::Tls(s) => s.flush(),
        }
    }
}

/// `connect --tls`: rustls over the TCP stream, trusting `--ca` or the system's store.
mod tls {
    use std::net::{SocketAddr, TcpStream};
    use std::path::Path;
    use std::sync::Arc;

    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    use super::ConnectTls;

    pub(super) type Tls = StreamOwned<ClientConnection, TcpStream>;

    /// A client configuration trusting the PEM certificates in `ca`, or the system's
    /// store without it: TLS 1.2 and 1.3 with rustls's safe defaults (also the load
    /// tester's, `bench --tls`).
    pub fn client_config(ca: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        match ca {
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
        Ok(Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }

    /// Opens TLS to `addr` (its IP is the name checked in the certificate) and
    /// completes the handshake, so a bad certificate is reported before anything is sent.
    pub(super) fn connect(
        tls: &ConnectTls,
        addr: SocketAddr,
        sock: TcpStream,
    ) -> anyhow::Result<Tls> {
        let config = client_config(tls.ca.as_deref())?;
        let name = ServerName::IpAddress(addr.ip().into());
        let conn = ClientConnection::new(config, name)?;
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
}

pub use tls::client_config;

/// `connect --tls`: which certificates the client trusts.
#[derive(Debug, Clone, Default)]
pub struct ConnectTls {
    /// A PEM file of CA certificates (`--ca`); without it, the system's store.
    pub ca: Option<std::path::PathBuf>,
}

fn ws_recv(socket: &mut WebSocket<Link>) -> io::Result<Recv> {
    use tungstenite::Error as E;
    match socket.read() {
        Ok(Message::Text(t)) => Ok(Recv::Data(t.as_bytes().to_vec())),
        Ok(Message::Binary(b)) => Ok(Recv::Data(b.to_vec())),
        Ok(Message::Close(frame)) => {
            // Answer the close (tungstenite queues the reply) and report it.
            let _ = socket.flush();
            Ok(Recv::End(close_ending(frame.as_ref())))
        }
        Ok(_) => Ok(Recv::Nothing), // ping/pong: answered by tungstenite
        Err(E::Io(e)) if is_wait(&e) => Ok(Recv::Nothing),
        Err(E::Io(e)) if is_reset(&e) => Ok(Recv::End(Ending::Reset)),
        Err(E::ConnectionClosed | E::AlreadyClosed) => Ok(Recv::End(Ending::Closed(None))),
        Err(E::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
            Ok(Recv::End(Ending::Reset))
        }
        Err(E::Io(e)) => Err(e),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// A WebSocket close: a normal code is a clean end, any other a refusal or an error.
fn close_ending(frame: Option<&tungstenite::protocol::CloseFrame>) -> Ending {
    let Some(frame) = frame else {
        return Ending::Closed(None);
    };
    let reason = if frame.reason.is_empty() {
        format!("close {}", u16::from(frame.code))
    } else {
        format!(
            "close {} ({})",
            u16::from(frame.code),
            escape(frame.reason.as_bytes())
        )
    };
    match frame.code {
        CloseCode::Normal | CloseCode::Away => Ending::Closed(Some(reason)),
        _ => Ending::Refused(reason),
    }
}

fn is_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// The last complete line the server sent, to say why it closed.
#[derive(Default)]
struct LastLine {
    partial: Vec<u8>,
    last: Option<String>,
}

impl LastLine {
    /// Keeps at most this much of an unfinished line.
    const MAX: usize = 1024;

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial);
                let text = escape(line.strip_suffix(b"\r").unwrap_or(&line));
                if !text.is_empty() {
                    self.last = Some(text);
                }
            } else if self.partial.len() < Self::MAX {
                self.partial.push(b);
            }
        }
    }

    fn take(&mut self) -> Option<String> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.last = Some(escape(&line));
        }
        self.last.take()
    }
}

/// A typed line in the line protocol's words as a JSON command of the chat's
/// WebSocket wire; a line starting with `{` is taken as JSON already.
pub fn chat_command_json(line: &str) -> Result<String, String> {
    use crate::service::chat::Command;
    use serde_json::json;
    let line = line.trim_end_matches('\r');
    if line.trim_start().starts_with('{') {
        return Ok(line.to_owned());
    }
    let cmd = crate::service::chat::parse(line.as_bytes())
        .map_err(|e| format!("{}: {} (or type a JSON object)", e.code, e.text))?;
    let v = match cmd {
        Command::Nick(nick) => json!({"type": "nick", "nick": nick}),
        Command::Join { room, after: None } => json!({"type": "join", "room": room}),
        Command::Join {
            room,
            after: Some(id),
        } => json!({"type": "join", "room": room, "after": id.0.to_string()}),
        Command::Part(room) => json!({"type": "part", "room": room}),
        Command::Say { room, text } => json!({"type": "say", "room": room, "text": text}),
        Command::Who(room) => json!({"type": "who", "room": room}),
        Command::History { room, n } => json!({"type": "history", "room": room, "n": n}),
        Command::Auth(token) => json!({"type": "auth", "token": token}),
        Command::Quit => json!({"type": "quit"}),
    };
    Ok(v.to_string())
}

/// Text received, safe to print on a terminal: invalid UTF-8 replaced, and every
/// control character but a line break or tab (ESC, BEL, NUL, DEL, the C1 controls,
/// a carriage return not ending a line) written as its Rust escape (`\u{1b}`, `\0`).
pub fn escape(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' if chars.peek() == Some(&'\n') => out.push(c),
            c if c.is_control() => out.extend(c.escape_debug()),
            c => out.push(c),
        }
    }
    out
}

/// Prints received bytes escaped, keeping a UTF-8 character split across two reads
/// whole.
#[derive(Default)]
struct Printer {
    carry: Vec<u8>,
}

impl Printer {
    fn print(&mut self, out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
        self.carry.extend_from_slice(bytes);
        let keep = match std::str::from_utf8(&self.carry) {
            Err(e) if e.error_len().is_none() => self.carry.len() - e.valid_up_to(),
            _ => 0,
        };
        let now = self.carry.len() - keep;
        out.write_all(escape(&self.carry[..now]).as_bytes())?;
        self.carry.drain(..now);
        out.flush()
    }

    /// Writes what is left and ends the line if the server did not.
    fn end(&mut self, out: &mut dyn Write, ended_line: bool) -> io::Result<()> {
        let rest = std::mem::take(&mut self.carry);
        out.write_all(escape(&rest).as_bytes())?;
        if !ended_line {
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

/// Prints one whole answer (or message) and ends its line.
fn print_message(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(escape(bytes).as_bytes())?;
    if !bytes.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn scripted(opts: &ConnectOptions, conn: &mut Conn, out: &mut dyn Write) -> anyhow::Result<Ending> {
    conn.set_wait(REPLY_TIMEOUT)?;
    let mut buf = vec![0u8; 64 * 1024];
    let default_reply = String::from_utf8_lossy(CLIENT_REPLY).into_owned();
    let messages: Vec<String> = if opts.send.is_empty() {
        vec![default_reply]
    } else {
        opts.send.clone()
    };
    let rounds = opts.count.unwrap_or(1);
    let speaks_first = opts.service.server_speaks_first();
    let mut answer = |conn: &mut Conn| -> anyhow::Result<Option<Ending>> {
        match conn.recv(&mut buf)? {
            Recv::Data(d) => {
                print_message(out, &d)?;
                Ok(None)
            }
            Recv::Nothing => anyhow::bail!("no answer from the server within {REPLY_TIMEOUT:?}"),
            Recv::End(e) => Ok(Some(e)),
        }
    };
    // The token goes first, as a message of its own with its own answer.
    let auth = opts.token.as_ref().map(|t| format!("AUTH {t}"));
    for round in 0..rounds {
        let first = if round == 0 { auth.clone() } else { None };
        for (i, msg) in first.iter().chain(&messages).enumerate() {
            if (round > 0 || i > 0) && !opts.interval.is_zero() {
                std::thread::sleep(opts.interval);
            }
            if speaks_first {
                if let Some(end) = answer(conn)? {
                    return Ok(end);
                }
            }
            conn.send(msg)?;
            if !speaks_first {
                if let Some(end) = answer(conn)? {
                    return Ok(end);
                }
            }
        }
    }
    conn.end_input();
    // Print whatever the server still says until it closes (a one-shot server's answer,
    // a last greeting).
    conn.set_wait(Duration::from_millis(500))?;
    loop {
        match conn.recv(&mut buf)? {
            Recv::Data(d) => print_message(out, &d)?,
            Recv::Nothing => return Ok(Ending::Finished),
            Recv::End(Ending::Closed(_)) => return Ok(Ending::Finished),
            Recv::End(e) => return Ok(e),
        }
    }
}

/// Sends each line from `lines` and prints what arrives, until either side ends: the
/// server closing (at once, whatever the input is doing) or the input ending (then the
/// server gets [`LINGER`] to finish and close).
fn interactive(
    conn: &mut Conn,
    lines: mpsc::Receiver<Option<String>>,
    out: &mut dyn Write,
) -> anyhow::Result<Ending> {
    conn.set_wait(POLL)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut printer = Printer::default();
    let mut ended_line = true;
    let mut input_ended: Option<Instant> = None;
    loop {
        if input_ended.is_none() {
            loop {
                match lines.try_recv() {
                    Ok(Some(line)) => conn.send(&line)?,
                    Ok(None) | Err(mpsc::TryRecvError::Disconnected) => {
                        conn.end_input();
                        input_ended = Some(Instant::now());
                        break;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
        }
        match conn.recv(&mut buf) {
            Ok(Recv::Data(d)) => {
                if matches!(conn, Conn::Ws { .. }) {
                    print_message(out, &d)?;
                } else {
                    printer.print(out, &d)?;
                    ended_line = d.ends_with(b"\n");
                }
            }
            Ok(Recv::Nothing) => {
                if input_ended.is_some_and(|t| t.elapsed() >= LINGER) {
                    printer.end(out, ended_line)?;
                    return Ok(Ending::Finished);
                }
            }
            Ok(Recv::End(ending)) => {
                printer.end(out, ended_line)?;
                return Ok(match ending {
                    Ending::Closed(_) if input_ended.is_some() => Ending::Finished,
                    e => e,
                });
            }
            Err(e) => {
                printer.end(out, ended_line)?;
                return Err(anyhow::Error::new(e).context("reading from the server"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped_and_text_kept() {
        assert_eq!(escape(b"\x1b[2Jhi\x07\n"), "\\u{1b}[2Jhi\\u{7}\n");
        assert_eq!(escape(b"a\0b\x7f"), "a\\0b\\u{7f}");
        assert_eq!(escape("caf\u{e9}\tok\r\n".as_bytes()), "caf\u{e9}\tok\r\n");
        assert_eq!(escape(b"x\ry"), "x\\ry");
        assert_eq!(escape("\u{9b}31m".as_bytes()), "\\u{9b}31m");
    }

    #[test]
    fn a_character_split_across_reads_is_printed_whole() {
        let mut p = Printer::default();
        let mut out = Vec::new();
        let e = "\u{e9}".as_bytes();
        p.print(&mut out, &[b'a', e[0]]).unwrap();
        p.print(&mut out, &[e[1], b'\n']).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a\u{e9}\n");
    }

    #[test]
    fn the_last_line_is_the_reason_given() {
        let mut l = LastLine::default();
        l.feed(b"WELCOME guest-1\nERR idle ");
        l.feed(b"timeout\r\n");
        assert_eq!(l.take().as_deref(), Some("ERR idle timeout"));
        l.feed(b"ACK!");
        assert_eq!(l.take().as_deref(), Some("ACK!"));
    }

    #[test]
    fn typed_chat_lines_become_json_commands() {
        assert_eq!(
            chat_command_json("SAY lobby hi there").unwrap(),
            r#"{"room":"lobby","text":"hi there","type":"say"}"#
        );
        assert_eq!(
            chat_command_json("join lobby AFTER 12").unwrap(),
            r#"{"after":"12","room":"lobby","type":"join"}"#
        );
        assert_eq!(
            chat_command_json(r#"{"type":"quit"}"#).unwrap(),
            r#"{"type":"quit"}"#
        );
        assert!(chat_command_json("DANCE").is_err());
    }
}
