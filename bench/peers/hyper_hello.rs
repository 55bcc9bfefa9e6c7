//! The hyper 1.x HTTP/1.1 server of hyper's hello example shape: a task per
//! connection served by `http1::Builder` with its defaults (keep-alive and pipelining,
//! a `Date` header, header parsing, its own buffers), every request answered with the
//! `http` service's body, which `bench http` checks. The HTTP peer users pick in Rust.
//! Port from argv (default 8080). Run: `cargo run --release --example
//! peer_hyper_hello -- 8080`.

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The `http` service's body.
const BODY: &[u8] = b"Hello from Multi-threaded Flask Server!";

async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(BODY))))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service_fn(hello))
                .await;
        });
    }
}
