//! A publishing member: the warm-up message, then its share of the rate on a fixed
//! schedule, then its end mark.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Instant;

use super::{Ctx, Phase};

/// A sender: the warm-up (first sender of each room), then its share of the rate on
/// a fixed schedule (messages already due are written together), then its end mark.
pub(super) async fn send(ctx: Arc<Ctx>, j: usize, mut w: OwnedWriteHalf) {
    let sh = &ctx.shared;
    let info = &ctx.senders[j];
    let room = ctx.room_name(info.room);
    let mut phase = ctx.phase.clone();
    // A failed write is a connection error; the members count what never came.
    let fail = |_: std::io::Error| {
        sh.conn.fetch_add(1, Ordering::Relaxed);
    };
    if phase.wait_for(|p| *p >= Phase::WarmUp).await.is_err() {
        return;
    }
    if j < ctx.cfg.rooms {
        if let Err(e) = w
            .write_all(format!("SAY {room} w {j} 0\n").as_bytes())
            .await
        {
            return fail(e);
        }
    }
    match phase.wait_for(|p| *p >= Phase::Send).await {
        Ok(p) if *p == Phase::Send => {}
        _ => return,
    }
    let interval = Duration::from_secs_f64(ctx.cfg.senders as f64 / ctx.cfg.rate);
    let start = Instant::now();
    let end = start + ctx.cfg.duration;
    // Spread the senders' schedules over one interval.
    let mut next = start + interval.mul_f64(j as f64 / ctx.cfg.senders as f64);
    let mut seq = 0u64;
    let mut out = String::new();
    while next < end {
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        out.clear();
        while next <= now && next < end {
            let at = (next - ctx.origin).as_micros();
            out += &format!("SAY {room} m {j} {seq} {at}\n");
            seq += 1;
            next += interval;
        }
        if let Err(e) = w.write_all(out.as_bytes()).await {
            info.sent.store(seq, Ordering::Relaxed);
            return fail(e);
        }
        info.sent.store(seq, Ordering::Relaxed);
    }
    if let Err(e) = w
        .write_all(format!("SAY {room} e {j} {seq}\n").as_bytes())
        .await
    {
        return fail(e);
    }
    let _ = phase.wait_for(|p| *p >= Phase::Release).await;
}
