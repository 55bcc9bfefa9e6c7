// The admin dashboard: polls /stats every second and draws the last few minutes on
// canvases. No library: the page must work offline under a strict CSP.
'use strict';

const KEEP = 180; // samples kept per series (three minutes)
const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#17becf'];
const history = []; // { t, snap }
const $ = (id) => document.getElementById(id);

function fmtBytes(n) {
  if (n == null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : Math.round(n)) + ' ' + units[i];
}

function fmtNum(n) {
  if (n == null) return '–';
  return n >= 100 || Number.isInteger(n) ? Math.round(n).toLocaleString('en') : n.toFixed(1);
}

function sum(snap, f) {
  return snap.services.reduce((a, s) => a + f(s), 0);
}

// Per-second rate of `f(snap)` between consecutive samples.
function rates(f) {
  const out = [];
  for (let i = 1; i < history.length; i++) {
    const a = history[i - 1], b = history[i];
    const dt = b.snap.uptime_seconds - a.snap.uptime_seconds;
    out.push(dt > 0 ? Math.max(0, (f(b.snap) - f(a.snap)) / dt) : 0);
  }
  return out;
}

// The `q` quantile, in seconds, of the observations between two readings of a
// histogram (bucket counts, not cumulative, indexed like `bounds` plus +Inf), as
// Prometheus's histogram_quantile estimates it: linear within the bucket. Null when
// nothing was observed.
function quantile(q, bounds, before, after) {
  const d = after.map((n, i) => n - (before ? before[i] || 0 : 0));
  const total = d.reduce((a, b) => a + b, 0);
  if (total <= 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < d.length; i++) {
    if (seen + d[i] >= rank && d[i] > 0) {
      if (i >= bounds.length) return bounds[bounds.length - 1];
      const lo = i ? bounds[i - 1] : 0;
      return lo + (bounds[i] - lo) * ((rank - seen) / d[i]);
    }
    seen += d[i];
  }
  return bounds[bounds.length - 1];
}

// Every histogram of a snapshot by name: `service kind` for answers, `chat fan-out`.
function histograms(snap) {
  const out = {};
  for (const s of snap.services) {
    for (const [kind, h] of Object.entries(s.latency || {})) out[`${s.service} ${kind}`] = h.buckets;
  }
  if (snap.chat && snap.chat.fanout && snap.chat.fanout.count) out['chat fan-out'] = snap.chat.fanout.buckets;
  return out;
}

// Every answer histogram of a snapshot merged into one.
function allAnswers(snap) {
  let m = null;
  for (const s of snap.services) {
    for (const h of Object.values(s.latency || {})) {
      m = m ? m.map((n, i) => n + h.buckets[i]) : h.buckets.slice();
    }
  }
  return m;
}

function draw(id, series) {
  const c = $(id);
  const g = c.getContext('2d');
  const w = c.width, h = c.height, pad = 34;
  g.clearRect(0, 0, w, h);
  let max = 0;
  for (const s of series) for (const v of s.values) if (v != null) max = Math.max(max, v);
  max = max > 0 ? max * 1.1 : 1;
  g.strokeStyle = '#eee';
  g.fillStyle = '#888';
  g.font = '11px sans-serif';
  for (let k = 0; k <= 4; k++) {
    const y = h - 14 - (k / 4) * (h - 24);
    g.beginPath(); g.moveTo(pad, y); g.lineTo(w, y); g.stroke();
    g.fillText(fmtNum((max * k) / 4), 0, y + 4);
  }
  series.forEach((s, n) => {
    g.strokeStyle = s.color || COLORS[n % COLORS.length];
    g.lineWidth = 1.5;
    g.beginPath();
    const step = (w - pad) / (KEEP - 1);
    const off = KEEP - s.values.length;
    let started = false;
    s.values.forEach((v, i) => {
      if (v == null) return;
      const x = pad + (off + i) * step;
      const y = h - 14 - (v / max) * (h - 24);
      if (started) g.lineTo(x, y); else { g.moveTo(x, y); started = true; }
    });
    g.stroke();
  });
  $(id.replace('c-', 'l-')).replaceChildren(...series.map((s, n) => {
    const span = document.createElement('span');
    const dot = document.createElement('i');
    dot.style.background = s.color || COLORS[n % COLORS.length];
    const last = s.values.length ? s.values[s.values.length - 1] : null;
    span.append(dot, `${s.name} ${fmtNum(last)}`);
    return span;
  }));
}

