// The chat page: one WebSocket to /chat/ws speaking the JSON protocol of docs/chat.md.
// Joining a room asks for its history ("after": "0"), so the room's recent messages
// come first and the live ones follow with no gap and no duplicate. It reconnects by
// itself (backoff capped at 5 s), shows that it is reconnecting and when it is back,
// and rejoins each room with "after" the last message id it saw there, so nothing said
// meanwhile is missed. Messages replayed by a join sit under a divider ("recent
// history", "missed while offline"); every message shows the time it was said (the
// server's `time`), replayed or live.
// When the server requires tokens (its welcome says "auth": true) the page asks for
// one, keeps it for the tab's life (sessionStorage) and presents it on every
// reconnection (`?token=` on the upgrade: browsers cannot set WebSocket headers); the
// nick is then the token's, so the nick form is hidden. A refused or expired token is
// forgotten and asked for again.
// A room of more members than the server's presence limit (its welcome's
// "presence_limit") gets no join and part objects, so the shown room's member list is
// asked for again every WHO_REFRESH_MS there, and its title says so.
'use strict';

const $ = (id) => document.getElementById(id);
const MAX_LOG = 500; // lines kept per room
const WHO_REFRESH_MS = 10_000; // how often a large room's member list is asked for

let ws = null;
let me = null; // our nick, as the server knows it
let wanted = null; // the nick the user asked for, kept across reconnections
let current = null; // the room shown
let backoff = 500;
let dropped = null; // when the connection was lost, until the server welcomes us back
let backUntil = 0; // "back online" is shown until this time (ms), then plain "online"
const TOKEN_KEY = 'multiclient-chat-token';
let token = sessionStorage.getItem(TOKEN_KEY); // the token presented on (re)connection
let authOn = false; // the server requires a token
let presenceLimit = Infinity; // larger rooms get no join and part objects

function online() {
  const back = Date.now() < backUntil;
  status((back ? 'back online as ' : 'online as ') + me, true);
  if (back) setTimeout(() => { if (ws !== null) online(); }, backUntil - Date.now() + 10);
}
const rooms = new Map(); // name -> { log, members, last, seen, unread, joined, replay }

function room(name) {
  if (!rooms.has(name)) {
    rooms.set(name, {
      log: [], members: new Set(), last: null, seen: new Set(), unread: 0, joined: false,
      // Between our join and the answer to the "who" sent after its "ok": the
      // messages arriving then are the join's replay, not live ones.
      replay: null,
    });
  }
  return rooms.get(name);
}

/** `HH:MM` of `ms` (Unix milliseconds; now without it), and the full date for a tooltip. */
function now(ms) {
  const d = ms === undefined ? new Date() : new Date(ms);
  return { short: d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }), full: d.toString() };
}

/** Joins `name`, replaying what was said after the last message seen there. */
function join(name, label) {
  const r = room(name);
  r.replay = { label, shown: false };
  send({ type: 'join', room: name, after: r.last ?? '0' });
}

function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

function status(text, on) {
  const s = $('status');
  s.textContent = text;
  s.className = 'status ' + (on ? 'on' : 'off');
}

function connect() {
  if (dropped !== null) status('reconnecting…', false);
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const query = token ? '?token=' + encodeURIComponent(token) : '';
  ws = new WebSocket(proto + '//' + location.host + '/chat/ws' + query);
  ws.onmessage = (e) => {
    let m;
    try { m = JSON.parse(e.data); } catch { return; }
    handle(m);
  };
  ws.onclose = (e) => {
    ws = null;
    if (dropped === null) {
      dropped = now();
      for (const name of rooms.keys()) log(name, { kind: 'event', text: 'connection lost', time: dropped });
    }
    for (const r of rooms.values()) r.joined = false;
    const secs = (backoff / 1000).toFixed(1);
    status('offline (' + (e.code || 'no') + ' close), reconnecting in ' + secs + ' s', false);
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 5000);
    render();
  };
}

