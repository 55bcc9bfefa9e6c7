//! The minimal tokio ACK server, the common shape (a task per connection, a 1 KiB
//! stack buffer, read then write_all), kept as the peer our async model is measured
//! against. Port from argv (default 9999). Run: `cargo run --release --example
//! peer_tokio_ack -- 9999`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(9999);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (mut socket, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = [0; 1024];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if socket.write_all(b"ACK!").await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}
