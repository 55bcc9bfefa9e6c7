//! The minimal tokio chat server, the common shape of tokio's chat example — a shared
//! `Arc<Mutex<..>>` map of rooms to per-member unbounded mpsc channels, the publisher
//! sending to every member while holding the lock, and one task per member doing one
//! `write_all` per message — speaking enough of our line protocol for `bench chat`:
//! `WELCOME <nick>` on connect, `JOIN <room>` -> `OK JOIN <room>`, `SAY <room> <text>`
//! -> `MSG <room> <id> <nick> <text>` (ids increasing) to every member of the room,
//! the sender included, `QUIT` -> `OK QUIT`. No presence events, history, limits or
//! slow-consumer handling: it is the peer our chat service is measured against, not
//! a chat server. Messages are shared `Arc<str>` (one allocation per message, not
//! one per member), which makes it a stronger peer than the example's `String`s.
//! Port from argv (default 7000). Run: `cargo run --release --example
//! peer_tokio_chat -- 7000`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

/// Longest command line read; longer lines close the connection.
const MAX_LINE: u64 = 4096;

type Tx = mpsc::UnboundedSender<Arc<str>>;

/// Rooms and their members' channels, and the id counter.
#[derive(Default)]
struct Shared {
    rooms: HashMap<String, HashMap<u64, Tx>>,
    next_id: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(7000);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let state = Arc::new(Mutex::new(Shared::default()));
    let mut guest = 0u64;
    loop {
        let (socket, _) = listener.accept().await?;
        guest += 1;
        let state = state.clone();
        tokio::spawn(async move {
            let _ = member(state, socket, guest).await;
        });
    }
}

async fn member(state: Arc<Mutex<Shared>>, socket: TcpStream, me: u64) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let nick = format!("guest-{me}");
    let (r, mut w) = socket.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Arc<str>>();
    // The writer: one write_all per queued message.
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if w.write_all(msg.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let _ = tx.send(format!("WELCOME {nick}\n").into());
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut joined: Vec<String> = Vec::new();
    loop {
        line.clear();
        let n = (&mut r).take(MAX_LINE).read_line(&mut line).await?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        let (cmd, rest) = l.split_once(' ').unwrap_or((l, ""));
        match cmd {
            "JOIN" if !rest.is_empty() && !rest.contains(' ') => {
                let mut s = state.lock().await;
                s.rooms
                    .entry(rest.to_string())
                    .or_default()
                    .insert(me, tx.clone());
                joined.push(rest.to_string());
                let _ = tx.send(format!("OK JOIN {rest}\n").into());
            }
            "SAY" => {
                let Some((room, text)) = rest.split_once(' ') else {
                    let _ = tx.send("ERR syntax SAY <room> <text>\n".into());
                    continue;
                };
                let mut s = state.lock().await;
                s.next_id += 1;
                let id = s.next_id;
                match s.rooms.get(room) {
                    Some(members) if members.contains_key(&me) => {
                        let msg: Arc<str> = format!("MSG {room} {id} {nick} {text}\n").into();
                        for peer in members.values() {
                            let _ = peer.send(msg.clone());
                        }
                    }
                    _ => {
                        let _ = tx.send("ERR not-member join the room first\n".into());
                    }
                }
            }
            "QUIT" => {
                let _ = tx.send("OK QUIT\n".into());
                break;
            }
            _ => {
                let _ = tx.send("ERR unknown-command\n".into());
            }
        }
    }
    let mut s = state.lock().await;
    for room in joined {
        if let Some(members) = s.rooms.get_mut(&room) {
            members.remove(&me);
            if members.is_empty() {
                s.rooms.remove(&room);
            }
        }
    }
    drop(s);
    drop(tx);
    let _ = writer.await;
    Ok(())
}
