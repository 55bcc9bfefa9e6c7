//! The WebSocket echo floor: a server that does nothing but the system calls of a
//! WebSocket round trip, so its CPU per message is what this machine charges for one
//! and any server's figure above it is the server's own work. The upgrade is
//! answered with the four lines a client checks (no origin, protocol, extension or
//! version checks); frames are parsed and unmasked by hand in one fixed buffer and
//! answered `Server received: <message>` (the `ws` service's reply, which `bench ws`
//! checks) from another, with no allocation per message, no UTF-8 validation, no
//! fragmented messages (a continuation frame closes the connection), no limits,
//! timeouts or logs. Frames read at once are answered with one `write`. Pings get
//! their pong, a close its close. Port from argv (default 8765). Run: `cargo run
//! --release --example floor_ws -- 8765`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The `ws` service's prefix to every reply.
const PREFIX: &[u8] = b"Server received: ";

/// The read buffer: the largest frame (header and payload) this floor accepts.
const IN: usize = 8192;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8765);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let _ = serve(socket).await;
        });
    }
}

/// One connection: the upgrade, then frames until a close or an error.
async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    let mut inb = [0u8; IN];
    let mut out = vec![0u8; 2 * IN + 64];
    let mut len = 0;
    // The upgrade request, whole, then what follows it stays in the buffer.
    let head = loop {
        let n = s.read(&mut inb[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        if let Some(i) = inb[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if len == IN {
            return Ok(());
        }
    };
    let Some(key) = header(&inb[..head], b"sec-websocket-key") else {
        return s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    };
    let accept = tungstenite::handshake::derive_accept_key(key);
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    s.write_all(reply.as_bytes()).await?;
    inb.copy_within(head..len, 0);
    len -= head;
    loop {
        // Every whole frame in the buffer, answered into `out`.
        let mut at = 0;
        let mut o = 0;
        let mut close = false;
        while let Some((op, fin, start, end)) = frame(&inb[at..len]) {
            let (start, end) = (at + start, at + end);
            if !fin || op == 0 {
                return Ok(());
            }
            let mask = [
                inb[start - 4],
                inb[start - 3],
                inb[start - 2],
                inb[start - 1],
            ];
            for (i, b) in inb[start..end].iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            let payload = &inb[start..end];
            match op {
                1 | 2 => o += put(&mut out[o..], op, &[PREFIX, payload]),
                8 => {
                    o += put(&mut out[o..], 8, &[&payload[..payload.len().min(2)]]);
                    close = true;
                }
                9 => o += put(&mut out[o..], 10, &[payload]),
                _ => {}
            }
            at = end;
            if close || o > IN {
                break;
            }
        }
        if o > 0 {
            s.write_all(&out[..o]).await?;
        }
        if close {
            return Ok(());
        }
        inb.copy_within(at..len, 0);
        len -= at;
        if len == IN {
            return Ok(());
        }
        let n = s.read(&mut inb[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
}

/// The value of a request header (ASCII case-insensitive name), trimmed.
fn header<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// A whole masked client frame at the start of `b`: its opcode, FIN bit, and the
/// payload's start and end; `None` while it is incomplete.
fn frame(b: &[u8]) -> Option<(u8, bool, usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (fin, op) = (b[0] & 0x80 != 0, b[0] & 0x0f);
    let (len, ext) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 2),
        127 if b.len() >= 10 => (
            usize::try_from(u64::from_be_bytes(b[2..10].try_into().ok()?)).ok()?,
            8,
        ),
        126 | 127 => return None,
        n => (n as usize, 0),
    };
    let start: usize = 2 + ext + 4;
    let end = start.checked_add(len)?;
    (b.len() >= end).then_some((op, fin, start, end))
}

/// Writes an unmasked server frame of `parts` at the start of `out`; its length.
fn put(out: &mut [u8], op: u8, parts: &[&[u8]]) -> usize {
    let n: usize = parts.iter().map(|p| p.len()).sum();
    out[0] = 0x80 | op;
    let mut h = 2;
    if n < 126 {
        out[1] = n as u8;
    } else {
        out[1] = 126;
        out[2..4].copy_from_slice(&(n as u16).to_be_bytes());
        h = 4;
    }
    for p in parts {
        out[h..h + p.len()].copy_from_slice(p);
        h += p.len();
    }
    h
}
