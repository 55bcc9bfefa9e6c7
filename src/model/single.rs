//! `single`: one thread accepts and serves one client at a time, as the seed's first
//! server does. The next client waits in the listen backlog until the current one
//! leaves: "if one client takes time, others must wait".

use std::io;
use std::net::TcpListener;
use std::thread::JoinHandle;

use super::blocking::{accept, serve_or_park, Finishing, STACK};
use super::{Ctx, BACKOFF_START};
use crate::service::Service;

pub(crate) fn spawn<S: Service>(listener: TcpListener, ctx: Ctx<S>) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let live = ctx.drain.live();
    let closed = ctx.stop.live();
    std::thread::Builder::new()
        .name(format!("{}-single", ctx.service.name()))
        .stack_size(STACK)
        .spawn(move || {
            // Declared first, so dropped last: its count reaches 0 once the socket is closed.
            let _closed = closed;
            let listener = listener;
            let _live = live;
            let mut backoff = BACKOFF_START;
            // At shutdown, clients told goodbye are finished together while the
            // backlog is emptied: none waits for another's lingering close.
            let mut finishing = Finishing::default();
            while let Some((stream, peer)) = accept(&listener, &ctx, &mut backoff) {
                if ctx.admit() {
                    match serve_or_park(stream, peer, &ctx) {
                        Some(parked) => finishing.push(parked, &ctx),
                        None => ctx.release(),
                    }
                }
            }
            finishing.run(&ctx);
        })
}