function log(name, entry) {
  const r = room(name);
  r.log.push(entry);
  if (r.log.length > MAX_LOG) r.log.shift();
  if (name !== current) r.unread++;
}

function handle(m) {
  switch (m.type) {
    case 'welcome':
      me = m.nick;
      backoff = 500;
      presenceLimit = Number.isInteger(m.presence_limit) ? m.presence_limit : Infinity;
      if (dropped !== null) backUntil = Date.now() + 10_000;
      authOn = m.auth === true;
      $('nick-form').hidden = authOn;
      if (authOn) {
        // With a token the server's `ok auth` follows; without, ask for one.
        if (!token) askToken('sign in with a token');
        break;
      }
      online();
      if (wanted && wanted !== me) send({ type: 'nick', nick: wanted });
      rejoin();
      break;
    case 'ok':
      if (m.cmd === 'join') {
        const r = room(m.room);
        r.joined = true;
        send({ type: 'who', room: m.room });
        if (current === null || current === m.room) select(m.room);
      } else if (m.cmd === 'part') {
        rooms.delete(m.room);
        if (current === m.room) select(rooms.keys().next().value ?? null);
      } else if (m.cmd === 'nick') {
        me = m.nick;
        online();
      } else if (m.cmd === 'auth') {
        me = m.nick;
        $('token-form').hidden = true;
        online();
        if (dropped !== null || [...rooms.values()].some((r) => !r.joined)) rejoin();
      }
      break;
    case 'msg': {
      const r = room(m.room);
      if (r.seen.has(m.id)) break;
      r.seen.add(m.id);
      if (r.seen.size > 4 * MAX_LOG) r.seen = new Set([...r.seen].slice(-2 * MAX_LOG));
      r.last = m.id;
      if (r.replay !== null) {
        if (!r.replay.shown) {
          r.replay.shown = true;
          log(m.room, { kind: 'divider', text: r.replay.label });
        }
      }
      // A message a server kept without its time (an old Redis history) shows "earlier".
      log(m.room, { kind: 'msg', nick: m.nick, text: m.text, time: typeof m.time === 'number' ? now(m.time) : null });
      break;
    }
    case 'join':
      room(m.room).members.add(m.nick);
      log(m.room, { kind: 'event', text: m.nick + ' joined', time: now() });
      break;
    case 'part':
      room(m.room).members.delete(m.nick);
      log(m.room, { kind: 'event', text: m.nick + ' left', time: now() });
      break;
    case 'nick': {
      const r = room(m.room);
      r.members.delete(m.old);
      r.members.add(m.new);
      log(m.room, { kind: 'event', text: m.old + ' is now ' + m.new, time: now() });
      break;
    }
    case 'who': {
      const r = room(m.room);
      r.members = new Set(m.nicks);
      if (r.replay !== null) {
        if (r.replay.shown) log(m.room, { kind: 'divider', text: 'live' });
        r.replay = null;
      }
      break;
    }
    case 'error':
      if (m.code === 'nick-taken' || m.code === 'bad-name') wanted = null;
      if (['bad-token', 'token-expired', 'auth-failed', 'auth-required'].includes(m.code)) {
        token = null;
        sessionStorage.removeItem(TOKEN_KEY);
        askToken(m.code + ': ' + m.text);
        break;
      }
      if (current !== null) log(current, { kind: 'error', text: m.code + ': ' + m.text });
      else status(m.code + ': ' + m.text, ws !== null);
      break;
  }
  render();
}

/** Rejoins every room after a reconnection, from the last message seen in each. */
function rejoin() {
  for (const [name, r] of rooms) {
    r.members.clear();
    log(name, { kind: 'event', text: 'back online', time: now() });
    join(name, 'missed while offline');
  }
  dropped = null;
}

/** Shows the token form, saying why. */
function askToken(why) {
  $('token-form').hidden = false;
  status(why, false);
  $('token').focus();
}

function select(name) {
  current = name;
  if (name !== null) room(name).unread = 0;
  if (name !== null && large(room(name))) send({ type: 'who', room: name });
  render();
}

