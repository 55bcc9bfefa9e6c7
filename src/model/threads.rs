//! `threads`: a thread per connection, as in seeds 000–003. Each thread blocks in
//! `poll(2)` on its own client; the accept loop only admits and spawns.

use std::io;
use std::net::TcpListener;
use std::thread::JoinHandle;

use super::blocking::{accept, serve, STACK};
use super::{Ctx, BACKOFF_START};
use crate::service::Service;

pub(crate) fn spawn<S: Service>(listener: TcpListener, ctx: Ctx<S>) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let live = ctx.drain.live();
    std::thread::Builder::new()
        .name(format!("{}-accept", ctx.service.name()))
        .spawn(move || {
            let _live = live;
            let mut backoff = BACKOFF_START;
            while let Some((stream, peer)) = accept(&listener, &ctx, &mut backoff) {
                let admitted = ctx.admit();
                if !admitted && !super::refusal_slot(&ctx) {
                    continue; // Too many refusals in flight: close without a word.
                }
                let c = ctx.clone();
                let spawned = std::thread::Builder::new()
                    .stack_size(STACK)
                    .spawn(move || {
                        serve(stream, peer, &c, !admitted);
                        if admitted {
                            c.release();
                        } else {
                            super::refusal_done(&c);
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!("cannot start a thread for {peer}: {e}");
                    if admitted {
                        ctx.release();
                    } else {
                        super::refusal_done(&ctx);
                    }
                }
            }
        })
}
