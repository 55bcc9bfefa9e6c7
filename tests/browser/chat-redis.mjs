// End-to-end test of the chat scaled out over Redis, with real browsers: a redis-server
// of its own and two `multiclient serve --redis` instances on free loopback ports; page
// A (headless Chromium) on instance 1's /chat, page B on instance 2's, and one TCP line
// client on each instance's chat port, all four in one room. Checks: every member sees
// all twelve messages (three from each, sent at once) in one order with the same ids,
// on the pages' screens too; WHO lists all four on both instances; nicks are unique
// across instances and a NICK change on one is seen on the other. Then Redis is killed:
// a page's say shows the `unavailable` error and the pages stay connected (no new
// socket, no reload); Redis restarts empty on the same port and, without reloading
// anything, the instances re-register their members and nicks and messages flow across
// again, while the refused ones reached nobody. Screenshots: target/chat-redis-a.png,
// target/chat-redis-b.png. Every wait has a deadline, the whole run at most 90 s, and
// only the processes it started are ended (by PID) on every exit path.
//
// Usage: node chat-redis.mjs [path/to/multiclient]   (default: target/debug/multiclient)
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import {
  Inbox, LineClient, STEP, check, checkPng, launchChromium, root, run, startRedis,
  startServer, stop,
} from './lib.mjs';

const bin = path.resolve(process.argv[2] ?? path.join(root, 'target/debug/multiclient'));
const ROOM = 'lobby';
const CONNECTED = /redis: connected and subscribed/;
const LOST = /redis: connection lost/;

/** Opens /chat at `base` as `nick`, in ROOM, recording the frames its socket receives. */
async function openPage(context, base, nick) {
  const page = await context.newPage();
  const member = { name: `page ${nick}`, page, frames: new Inbox(`page ${nick}`), sockets: 0 };
  page.on('pageerror', (e) => { console.error(`${nick}: page error:`, e.message); process.exitCode = 1; });
  page.on('websocket', (ws) => {
    member.sockets++;
    ws.on('framereceived', (f) => {
      try { member.frames.push(JSON.parse(f.payload)); } catch { member.frames.push({ type: '<not json>' }); }
    });
  });
  member.inbox = member.frames;
  member.msgs = () => member.frames.items
    .filter((m) => m.type === 'msg' && m.room === ROOM)
    .map(({ id, nick: n, text }) => ({ id, nick: n, text }));
  await page.goto(base + '/chat');
  await page.locator('#status', { hasText: 'online as guest-' }).waitFor();
  await page.fill('#nick', nick);
  await page.click('#nick-set');
  await page.locator('#status', { hasText: `online as ${nick}` }).waitFor();
  await page.fill('#room', ROOM);
  await page.click('#join');
  await page.locator('#rooms li.current', { hasText: '#' + ROOM }).waitFor();
  await page.locator('#text:enabled').waitFor();
  return member;
}

/** A TCP line client named `nick` in ROOM on `port`. */
async function lineMember(port, nick) {
  const c = await LineClient.connect(nick, port);
  check((await c.ask(`NICK ${nick}`, 'OK NICK')) === `OK NICK ${nick}`, `${nick} (TCP) takes its nick`);
  await c.ask(`JOIN ${ROOM}`, `OK JOIN ${ROOM}`);
  c.inbox.name = `tcp ${nick}`;
  return Object.assign(c, { name: `tcp ${nick}`, msgs: () => c.msgsIn(ROOM) });
}

async function say(member, text) {
  await member.page.fill('#text', text);
  await member.page.click('#send');
}

/** Waits until `member` received a message for which `pred` holds; returns it. */
const received = (member, pred, what) => member.inbox.wait(() => member.msgs().find(pred), `${what} on ${member.name}`);

/** The messages on a page's screen, in order, as "nick text". */
/** The messages a page shows, as nick + text (without the time in front). */
const screenMsgs = (member) => member.page.$$eval('#log li.msg', (els) => els.map(
  (e) => (e.querySelector('.nick')?.textContent ?? '') + (e.querySelector('.text')?.textContent ?? ''),
));

/** Waits until the page's member list is exactly `nicks`. */
async function membersShown(member, nicks) {
  const want = [...nicks].sort().join(' ');
  try {
    await member.page.waitForFunction((w) => [...document.querySelectorAll('#members li')]
      .map((e) => e.textContent).sort().join(' ') === w, want, { timeout: STEP });
  } catch {
    const got = await member.page.$$eval('#members li', (els) => els.map((e) => e.textContent).sort().join(' '));
    throw new Error(`${member.name} lists members "${got}", not "${want}"`);
  }
}

/** WHO on a line client: the nicks as a sorted list, or the ERR line. */
async function who(c) {
  c.cursor = c.lines.length;
  c.send(`WHO ${ROOM}`);
  const l = await c.until((x) => x.startsWith(`WHO ${ROOM} `) || x.startsWith('ERR '), 'the answer to WHO');
  return l.startsWith('ERR ') ? l : l.split(' ').slice(2).sort().join(' ');
}