/** Whether joins and parts in `r` may go untold: its member list is then a snapshot. */
function large(r) {
  return r.joined && r.members.size >= presenceLimit;
}

// The shown large room's member list, asked for again now and then.
setInterval(() => {
  const r = current === null ? null : rooms.get(current);
  if (r && large(r)) send({ type: 'who', room: current });
}, WHO_REFRESH_MS);

function li(text, cls) {
  const e = document.createElement('li');
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function render() {
  const list = $('rooms');
  list.replaceChildren();
  for (const [name, r] of rooms) {
    const e = li(undefined, name === current ? 'current' : '');
    const label = document.createElement('span');
    label.textContent = '#' + name + (r.joined ? '' : ' …');
    e.append(label);
    if (r.unread > 0) {
      const u = document.createElement('span');
      u.className = 'unread';
      u.textContent = r.unread;
      e.append(u);
    }
    const x = document.createElement('button');
    x.textContent = '×';
    x.title = 'leave ' + name;
    x.onclick = (ev) => { ev.stopPropagation(); send({ type: 'part', room: name }); };
    e.append(x);
    e.onclick = () => select(name);
    list.append(e);
  }
  const r = current === null ? null : rooms.get(current);
  const members = $('members');
  $('members-title').textContent = r && large(r)
    ? `Members (${r.members.size}, updated every ${WHO_REFRESH_MS / 1000} s)`
    : 'Members';
  members.replaceChildren(...(r ? [...r.members].sort().map((n) => li(n, n === me ? 'me' : '')) : []));
  const logEl = $('log');
  const atEnd = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 4;
  logEl.replaceChildren(...(r ? r.log.map(entry) : []));
  if (atEnd) logEl.scrollTop = logEl.scrollHeight;
  const can = r !== null && r !== undefined && r.joined;
  $('text').disabled = !can;
  $('send').disabled = !can;
  $('text').placeholder = can ? 'message #' + current : 'join a room to talk';
}

function stamp(t) {
  const e = document.createElement('time');
  if (t) {
    e.textContent = t.short;
    e.title = t.full;
  } else {
    e.textContent = 'earlier';
    e.className = 'earlier';
  }
  return e;
}

function entry(e) {
  if (e.kind === 'divider') {
    const d = li(undefined, 'divider');
    const s = document.createElement('span');
    s.textContent = e.text;
    d.append(s);
    return d;
  }
  if (e.kind !== 'msg') {
    const l = li(e.text, e.kind);
    if (e.time) l.prepend(stamp(e.time));
    return l;
  }
  const l = li(undefined, e.nick === 'server' ? 'msg from-server' : 'msg');
  const n = document.createElement('span');
  n.className = 'nick';
  n.textContent = e.nick;
  const t = document.createElement('span');
  t.className = 'text';
  t.textContent = e.text;
  l.append(stamp(e.time), n, t);
  return l;
}

$('nick-form').onsubmit = (e) => {
  e.preventDefault();
  const n = $('nick').value.trim();
  if (!n) return;
  wanted = n;
  send({ type: 'nick', nick: n });
};

$('token-form').onsubmit = (e) => {
  e.preventDefault();
  const t = $('token').value.trim();
  if (!t) return;
  token = t;
  sessionStorage.setItem(TOKEN_KEY, t);
  $('token').value = '';
  // Connected: present it now (a first sign-in, or a refresh); otherwise the next
  // connection carries it.
  if (ws && ws.readyState === WebSocket.OPEN) send({ type: 'auth', token: t });
};

$('join-form').onsubmit = (e) => {
  e.preventDefault();
  const name = $('room').value.trim();
  if (!name) return;
  if (rooms.has(name) && rooms.get(name).joined) return select(name);
  current = name;
  join(name, 'recent history');
  render();
};

$('say-form').onsubmit = (e) => {
  e.preventDefault();
  const t = $('text').value;
  if (!t || current === null) return;
  send({ type: 'say', room: current, text: t });
  $('text').value = '';
};

connect();
render();