function render() {
  const snap = history[history.length - 1].snap;
  $('model').textContent = `model ${snap.model} · v${snap.version}`;
  $('uptime').textContent = `up ${Math.round(snap.uptime_seconds)} s`;
  const state = $('state');
  state.textContent = snap.draining ? 'draining' : snap.ready ? 'ready' : 'not ready';
  state.className = 'badge ' + (snap.ready ? 'ready' : 'down');
  const acc = rates((s) => sum(s, (x) => x.accepted));
  const refusedAll = (x) => x.refused + x.refused_per_ip + x.refused_tls + x.refused_auth;
  const ref = rates((s) => sum(s, refusedAll));
  $('open').textContent = fmtNum(snap.memory.open_connections);
  $('accepts').textContent = fmtNum(acc.length ? acc[acc.length - 1] : 0);
  $('refusals').textContent = fmtNum(ref.length ? ref[ref.length - 1] : 0);
  $('rss').textContent = fmtBytes(snap.memory.rss_bytes);
  $('perconn').textContent = `${fmtBytes(snap.memory.user_bytes_per_connection)} · ${fmtBytes(snap.memory.kernel_bytes_per_socket)}`;
  $('buffered').textContent = `${fmtBytes(snap.buffered.used_bytes)} of ${fmtBytes(snap.buffered.limit_bytes)}`;
  const tlsOf = (x) => x.tls || { handshakes: {}, failures: {} };
  const shakes = sum(snap, (x) => Object.values(tlsOf(x).handshakes)
    .reduce((a, k) => a + Object.values(k).reduce((b, n) => b + n, 0), 0));
  const failed = sum(snap, (x) => Object.values(tlsOf(x).failures).reduce((a, n) => a + n, 0));
  $('tls').textContent = snap.services.some((x) => x.tls) ? `${fmtNum(shakes)} · ${fmtNum(failed)}` : 'no TLS';
  const chat = snap.chat;
  $('chat').textContent = chat ? `${fmtNum(chat.rooms)} · ${fmtNum(chat.memberships)}` : 'no chat';
  const redis = chat && chat.redis;
  $('redis').textContent = redis
    ? `${redis.up ? 'up' : 'DOWN'} · ${redis.connects} connects, ${redis.losses} lost`
    : 'not used';

  const names = snap.services.map((s) => s.service);
  const byName = (name, f) => history.map((h) => {
    const s = h.snap.services.find((x) => x.service === name);
    return s ? f(s) : null;
  });
  draw('c-open', names.map((n) => ({ name: n, values: byName(n, (s) => s.open) })));
  draw('c-accept', [
    { name: 'accepts/s', values: acc, color: '#2ca02c' },
    { name: 'refusals/s', values: ref, color: '#d62728' },
  ]);
  const answers = rates((s) => sum(s, (x) => Object.values(x.latency || {}).reduce((a, h) => a + h.count, 0)));
  const msg = [
    { name: 'answers/s', values: answers },
    { name: 'writes/s', values: rates((s) => sum(s, (x) => x.writes)) },
  ];
  if (chat) msg.push({ name: 'chat messages/s', values: rates((s) => (s.chat ? s.chat.messages : 0)) });
  if (chat) msg.push({ name: 'chat deliveries/s', values: rates((s) => (s.chat ? s.chat.deliveries : 0)) });
  draw('c-msg', msg);
  const bounds = snap.latency_bounds || [];
  const names2 = Object.keys(histograms(snap));
  const lat = [];
  for (const name of names2) {
    for (const q of [0.5, 0.99]) {
      const values = [];
      for (let i = 1; i < history.length; i++) {
        const a = histograms(history[i - 1].snap)[name], b = histograms(history[i].snap)[name];
        const v = b ? quantile(q, bounds, a, b) : null;
        values.push(v == null ? null : v * 1e6);
      }
      lat.push({ name: `${name} p${q * 100}`, values });
    }
  }
  draw('c-lat', lat);
  $('answers').textContent = fmtNum(answers.length ? answers[answers.length - 1] : 0);
  if (history.length > 1) {
    const a = allAnswers(history[history.length - 2].snap), b = allAnswers(snap);
    const p50 = b && quantile(0.5, bounds, a, b), p99 = b && quantile(0.99, bounds, a, b);
    $('latency').textContent = p50 == null ? 'idle' : `${fmtNum(p50 * 1e6)} · ${fmtNum(p99 * 1e6)} µs`;
  }
  draw('c-mem', [
    { name: 'user', values: history.map((h) => h.snap.memory.user_bytes_per_connection) },
    { name: 'kernel', values: history.map((h) => h.snap.memory.kernel_bytes_per_socket) },
  ]);

  const rows = snap.services.map((s) => {
    const tr = document.createElement('tr');
    const cells = [s.service, s.open, s.accepted, refusedAll(s), s.closed,
      fmtBytes(s.bytes_in), fmtBytes(s.bytes_out), s.idle_timeouts, s.slow_consumers + s.slow_readers];
    for (const v of cells) {
      const td = document.createElement('td');
      td.textContent = typeof v === 'number' ? fmtNum(v) : v;
      tr.append(td);
    }
    return tr;
  });
  document.querySelector('#services tbody').replaceChildren(...rows);
}

async function poll() {
  try {
    const r = await fetch('/stats', { cache: 'no-store' });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    history.push({ t: Date.now(), snap: await r.json() });
    if (history.length > KEEP) history.shift();
    render();
  } catch (e) {
    const state = $('state');
    state.textContent = `unreachable (${e.message})`;
    state.className = 'badge down';
  }
}

poll();
setInterval(poll, 1000);
