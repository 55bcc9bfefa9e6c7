//! `threads`: a thread per connection, as in seeds 000–003. Each thread blocks in
//! `poll(2)` on its own client; the accept loop only admits and hands out.
//!
//! A thread whose client has left waits a few seconds for the next one before it
//! exits, so a stream of short connections does not pay for a thread's creation and
//! teardown (stack mappings, signal stack) each time: every connection still has a
//! thread of its own for its whole life.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::blocking::{accept, serve, STACK};
use super::drain::Live;
use super::{Ctx, BACKOFF_START};
use crate::service::Service;

/// How long a thread without a client waits for the next one.
const SPARE_FOR: Duration = Duration::from_secs(5);

/// A connection handed to a thread: the socket, the client, whether it was admitted
/// (or is only told it is refused), and its place in the drain's count, taken before
/// the accept loop lets go of it: otherwise the count could fall to zero between the
/// accept loop's exit and the thread's start, and the process exit with this client
/// unanswered.
type Handoff = (TcpStream, SocketAddr, bool, Live);

pub(crate) fn spawn<S: Service>(listener: TcpListener, ctx: Ctx<S>) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let live = ctx.drain.live();
    let closed = ctx.stop.live();
    std::thread::Builder::new()
        .name(format!("{}-accept", ctx.service.name()))
        .spawn(move || {
            // Declared first, so dropped last: its count reaches 0 once the socket is closed.
            let _closed = closed;
            let listener = listener;
            let _live = live;
            // A rendezvous channel: a send succeeds only if a spare thread is waiting.
            let (spare_tx, spare_rx) = crossbeam_channel::bounded::<Handoff>(0);
            let mut backoff = BACKOFF_START;
            while let Some((stream, peer)) = accept(&listener, &ctx, &mut backoff) {
                let admitted = ctx.admit();
                if !admitted && !super::refusal_slot(&ctx) {
                    continue; // Too many refusals in flight: close without a word.
                }
                let handoff = (stream, peer, admitted, ctx.drain.live());
                let first = match spare_tx.try_send(handoff) {
                    Ok(()) => continue,
                    Err(e) => e.into_inner(),
                };
                let (c, rx) = (ctx.clone(), spare_rx.clone());
                let spawned = std::thread::Builder::new()
                    .stack_size(STACK)
                    .spawn(move || connection_thread(first, &c, &rx));
                if let Err(e) = spawned {
                    tracing::error!("cannot start a thread for {peer}: {e}");
                    if admitted {
                        ctx.release();
                    } else {
                        super::refusal_done(&ctx);
                    }
                }
            }
            // Dropping the sender tells the spare threads to exit.
        })
}

/// Serves connections one after another, each for its whole life, until none comes
/// for [`SPARE_FOR`] or the server stops accepting.
fn connection_thread<S: Service>(first: Handoff, ctx: &Ctx<S>, spare: &Receiver<Handoff>) {
    let mut next = first;
    loop {
        let (stream, peer, admitted, live) = next;
        serve(stream, peer, ctx, !admitted);
        drop(live);
        if admitted {
            ctx.release();
        } else {
            super::refusal_done(ctx);
        }
        next = match spare.recv_timeout(SPARE_FOR) {
            Ok(handoff) => handoff,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        };
    }
}
