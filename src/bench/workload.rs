//! The workloads: what one operation is for each service, and the exact bytes its
//! reply must have. A reply with other bytes is a `wrong_reply` error, never a success.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::http;
use super::report::ErrorKind;

/// The Flask seed's (and our http service's) answer to `GET /`.
pub const HTTP_BODY: &[u8] = b"Hello from Multi-threaded Flask Server!";
/// The seed ws server's prefix to every message.
pub const WS_PREFIX: &str = "Server received: ";
/// The ack service's reply.
pub const ACK_REPLY: &[u8] = b"ACK!";
/// The greet service's greeting, sent on connect and after every message.
pub const GREETING: &[u8] = b"Hi! I am server\n";
/// What the greet seed's client answers.
pub const GREET_ANSWER: &[u8] = b"HI! I am client.";
/// The hello service's one reply.
pub const HELLO_REPLY: &[u8] = b"Hello from server!";

/// What the load is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// A message, an `ACK!`, on a long-lived connection.
    Ack,
    /// The greeting dialogue of seed 002 on a long-lived connection.
    Greet,
    /// Connect, send, read to the end, close: one operation per connection.
    Hello,
    /// Keep-alive `GET`s, `pipeline` at a time.
    Http {
        /// Requests written before reading their responses.
        pipeline: usize,
        /// The path requested.
        path: String,
        /// The body every response must have.
        body: Vec<u8>,
    },
    /// WebSocket messages, each answered `Server received: <message>`.
    Ws {
        /// The path of the upgrade request.
        path: String,
    },
}

impl Workload {
    /// The workload's name.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Ack => "ack",
            Workload::Greet => "greet",
            Workload::Hello => "hello",
            Workload::Http { .. } => "http",
            Workload::Ws { .. } => "ws",
        }
    }

    /// The service's default port.
    pub fn default_port(&self) -> u16 {
        match self {
            Workload::Ack => 9999,
            Workload::Greet => 52000,
            Workload::Hello => 8081,
            Workload::Http { .. } => 8080,
            Workload::Ws { .. } => 8765,
        }
    }

    /// Operations done per round trip (the pipeline depth for http, else 1).
    pub fn batch(&self) -> usize {
        match self {
            Workload::Http { pipeline, .. } => (*pipeline).max(1),
            _ => 1,
        }
    }
}

/// Fails with `wrong_reply` unless `got` is exactly `want`.
pub fn check_reply(got: &[u8], want: &[u8]) -> Result<(), ErrorKind> {
    if got == want {
        Ok(())
    } else {
        Err(ErrorKind::WrongReply)
    }
}

