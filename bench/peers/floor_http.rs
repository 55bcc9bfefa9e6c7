//! The HTTP floor: a server that does nothing but the system calls of a keep-alive
//! exchange, so the CPU it spends per request is what this machine's kernel and tokio
//! charge for one, and any server's figure above it is the server's own work. It
//! answers one fixed response (status line, `Content-Length`, the `http` service's
//! body) per `\r\n\r\n` it reads and skips everything a server owes its clients:
//! no parsing (a request is counted by its blank line, whatever precedes it), no
//! headers beyond the length, no `Date`, no limits, timeouts or logs. Pipelined
//! requests read at once are answered with one `write` of as many responses. The
//! shape is the common tokio one (a task per connection, a stack buffer). Port from
//! argv (default 8080). Run: `cargo run --release --example floor_http -- 8080`.
//!
//! With `head` after the port it sends the head a server owes instead (`Date`,
//! `Content-Type`: the bytes of the `http` service's, the date fixed), still
//! with no parsing: what is left between it and a real server is the server's work,
//! not the bytes its responses must carry.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The one response: the `http` service's body, framed by its length.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 39\r\n\r\nHello from Multi-threaded Flask Server!";

/// The same response with the head a server owes, as many bytes as the `http`
/// service's (a fixed date, as long as any).
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
    Date: Fri, 04 Dec 2026 18:52:29 GMT\r\nContent-Type: text/plain; charset=utf-8\r\n\
    Content-Length: 39\r\n\r\nHello from Multi-threaded Flask Server!";

/// Most responses one write carries (a 64 KiB read holds at most this many requests
/// of the tester's 40-odd bytes in practice; beyond it the rest go in further writes).
const BATCH: usize = 64;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let response = match std::env::args().nth(2).as_deref() {
        Some("head") => RESPONSE_HEAD,
        _ => RESPONSE,
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let batch: Vec<u8> = response.repeat(BATCH);
    let batch: &'static [u8] = batch.leak();
    loop {
        let (mut socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            // Bytes of a blank line matched so far across reads (0..=3).
            let mut state = 0usize;
            loop {
                let n = match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut count = 0usize;
                for &b in &buf[..n] {
                    state = match (state, b) {
                        (3, b'\n') => {
                            count += 1;
                            0
                        }
                        (1, b'\n') => 2,
                        (2, b'\r') => 3,
                        (_, b'\r') => 1,
                        _ => 0,
                    };
                }
                while count > 0 {
                    let k = count.min(BATCH);
                    if socket
                        .write_all(&batch[..k * response.len()])
                        .await
                        .is_err()
                    {
                        return;
                    }
                    count -= k;
                }
            }
        });
    }
}
