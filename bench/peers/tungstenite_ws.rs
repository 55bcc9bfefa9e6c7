//! The tokio-tungstenite WebSocket server of the crate's echo example shape: a task
//! per connection, `accept_async`, and for every text or binary message a reply
//! `Server received: <message>` (the `ws` service's reply, which `bench ws` checks)
//! sent with `send` (a flush per message). The WebSocket peer users pick in Rust.
//! Port from argv (default 8765). Run: `cargo run --release --example
//! peer_tungstenite_ws -- 8765`.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

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
            let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                let reply = match msg {
                    Message::Text(t) => Message::text(format!("Server received: {t}")),
                    Message::Binary(b) => {
                        let mut v = b"Server received: ".to_vec();
                        v.extend_from_slice(&b);
                        Message::binary(v)
                    }
                    Message::Close(_) => break,
                    _ => continue,
                };
                if ws.send(reply).await.is_err() {
                    break;
                }
            }
        });
    }
}