/// The message a client sends: `size` printable bytes (at least one).
pub fn message(size: usize) -> Vec<u8> {
    (0..size.max(1)).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Connects to `addr`, from `src` when given (to use more than one source address's
/// ephemeral ports).
pub async fn connect(addr: SocketAddr, src: Option<Ipv4Addr>) -> Result<TcpStream, ErrorKind> {
    let stream = match (src, addr) {
        (Some(ip), SocketAddr::V4(_)) => {
            let s = TcpSocket::new_v4().map_err(|e| ErrorKind::of_io(&e))?;
            bind_address_no_port(&s);
            s.bind((ip, 0).into()).map_err(|e| ErrorKind::of_io(&e))?;
            s.connect(addr).await
        }
        _ => TcpStream::connect(addr).await,
    }
    .map_err(|e| ErrorKind::of_io(&e))?;
    stream.set_nodelay(true).map_err(|e| ErrorKind::of_io(&e))?;
    Ok(stream)
}

/// Asks the kernel to choose the source port at `connect` rather than at `bind`
/// (`IP_BIND_ADDRESS_NO_PORT`), so a port is shared by connections to different
/// servers and TIME_WAIT reuse applies, as for an unbound `connect`. Without it a
/// bound socket takes a port of its own, and a few runs of 19,000 connections exhaust
/// the range. Neither socket2 nor rustix offers this option, hence libc. Best effort:
/// on failure the bind still works, with fewer ports.
fn bind_address_no_port(s: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the descriptor is a live socket owned by `s`, and the option value is a
    // c_int that outlives the call, with its size passed alongside.
    let _ = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// TLS for every connection of a run (`bench --tls`): the certificates trusted and
/// the name checked in the server's certificate. Session resumption is off, so a run
/// with a new connection per operation measures full handshakes.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Trusts the PEM certificates in `ca` (the system's store without it) and checks
    /// the server's certificate for `name`, or for `addr`'s IP address without one.
    /// `alpn` is offered (`http/1.1` for the http and ws workloads).
    pub fn new(
        ca: Option<&Path>,
        name: Option<&str>,
        addr: SocketAddr,
        alpn: Option<&[u8]>,
    ) -> anyhow::Result<TlsClient> {
        let mut config = Arc::unwrap_or_clone(crate::connect::client_config(ca)?);
        config.resumption = rustls::client::Resumption::disabled();
        if let Some(p) = alpn {
            config.alpn_protocols = vec![p.to_vec()];
        }
        let name = match name {
            Some(n) => ServerName::try_from(n.to_string())
                .map_err(|e| anyhow::anyhow!("--server-name {n}: {e}"))?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// The byte stream of one client connection: plain TCP, or TLS over it.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the client connection is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Ends the connection politely: TLS's close_notify, then the write side's FIN.
    pub async fn close(mut self) {
        let _ = self.shutdown().await;
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One client connection, kept between operations.
pub enum Conn {
    /// A plain or TLS connection, with the bytes read but not yet used (and, for
    /// http, the responses' last head).
    Tcp(Stream, Vec<u8>, http::Responses),
    /// A WebSocket connection.
    Ws(Box<WebSocketStream<Stream>>),
}

impl Conn {
    /// Ends the connection politely (see [`Stream::close`]).
    async fn close(self) {
        match self {
            Conn::Tcp(s, ..) => s.close().await,
            Conn::Ws(mut ws) => {
                let _ = ws.close().await;
            }
        }
    }
}

/// What a connection task needs to run operations.
pub struct Client {
    /// The workload.
    pub workload: Workload,
    /// The server.
    pub addr: SocketAddr,
    /// The source address, if bound.
    pub src: Option<Ipv4Addr>,
    /// The message sent (ack, hello, ws).
    pub msg: Vec<u8>,
    /// The expected ws reply.
    pub ws_reply: String,
    /// The http requests of one batch.
    pub http_batch: Vec<u8>,
    /// TLS on every connection (`--tls`).
    pub tls: Option<TlsClient>,
    /// A new connection for every operation (`--new-conn`): connect (and handshake),
    /// one operation, close.
    pub new_conn: bool,
}

impl Client {
    /// A client of `workload` on `addr`.
    pub fn new(
        workload: Workload,
        addr: SocketAddr,
        src: Option<Ipv4Addr>,
        msg_size: usize,
    ) -> Client {
        let msg = message(msg_size);
        let ws_reply = format!("{WS_PREFIX}{}", String::from_utf8_lossy(&msg));
        let http_batch = match &workload {
            Workload::Http { pipeline, path, .. } => {
                http::requests(&addr.to_string(), path, *pipeline)
            }
            _ => Vec::new(),
        };
        Client {
            workload,
            addr,
            src,
            msg,
            ws_reply,
            http_batch,
            tls: None,
            new_conn: false,
        }
    }

    /// The same client over TLS (`None`: plain), and with a new connection for every
    /// operation when `new_conn` (an http request then asks `Connection: close`).
    pub fn with(mut self, tls: Option<TlsClient>, new_conn: bool) -> Client {
        self.tls = tls;
        self.new_conn = new_conn;
        if let (true, Workload::Http { path, .. }) = (new_conn, &self.workload) {
            self.http_batch = http::request_closing(&self.addr.to_string(), path);
        }
        self
    }

    /// Connects, with the TLS handshake when the run speaks TLS.
    async fn stream(&self) -> Result<Stream, ErrorKind> {
        let tcp = connect(self.addr, self.src).await?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(t) => t
                .connector
                .connect(t.name.clone(), tcp)
                .await
                .map(|s| Stream::Tls(Box::new(s)))
                .map_err(|e| ErrorKind::of_tls(&e)),
        }
    }

    /// Opens a connection ready for operations (greet: the greeting read; ws: the
    /// upgrade done).
    pub async fn open(&self) -> Result<Conn, ErrorKind> {
        let mut stream = self.stream().await?;
        match &self.workload {
            Workload::Greet => {
                let mut buf = Vec::with_capacity(64);
                read_exact_reply(&mut stream, &mut buf, GREETING).await?;
                Ok(Conn::Tcp(stream, buf, http::Responses::default()))
            }
            Workload::Ws { path } => {
                let url = format!("ws://{}{}", self.addr, path);
                let (ws, _) = tokio_tungstenite::client_async(url, stream)
                    .await
                    .map_err(|e| ws_error(&e))?;
                Ok(Conn::Ws(Box::new(ws)))
            }
            _ => Ok(Conn::Tcp(
                stream,
                Vec::with_capacity(64),
                http::Responses::default(),
            )),
        }
    }

    /// Runs one batch of operations on `conn` (opening it first when `None`), calling
    /// `done` as each succeeds. On error the connection is dropped.
    pub async fn run(
        &self,
        conn: &mut Option<Conn>,
        mut done: impl FnMut(),
    ) -> Result<(), ErrorKind> {
        if let Workload::Hello = self.workload {
            let mut stream = self.stream().await?;
            stream
                .write_all(&self.msg)
                .await
                .map_err(|e| ErrorKind::of_io(&e))?;
            let mut got = Vec::with_capacity(64);
            // Read to the end, but never more than a wrong reply needs to be seen.
            let mut chunk = [0u8; 256];
            loop {
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| ErrorKind::of_io(&e))?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
                if got.len() > HELLO_REPLY.len() {
                    return Err(ErrorKind::WrongReply);
                }
            }
            check_reply(&got, HELLO_REPLY)?;
            done();
            return Ok(());
        }
        if conn.is_none() {
            *conn = Some(self.open().await?);
        }
        let result = self
            .run_on(conn.as_mut().expect("opened above"), &mut done)
            .await;
        let close = match result {
            Ok(close) => close,
            Err(e) => {
                *conn = None;
                return Err(e);
            }
        };
        if close {
            *conn = None;
        } else if self.new_conn {
            if let Some(c) = conn.take() {
                c.close().await;
            }
        }
        Ok(())
    }

    /// One batch on an open connection; `Ok(true)` when the server said it closes.
    async fn run_on(&self, conn: &mut Conn, done: &mut impl FnMut()) -> Result<bool, ErrorKind> {
        match (conn, &self.workload) {
            (Conn::Tcp(s, buf, _), Workload::Ack) => {
                s.write_all(&self.msg)
                    .await
                    .map_err(|e| ErrorKind::of_io(&e))?;
                read_exact_reply(s, buf, ACK_REPLY).await?;
                done();
                Ok(false)
            }
            (Conn::Tcp(s, buf, _), Workload::Greet) => {
                s.write_all(GREET_ANSWER)
                    .await
                    .map_err(|e| ErrorKind::of_io(&e))?;
                read_exact_reply(s, buf, GREETING).await?;
                done();
                Ok(false)
            }
            (Conn::Tcp(s, buf, responses), Workload::Http { pipeline, body, .. }) => {
                s.write_all(&self.http_batch)
                    .await
                    .map_err(|e| ErrorKind::of_io(&e))?;
                let mut eof = false;
                let mut left = (*pipeline).max(1);
                // The responses are used up from `at` on, and the buffer moved once
                // per read, not once per response.
                let mut at = 0;
                while left > 0 {
                    match responses.parse(&buf[at..], eof) {
                        Ok(Some((head, len))) => {
                            let resp = &buf[at..at + len];
                            let ok = head.status == 200 && &resp[head.head_len..] == body;
                            at += len;
                            if !ok {
                                return Err(ErrorKind::WrongReply);
                            }
                            done();
                            left -= 1;
                            if head.close {
                                // The rest of the batch was not answered: the server
                                // closed a keep-alive connection early.
                                return if left == 0 {
                                    Ok(true)
                                } else {
                                    Err(ErrorKind::Closed)
                                };
                            }
                        }
                        Ok(None) if eof => return Err(ErrorKind::Closed),
                        Ok(None) => {
                            buf.drain(..at);
                            at = 0;
                            eof = read_more(s, buf).await? == 0;
                        }
                        Err(_) => return Err(ErrorKind::WrongReply),
                    }
                }
                buf.drain(..at);
                Ok(false)
            }
            (Conn::Ws(ws), Workload::Ws { .. }) => {
                let text = String::from_utf8_lossy(&self.msg).into_owned();
                ws.send(Message::text(text))
                    .await
                    .map_err(|e| ws_error(&e))?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => {
                            check_reply(t.as_bytes(), self.ws_reply.as_bytes())?;
                            done();
                            return Ok(false);
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(_))) | None => return Err(ErrorKind::Closed),
                        Some(Ok(_)) => return Err(ErrorKind::WrongReply),
                        Some(Err(e)) => return Err(ws_error(&e)),
                    }
                }
            }
            _ => Err(ErrorKind::Other),
        }
    }
}

/// Reads more bytes into `buf` (at most 64 KiB held); returns how many (0 = EOF).
async fn read_more(s: &mut Stream, buf: &mut Vec<u8>) -> Result<usize, ErrorKind> {
    if buf.len() > 64 * 1024 {
        return Err(ErrorKind::WrongReply);
    }
    // Into the buffer's spare room: no zeroed chunk to copy from.
    buf.reserve(4096);
    s.read_buf(buf).await.map_err(|e| ErrorKind::of_io(&e))
}

/// Reads until `want.len()` bytes are buffered and checks them against `want`.
async fn read_exact_reply(s: &mut Stream, buf: &mut Vec<u8>, want: &[u8]) -> Result<(), ErrorKind> {
    while buf.len() < want.len() {
        // A partial reply that already differs is wrong: no need to wait for the rest.
        check_reply(&buf[..], &want[..buf.len()])?;
        if read_more(s, buf).await? == 0 {
            return Err(ErrorKind::Closed);
        }
    }
    let r = check_reply(&buf[..want.len()], want);
    buf.drain(..want.len());
    r
}

/// Classifies a WebSocket error.
fn ws_error(e: &tungstenite::Error) -> ErrorKind {
    match e {
        tungstenite::Error::Io(e) => ErrorKind::of_io(e),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            ErrorKind::Closed
        }
        _ => ErrorKind::WrongReply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked_byte_for_byte() {
        assert_eq!(check_reply(b"ACK!", ACK_REPLY), Ok(()));
        assert_eq!(check_reply(b"ACK?", ACK_REPLY), Err(ErrorKind::WrongReply));
        assert_eq!(check_reply(b"ACK", ACK_REPLY), Err(ErrorKind::WrongReply));
        assert_eq!(check_reply(b"ACK!!", ACK_REPLY), Err(ErrorKind::WrongReply));
    }

    #[test]
    fn messages_have_the_asked_size() {
        assert_eq!(message(5), b"abcde");
        assert_eq!(message(0), b"a");
        assert_eq!(message(1024).len(), 1024);
    }

    #[test]
    fn ws_reply_is_the_seed_prefix_and_the_message() {
        let c = Client::new(
            Workload::Ws { path: "/".into() },
            "127.0.0.1:1".parse().unwrap(),
            None,
            3,
        );
        assert_eq!(c.ws_reply, "Server received: abc");
    }
}
