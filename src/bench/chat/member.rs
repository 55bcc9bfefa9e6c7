//! A receiving member: connect, join, then read in large batches, every line checked in
//! place (each message of its room once, in each sender's order) with its delivery
//! latency recorded from the intended send time.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;

use super::{Ctx, Phase, Shared, HISTS, MAX_LINE, READ_BUF};
use crate::bench::fanout::source_ip;
use crate::bench::report::ErrorKind;
use crate::bench::workload::connect;

/// What a member is waiting for in its lines.
struct Member {
    i: usize,
    room: String,
    /// The senders of its room: (sender index, next sequence expected, end mark seen).
    expect: Vec<(usize, u64, bool)>,
    warm: bool,
    ended: usize,
    lat: Vec<u64>,
}

/// One member: connect, join, read until every sender of its room has ended (or the
/// run stops), then hold the connection until released.
pub(super) async fn member(ctx: Arc<Ctx>, i: usize, gate: Arc<Semaphore>) {
    let sh = &ctx.shared;
    let room_ix = i % ctx.cfg.rooms;
    let mut m = Member {
        i,
        room: ctx.room_name(room_ix),
        expect: (0..ctx.cfg.senders)
            .filter(|&j| ctx.senders[j].room == room_ix)
            .map(|j| (j, 0, false))
            .collect(),
        warm: false,
        ended: 0,
        lat: Vec::new(),
    };
    let setup = tokio::time::timeout_at(ctx.origin + ctx.cfg.setup_timeout, async {
        let io = |k: ErrorKind| k.name().to_string();
        if let Some(ramp) = ctx.cfg.ramp {
            let at = std::time::Duration::from_secs_f64(i as f64 / ramp);
            tokio::time::sleep_until(ctx.origin + at).await;
        }
        let permit = gate
            .acquire()
            .await
            .map_err(|_| "closed gate".to_string())?;
        let s = connect(
            ctx.cfg.addr,
            source_ip(i, ctx.cfg.src_first, ctx.cfg.src_ips),
        )
        .await
        .map_err(io)?;
        drop(permit);
        let (mut r, mut w) = s.into_split();
        let mut buf = Vec::with_capacity(READ_BUF);
        let welcome = read_line(&mut r, &mut buf).await.map_err(io)?;
        if !welcome.starts_with("WELCOME ") {
            return Err(format!("got {welcome:?} for WELCOME"));
        }
        w.write_all(format!("JOIN {}\n", m.room).as_bytes())
            .await
            .map_err(|e| io(ErrorKind::of_io(&e)))?;
        let ok = format!("OK JOIN {}", m.room);
        loop {
            let line = read_line(&mut r, &mut buf).await.map_err(io)?;
            if line == ok {
                break;
            }
            if line.starts_with("ERR") {
                return Err(format!("got {line:?} for JOIN"));
            }
        }
        Ok::<_, String>((r, w, buf))
    })
    .await;
    let (r, w, buf) = match setup {
        Ok(Ok(x)) => x,
        Ok(Err(why)) => return fail_setup(&ctx, i, why),
        Err(_) => return fail_setup(&ctx, i, "setup timeout".into()),
    };
    sh.joined.fetch_add(1, Ordering::Relaxed);
    let sender = if i < ctx.cfg.senders {
        Some(tokio::spawn(super::sender::send(ctx.clone(), i, w)))
    } else {
        // Kept open until the release: dropping it would shut our side down.
        drop_later(ctx.clone(), w);
        None
    };
    read_loop(&ctx, &mut m, r, buf).await;
    if let Some(t) = sender {
        let _ = t.await;
    }
}

/// Counts a member that could not connect or join and stops the run, keeping the
/// first reason for the error message.
fn fail_setup(ctx: &Ctx, i: usize, why: String) {
    ctx.shared.conn.fetch_add(1, Ordering::Relaxed);
    let mut first = ctx
        .shared
        .first_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    first.get_or_insert_with(|| format!("member {i}: {why}"));
    ctx.shared.abort.store(true, Ordering::Relaxed);
}

/// Keeps a receiver's write half open until the release.
fn drop_later(ctx: Arc<Ctx>, w: OwnedWriteHalf) {
    tokio::spawn(async move {
        let mut phase = ctx.phase.clone();
        let _ = phase.wait_for(|p| *p >= Phase::Release).await;
        drop(w);
    });
}

/// Reads one line during setup (the member then keeps what follows it in `buf`).
async fn read_line(r: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Result<String, ErrorKind> {
    loop {
        if let Some(n) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[..n])
                .trim_end_matches('\r')
                .to_string();
            buf.drain(..=n);
            return Ok(line);
        }
        if buf.len() > MAX_LINE {
            return Err(ErrorKind::WrongReply);
        }
        buf.reserve(READ_BUF);
        let n = r.read_buf(buf).await.map_err(|e| ErrorKind::of_io(&e))?;
        if n == 0 {
            return Err(ErrorKind::Closed);
        }
    }
}

