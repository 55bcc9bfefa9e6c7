//! `pool`: a fixed set of worker threads takes clients from a bounded queue, as the
//! seed's `ThreadPoolExecutor(max_workers=10)`. A client beyond the workers waits in
//! the queue, unserved, until a worker is free; beyond `--max-conns` (running plus
//! queued) it is refused.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;

use super::blocking::{accept, serve, serve_or_park, Finishing, STACK};
use super::{Ctx, BACKOFF_START};
use crate::service::Service;

pub(crate) fn spawn<S: Service>(
    listener: TcpListener,
    ctx: Ctx<S>,
    workers: usize,
) -> io::Result<Vec<JoinHandle<()>>> {
    listener.set_nonblocking(true)?;
    // Admission bounds the queue (running plus queued clients are at most
    // `max_conns`), so the channel itself needs no bound of its own, and a reload that
    // raises `max_conns` raises how many may wait.
    let (tx, rx) = crossbeam_channel::unbounded::<(TcpStream, SocketAddr)>();
    let mut handles = Vec::with_capacity(workers + 1);
    for i in 0..workers.max(1) {
        let rx = rx.clone();
        let c = ctx.clone();
        let live = ctx.drain.live();
        handles.push(
            std::thread::Builder::new()
                .name(format!("{}-pool-{i}", c.service.name()))
                .stack_size(STACK)
                .spawn(move || {
                    let _live = live;
                    // At shutdown, each client is told goodbye and parked here, and
                    // the worker takes the next one from the queue at once: the
                    // queued clients are answered in a moment, not one lingering
                    // close after another.
                    let mut finishing = Finishing::default();
                    for (stream, peer) in rx {
                        match serve_or_park(stream, peer, &c) {
                            Some(parked) => finishing.push(parked, &c),
                            None => c.release(),
                        }
                    }
                    finishing.run(&c);
                })?,
        );
    }
    let live = ctx.drain.live();
    let closed = ctx.stop.live();
    handles.push(
        std::thread::Builder::new()
            .name(format!("{}-accept", ctx.service.name()))
            .spawn(move || {
                // Declared first, so dropped last: its count reaches 0 once the socket is closed.
                let _closed = closed;
                let listener = listener;
                let _live = live;
                let mut backoff = BACKOFF_START;
                while let Some((stream, peer)) = accept(&listener, &ctx, &mut backoff) {
                    if ctx.admit() {
                        if let Err(e) = tx.try_send((stream, peer)) {
                            // Cannot happen while admission bounds the queue; refuse if it does.
                            ctx.release();
                            let (stream, peer) = e.into_inner();
                            refuse(stream, peer, &ctx);
                        }
                    } else {
                        refuse(stream, peer, &ctx);
                    }
                }
                // Dropping the sender lets the workers finish the queue and exit.
            })?,
    );
    Ok(handles)
}

/// Tells a refused client why on a short-lived thread of its own, so the busy workers
/// are not involved.
fn refuse<S: Service>(stream: TcpStream, peer: SocketAddr, ctx: &Ctx<S>) {
    if !super::refusal_slot(ctx) {
        return;
    }
    let c = ctx.clone();
    let spawned = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            serve(stream, peer, &c, true);
            super::refusal_done(&c);
        });
    if spawned.is_err() {
        super::refusal_done(ctx);
    }
}
