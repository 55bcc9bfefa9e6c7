//! The chat fan-out floor: a server that does nothing but one `send` per member per
//! message, so its CPU per delivery is what this machine's kernel charges for one and
//! any chat server's figure above it is the server's own work. It speaks just enough
//! of the chat's line wire for `bench chat`: `WELCOME guest-<n>` on connect,
//! `JOIN <room>` -> `OK JOIN <room>`, `SAY <room> <text>` -> `MSG <room> <id> <nick>
//! <text>` to every member, `QUIT` -> `OK QUIT`. What it skips, and a chat server
//! cannot: rooms (every member who joined anything is in the one room, and the room
//! named in `SAY` is echoed back), presence events, history, names, limits, timeouts,
//! logs, and every queue: the message is formatted once into the sender's buffer and
//! written with one non-blocking `send` to each member while a lock is held (which
//! keeps ids in delivery order); a member whose socket buffer is full is
//! disconnected, so a slow reader shows in `bench chat` as missing messages, never
//! as memory. Port from argv (default 7000). Run: `cargo run --release --example
//! floor_chat -- 7000`.

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

/// Longest line read; a longer one closes the connection.
const MAX_LINE: usize = 4096;

/// The one room: its members, by connection number, and the last message id.
#[derive(Default)]
struct Room {
    members: Vec<(u64, Arc<TcpStream>)>,
    last_id: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(7000);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let room = Arc::new(Mutex::new(Room::default()));
    let guests = AtomicU64::new(0);
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let me = guests.fetch_add(1, Ordering::Relaxed) + 1;
        let room = room.clone();
        tokio::spawn(async move {
            let s = Arc::new(socket);
            let _ = member(&room, &s, me).await;
            let mut r = room.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = r.members.iter().position(|m| m.0 == me) {
                r.members.swap_remove(i);
            }
        });
    }
}

/// Writes all of `b` to `s`, waiting while its buffer is full (replies to the member
/// itself, not the fan-out).
async fn send(s: &TcpStream, mut b: &[u8]) -> std::io::Result<()> {
    while !b.is_empty() {
        s.writable().await?;
        match s.try_write(b) {
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One member's commands until EOF, `QUIT` or an error.
async fn member(room: &Mutex<Room>, s: &Arc<TcpStream>, me: u64) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(MAX_LINE + 64);
    writeln!(out, "WELCOME guest-{me}")?;
    send(s, &out).await?;
    let mut buf = vec![0u8; 2 * MAX_LINE];
    let mut len = 0;
    loop {
        s.readable().await?;
        match s.try_read(&mut buf[len..]) {
            Ok(0) => return Ok(()),
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        let mut at = 0;
        while let Some(nl) = buf[at..len].iter().position(|&b| b == b'\n') {
            let line = &buf[at..at + nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            at += nl + 1;
            let (cmd, rest) = match line.iter().position(|&b| b == b' ') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &b""[..]),
            };
            out.clear();
            match cmd {
                b"JOIN" => {
                    room.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .members
                        .push((me, s.clone()));
                    out.extend_from_slice(b"OK JOIN ");
                    out.extend_from_slice(rest);
                    out.push(b'\n');
                    send(s, &out).await?;
                }
                b"SAY" => {
                    let sp = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
                    let (to, text) = (&rest[..sp], rest.get(sp + 1..).unwrap_or(b""));
                    let mut r = room.lock().unwrap_or_else(|e| e.into_inner());
                    r.last_id += 1;
                    out.extend_from_slice(b"MSG ");
                    out.extend_from_slice(to);
                    write!(out, " {} guest-{me} ", r.last_id)?;
                    out.extend_from_slice(text);
                    out.push(b'\n');
                    // The fan-out: one send per member, a member that cannot take the
                    // whole line at once dropped from the room (and shut down).
                    r.members.retain(|(_, m)| match m.try_write(&out) {
                        Ok(n) if n == out.len() => true,
                        _ => {
                            let _ = socket2::SockRef::from(&**m).shutdown(std::net::Shutdown::Both);
                            false
                        }
                    });
                }
                b"QUIT" => return send(s, b"OK QUIT\n").await,
                _ => send(s, b"ERR unknown-command\n").await?,
            }
        }
        buf.copy_within(at..len, 0);
        len -= at;
        if len > MAX_LINE {
            return Ok(());
        }
    }
}