async function main() {
  const redis = await startRedis();
  console.log('redis-server: port', redis.port, 'pid', redis.child.pid);
  const args = ['--service', 'http=127.0.0.1:0', '--service', 'chat=127.0.0.1:0', '--redis', redis.url];
  const [one, two] = await Promise.all([
    startServer(bin, args, {}, 'instance 1'),
    startServer(bin, args, {}, 'instance 2'),
  ]);
  await Promise.all([one.logged(CONNECTED), two.logged(CONNECTED)]);
  console.log('instance 1: http', one.ports.http, 'chat', one.ports.chat, 'pid', one.child.pid);
  console.log('instance 2: http', two.ports.http, 'chat', two.ports.chat, 'pid', two.child.pid);
  check(one.ports.http !== two.ports.http && one.ports.chat !== two.ports.chat, 'two instances on their own ports, both connected to Redis');

  const context = await launchChromium();
  const a = await openPage(context, `http://127.0.0.1:${one.ports.http}`, 'ann');
  const b = await openPage(context, `http://127.0.0.1:${two.ports.http}`, 'bob');
  const c = await lineMember(one.ports.chat, 'carl');
  const d = await lineMember(two.ports.chat, 'dora');
  const all = [a, b, c, d];
  const four = ['ann', 'bob', 'carl', 'dora'];

  // Presence across instances.
  await Promise.all([membersShown(a, four), membersShown(b, four)]);
  check(true, 'both pages list ann, bob, carl and dora as members');
  check((await who(c)) === four.join(' '), 'WHO on instance 1 lists all four');
  check((await who(d)) === four.join(' '), 'WHO on instance 2 lists all four');
  const taken = await d.ask('NICK ann', ['ERR ', 'OK NICK']);
  check(taken.startsWith('ERR nick-taken'), `a nick held on instance 1 is refused on instance 2 (${taken})`);

  // Twelve messages sent at once, three from each member.
  const texts = (nick) => [1, 2, 3].map((i) => `m${i} from ${nick}`);
  await Promise.all([
    (async () => { for (const t of texts('ann')) await say(a, t); })(),
    (async () => { for (const t of texts('bob')) await say(b, t); })(),
    c.send(...texts('carl').map((t) => `SAY ${ROOM} ${t}`)),
    d.send(...texts('dora').map((t) => `SAY ${ROOM} ${t}`)),
  ]);
  const tagged = (m) => /^m\d from /.test(m.text);
  await Promise.all(all.map((m) => m.inbox.wait(
    () => (m.msgs().filter(tagged).length >= 12 ? true : undefined), `12 messages on ${m.name}`)));
  const seqs = all.map((m) => m.msgs().filter(tagged));
  const key = (m) => `${m.id} ${m.nick} ${m.text}`;
  for (const [i, s] of seqs.entries()) {
    check(s.length === 12, `${all[i].name} got each of the 12 messages once (${s.length})`);
  }
  const ref = seqs[0].map(key).join('\n');
  check(seqs.every((s) => s.map(key).join('\n') === ref), 'all four got them in one order with the same ids');
  const ids = seqs[0].map((m) => BigInt(m.id));
  check(ids.every((id, i) => i === 0 || id > ids[i - 1]), 'the ids increase in that order');
  for (const nick of four) {
    const own = seqs[0].filter((m) => m.nick === nick).map((m) => m.text);
    check(own.join('|') === texts(nick).join('|'), `${nick}'s messages are in the order sent`);
  }
  for (const p of [a, b]) {
    const shown = (await screenMsgs(p)).filter((t) => / ?m\d from /.test(t));
    check(shown.join('\n') === seqs[0].map((m) => m.nick + m.text).join('\n'), `${p.name} shows them in that order`);
  }

  // A nick change on instance 1, seen on instance 2.
  check((await c.ask('NICK carlos', 'OK NICK')) === 'OK NICK carlos', 'carl renames itself carlos on instance 1');
  await d.until((l) => l === `NICK ${ROOM} carl carlos`, 'the NICK event');
  check(true, 'the TCP member on instance 2 gets NICK lobby carl carlos');
  await b.page.locator('#log li.event', { hasText: 'carl is now carlos' }).waitFor();
  const renamed = ['ann', 'bob', 'carlos', 'dora'];
  await membersShown(b, renamed);
  check(true, 'page B (instance 2) shows the rename and lists carlos, not carl');
  await membersShown(a, renamed);
  check((await who(d)) === renamed.join(' '), 'WHO on instance 2 lists carlos');

  // Redis goes away: says are refused and shown, nobody is disconnected.
  for (const p of [a, b]) await p.page.evaluate(() => { window.notReloaded = true; });
  await stop(redis.child, 'SIGKILL');
  await Promise.all([one.logged(LOST), two.logged(LOST)]);
  check(true, 'Redis killed: both instances noticed');
  const DOWN = 'said while redis was down';
  const from = a.frames.items.length;
  await say(a, DOWN + ' (ann)');
  const err = await a.frames.wait((fs) => fs.slice(from).find((f) => f.type === 'error' || f.type === 'msg'), 'an answer to the say');
  check(err.code === 'unavailable', `page A's say is answered with the error unavailable (${JSON.stringify(err)})`);
  await a.page.locator('#log li.error', { hasText: 'unavailable' }).waitFor();
  check(true, 'page A shows the unavailable error in the room');
  await say(b, DOWN + ' (bob)');
  await b.page.locator('#log li.error', { hasText: 'unavailable' }).waitFor();
  check(true, 'page B shows the unavailable error in the room');
  const refused = await c.ask(`SAY ${ROOM} ${DOWN} (carlos)`, ['ERR ', `MSG ${ROOM} `]);
  check(refused.startsWith('ERR unavailable'), `a TCP say is refused too (${refused})`);
  for (const p of [a, b]) {
    const s = await p.page.locator('#status').getAttribute('class');
    const t = await p.page.textContent('#status');
    check(/\bon\b/.test(s) && t.includes('online as'), `${p.name} stays online (${t})`);
  }

  // Redis comes back empty on the same port: the instances heal by themselves.
  const back = await startRedis(redis.port);
  console.log('redis-server restarted: port', back.port, 'pid', back.child.pid);
  await Promise.all([one.logged(CONNECTED, 2, 3 * STEP / 2), two.logged(CONNECTED, 2, 3 * STEP / 2)]);
  check(true, 'both instances reconnected and resubscribed');
  // Each instance re-registers its members on reconnecting, on its own schedule: WHO
  // is asked again until it lists all four, within a deadline. Until then the empty
  // Redis may not know the room at all (ERR no-such-room).
  const deadline = Date.now() + STEP;
  let listed = '';
  while ((listed = await who(d)) !== renamed.join(' ') && Date.now() < deadline) {
    console.log(`  (WHO on instance 2 answered "${listed}"; asking again in 0.2 s)`);
    await new Promise((r) => setTimeout(r, 200));
  }
  check(listed === renamed.join(' '), `WHO on instance 2 lists all four again (${listed})`);
  check((await who(c)) === renamed.join(' '), 'WHO on instance 1 lists all four again');
  const retaken = await d.ask('NICK ann', ['ERR ', 'OK NICK']);
  check(retaken.startsWith('ERR nick-taken'), `nick claims are registered again: ann is taken (${retaken})`);

  await say(b, 'back from bob');
  c.send(`SAY ${ROOM} back from carlos`);
  await say(a, 'back from ann');
  d.send(`SAY ${ROOM} back from dora`);
  const backs = ['bob', 'carlos', 'ann', 'dora'];
  for (const m of all) {
    for (const nick of backs) await received(m, (x) => x.nick === nick && x.text === `back from ${nick}`, `back from ${nick}`);
  }
  check(true, 'after the restart all four get each other\'s messages across instances');
  for (const p of [a, b]) {
    for (const nick of backs) await p.page.locator('#log li.msg', { hasText: `back from ${nick}` }).waitFor();
  }
  check(true, 'both pages show them, without a reload');
  const after = all.map((m) => m.msgs().filter((x) => x.text.startsWith('back from ')));
  check(after.every((s) => s.map(key).join('\n') === after[0].map(key).join('\n')), 'in one order with the same ids everywhere');
  check(after[0].every((m) => BigInt(m.id) > ids[ids.length - 1]), 'ids keep increasing across the Redis restart');
  for (const m of all) {
    check(!m.msgs().some((x) => x.text.startsWith(DOWN)), `${m.name} never got a refused message`);
  }
  for (const p of [a, b]) {
    check(!(await screenMsgs(p)).some((t) => t.includes(DOWN)), `${p.name} does not show a refused message`);
    const welcomes = p.frames.items.filter((f) => f.type === 'welcome').length;
    const kept = await p.page.evaluate(() => window.notReloaded === true);
    check(p.sockets === 1 && welcomes === 1 && kept, `${p.name} kept its one socket and was not reloaded (sockets ${p.sockets}, welcomes ${welcomes})`);
  }

  mkdirSync(path.join(root, 'target'), { recursive: true });
  const shots = [[a, 'target/chat-redis-a.png'], [b, 'target/chat-redis-b.png']];
  for (const [p, file] of shots) {
    await p.page.screenshot({ path: path.join(root, file) });
    checkPng(path.join(root, file));
  }
}

await run('chat over Redis, two instances, two pages and two TCP clients', 90_000, main);