/// What a line meant to the member.
enum Seen {
    Nothing,
    /// `ERR slow-consumer`: the server dropped this member.
    Dropped,
}

/// The member's read loop: batch reads, every complete line handled in place.
async fn read_loop(ctx: &Ctx, m: &mut Member, mut r: OwnedReadHalf, mut buf: Vec<u8>) {
    let sh = &ctx.shared;
    let mut phase = ctx.phase.clone();
    let mut finished = false;
    let finish = |finished: &mut bool| {
        if !*finished {
            *finished = true;
            sh.finished.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        // Handle every complete line in the buffer.
        let mut start = 0;
        let mut dropped = false;
        let now_us = ctx.us();
        while let Some(n) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + n];
            start += n + 1;
            if let Seen::Dropped = handle_line(ctx, m, line, now_us) {
                dropped = true;
                break;
            }
        }
        buf.drain(..start);
        record(ctx, m);
        if dropped {
            sh.slow_drops.fetch_add(1, Ordering::Relaxed);
            let missed = unread(ctx, m);
            sh.missed_by_dropped.fetch_add(missed, Ordering::Relaxed);
            finish(&mut finished);
            return;
        }
        if m.ended == m.expect.len() && m.warm && !finished {
            finish(&mut finished);
        }
        if buf.len() > MAX_LINE {
            sh.wrong.fetch_add(1, Ordering::Relaxed);
            finish(&mut finished);
            return;
        }
        if buf.capacity() - buf.len() < READ_BUF / 2 {
            buf.reserve(READ_BUF);
        }
        tokio::select! {
            res = r.read_buf(&mut buf) => match res {
                Ok(0) | Err(_) => {
                    if !finished {
                        // Closed or reset before the end: a connection error, and
                        // whatever it had still to get is missing.
                        sh.conn.fetch_add(1, Ordering::Relaxed);
                        let missed = unread(ctx, m);
                        sh.missing.fetch_add(missed, Ordering::Relaxed);
                        finish(&mut finished);
                    }
                    return;
                }
                Ok(_) => {}
            },
            p = phase.wait_for(|p| *p >= Phase::Stop) => {
                let p = p.map(|p| *p).unwrap_or(Phase::Release);
                if !finished {
                    sh.timeout.fetch_add(1, Ordering::Relaxed);
                    let missed = unread(ctx, m);
                    sh.missing.fetch_add(missed, Ordering::Relaxed);
                    finish(&mut finished);
                }
                if p >= Phase::Release {
                    return;
                }
                break;
            }
        }
    }
    // Finished: hold the connection (reading nothing more) until released.
    let _ = phase.wait_for(|p| *p >= Phase::Release).await;
}

/// Messages of this member's senders it has not read yet (final counts once the
/// senders are done).
fn unread(ctx: &Ctx, m: &Member) -> u64 {
    m.expect
        .iter()
        .map(|&(j, next, _)| {
            ctx.senders[j]
                .sent
                .load(Ordering::Relaxed)
                .saturating_sub(next)
        })
        .sum()
}

