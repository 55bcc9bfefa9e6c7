// The chat page: one WebSocket to /chat/ws speaking the JSON protocol of docs/chat.md.
// It reconnects by itself (backoff capped at 5 s) and rejoins each room with "after"
// the last message id it saw there, so nothing said meanwhile is missed.
'use strict';

const $ = (id) => document.getElementById(id);
const MAX_LOG = 500; // lines kept per room

let ws = null;
let me = null; // our nick, as the server knows it
let wanted = null; // the nick the user asked for, kept across reconnections
let current = null; // the room shown
let backoff = 500;
const rooms = new Map(); // name -> { log, members, last, seen, unread, joined }

function room(name) {
  if (!rooms.has(name)) {
    rooms.set(name, { log: [], members: new Set(), last: null, seen: new Set(), unread: 0, joined: false });
  }
  return rooms.get(name);
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
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  ws = new WebSocket(proto + '//' + location.host + '/chat/ws');
  ws.onmessage = (e) => {
    let m;
    try { m = JSON.parse(e.data); } catch { return; }
    handle(m);
  };
  ws.onclose = (e) => {
    ws = null;
    for (const r of rooms.values()) r.joined = false;
    const secs = (backoff / 1000).toFixed(1);
    status('offline (' + (e.code || 'no') + ' close), retrying in ' + secs + ' s', false);
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
      status('online as ' + me, true);
      if (wanted && wanted !== me) send({ type: 'nick', nick: wanted });
      // Rejoin after a reconnection, from the last message seen in each room.
      for (const [name, r] of rooms) {
        r.members.clear();
        const join = { type: 'join', room: name };
        if (r.last !== null) join.after = r.last;
        else join.after = '0';
        send(join);
      }
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
        status('online as ' + me, true);
      }
      break;
    case 'msg': {
      const r = room(m.room);
      if (r.seen.has(m.id)) break;
      r.seen.add(m.id);
      if (r.seen.size > 4 * MAX_LOG) r.seen = new Set([...r.seen].slice(-2 * MAX_LOG));
      r.last = m.id;
      log(m.room, { kind: 'msg', nick: m.nick, text: m.text });
      break;
    }
    case 'join':
      room(m.room).members.add(m.nick);
      log(m.room, { kind: 'event', text: m.nick + ' joined' });
      break;
    case 'part':
      room(m.room).members.delete(m.nick);
      log(m.room, { kind: 'event', text: m.nick + ' left' });
      break;
    case 'nick': {
      const r = room(m.room);
      r.members.delete(m.old);
      r.members.add(m.new);
      log(m.room, { kind: 'event', text: m.old + ' is now ' + m.new });
      break;
    }
    case 'who':
      room(m.room).members = new Set(m.nicks);
      break;
    case 'error':
      if (m.code === 'nick-taken' || m.code === 'bad-name') wanted = null;
      if (current !== null) log(current, { kind: 'error', text: m.code + ': ' + m.text });
      else status(m.code + ': ' + m.text, ws !== null);
      break;
  }
  render();
}

function select(name) {
  current = name;
  if (name !== null) room(name).unread = 0;
  render();
}

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

function entry(e) {
  if (e.kind !== 'msg') return li(e.text, e.kind);
  const l = li(undefined, e.nick === 'server' ? 'msg from-server' : 'msg');
  const n = document.createElement('span');
  n.className = 'nick';
  n.textContent = e.nick;
  l.append(n, document.createTextNode(e.text));
  return l;
}

$('nick-form').onsubmit = (e) => {
  e.preventDefault();
  const n = $('nick').value.trim();
  if (!n) return;
  wanted = n;
  send({ type: 'nick', nick: n });
};

$('join-form').onsubmit = (e) => {
  e.preventDefault();
  const name = $('room').value.trim();
  if (!name) return;
  if (rooms.has(name) && rooms.get(name).joined) return select(name);
  room(name);
  current = name;
  send({ type: 'join', room: name });
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