/// Moves the latencies of one batch into the member's shared histogram.
fn record(ctx: &Ctx, m: &mut Member) {
    if m.lat.is_empty() {
        return;
    }
    let n = m.lat.len() as u64;
    {
        let mut h = ctx.hists[m.i % HISTS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &us in &m.lat {
            let _ = h.record(us.max(1));
        }
    }
    m.lat.clear();
    let sh = &ctx.shared;
    sh.deliveries.fetch_add(n, Ordering::Relaxed);
    sh.last_delivery_us.fetch_max(ctx.us(), Ordering::Relaxed);
}

/// Checks one line; counts what is wrong.
fn handle_line(ctx: &Ctx, m: &mut Member, line: &[u8], now_us: u64) -> Seen {
    let sh = &ctx.shared;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let wrong = || {
        sh.wrong.fetch_add(1, Ordering::Relaxed);
        Seen::Nothing
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return wrong();
    };
    if line == "ERR slow-consumer" {
        return Seen::Dropped;
    }
    let Some(rest) = line.strip_prefix("MSG ") else {
        // Presence events (JOIN, PART, NICK) of the room are not what is measured.
        return if line.starts_with("ERR") {
            wrong()
        } else {
            Seen::Nothing
        };
    };
    // MSG <room> <id> <nick> <text>
    let mut f = rest.splitn(4, ' ');
    let (Some(room), Some(_id), Some(_nick), Some(text)) = (f.next(), f.next(), f.next(), f.next())
    else {
        return wrong();
    };
    if room != m.room {
        return wrong();
    }
    let mut t = text.split(' ');
    let (Some(kind), Some(j), Some(n)) = (t.next(), t.next(), t.next()) else {
        return wrong();
    };
    let (Ok(j), Ok(n)) = (j.parse::<usize>(), n.parse::<u64>()) else {
        return wrong();
    };
    let Some(e) = m.expect.iter_mut().find(|e| e.0 == j) else {
        return wrong();
    };
    match kind {
        // The warm-up, said by the room's first sender.
        "w" => m.warm_up(sh),
        "m" => {
            let Some(Ok(at)) = t.next().map(str::parse::<u64>) else {
                return wrong();
            };
            if e.2 {
                // After the end mark.
                sh.dup.fetch_add(1, Ordering::Relaxed);
            } else if n >= e.1 {
                // In order, or after a gap the member counts as missing.
                if n > e.1 {
                    sh.missing.fetch_add(n - e.1, Ordering::Relaxed);
                }
                e.1 = n + 1;
                let us = now_us.saturating_sub(at);
                m.lat.push(us);
                ctx.last.note(j, n, us);
            } else {
                sh.dup.fetch_add(1, Ordering::Relaxed);
            }
        }
        "e" => {
            if !e.2 {
                e.2 = true;
                m.ended += 1;
                sh.missing
                    .fetch_add(n.saturating_sub(e.1), Ordering::Relaxed);
                e.1 = e.1.max(n);
            } else {
                sh.dup.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => return wrong(),
    }
    Seen::Nothing
}

impl Member {
    fn warm_up(&mut self, sh: &Shared) {
        if !self.warm {
            self.warm = true;
            sh.warm.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::watch;
    use tokio::time::Instant;

    use super::super::{ChatConfig, LastDelivery};
    use super::*;

    fn ctx(cfg: ChatConfig) -> Ctx {
        Ctx::new(cfg, Instant::now(), watch::channel(Phase::Send).1)
    }

    fn member(i: usize, senders: usize) -> Member {
        Member {
            i,
            room: "bench0".into(),
            expect: (0..senders).map(|j| (j, 0, false)).collect(),
            warm: true,
            ended: 0,
            lat: Vec::new(),
        }
    }

    #[test]
    fn a_message_s_last_delivery_is_its_latest_reader_s() {
        let mut cfg = ChatConfig::new(([127, 0, 0, 1], 1).into(), 2, 1);
        cfg.senders = 2;
        cfg.rate = 20.0;
        cfg.duration = Duration::from_secs(1);
        let ctx = ctx(cfg);
        let (mut a, mut b) = (member(0, 2), member(1, 2));
        // Sender 0's message 0, said at 1,000 µs: read by a at 1,200, by b at 1,900.
        handle_line(&ctx, &mut a, b"MSG bench0 1 g0 m 0 0 1000", 1200);
        handle_line(&ctx, &mut b, b"MSG bench0 1 g0 m 0 0 1000", 1900);
        // Its message 1: b first, then a; a's duplicate later changes nothing.
        handle_line(&ctx, &mut b, b"MSG bench0 2 g0 m 0 1 2000", 2100);
        handle_line(&ctx, &mut a, b"MSG bench0 2 g0 m 0 1 2000", 2500);
        handle_line(&ctx, &mut a, b"MSG bench0 2 g0 m 0 1 2000", 9000);
        // Sender 1's message 0, read by a alone so far.
        handle_line(&ctx, &mut a, b"MSG bench0 3 g1 m 1 0 3000", 3300);
        assert_eq!(ctx.shared.dup.load(Ordering::Relaxed), 1);
        let v = ctx.last.values().unwrap();
        // 20 msg/s over 2 senders for 1 s: 11 slots a sender.
        assert_eq!(v.len(), 22);
        assert_eq!((v[0], v[1], v[2], v[11], v[12]), (900, 500, 0, 300, 0));
        assert_eq!(
            LastDelivery::of(&v),
            Some(LastDelivery {
                messages: 3,
                p50_us: 500,
                max_us: 900
            })
        );
        // A number past a sender's slots is not taken for the next sender's message.
        handle_line(&ctx, &mut b, b"MSG bench0 4 g0 m 0 11 4000", 4700);
        assert_eq!(ctx.last.values().unwrap()[11], 300);
    }

    #[test]
    fn a_run_of_too_many_messages_tracks_none() {
        let mut cfg = ChatConfig::new(([127, 0, 0, 1], 1).into(), 2, 1);
        cfg.duration = Duration::from_secs(60);
        // A million a second, and a rate whose count is past any number's range.
        for rate in [1e6, f64::MAX] {
            cfg.rate = rate;
            let ctx = ctx(cfg.clone());
            let line = b"MSG bench0 1 g0 m 0 0 1000";
            handle_line(&ctx, &mut member(0, 1), line, 1200);
            assert_eq!(ctx.last.values(), None, "rate {rate}");
        }
    }
}
