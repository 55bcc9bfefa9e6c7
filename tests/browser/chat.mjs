// End-to-end test of the chat page in headless Chromium (Debian's, driven by
// Playwright): starts `multiclient serve` on free loopback ports, opens two pages of
// /chat, both join one room and see each other's messages, a backend notification
// reaches both, a page joining later sees the room's history (once, each message with
// the time it was said) then live messages with their time, and a page whose socket
// dropped shows it is reconnecting, gets what was said meanwhile through its rejoin
// with "after", and shows it is back. On a second server with `--presence-limit 2`, a
// page in a room grown past the limit (no join object comes) still lists the newcomer
// within its member list's refresh, and says the list is refreshed. No request of any page may fail (the favicon
// included) and no console error may appear.
// Screenshots at desktop and phone sizes go to target/. Exits non-zero on any failure.
//
// Usage: node chat.mjs [path/to/multiclient]   (default: target/debug/multiclient)
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import {
  STEP, check, checkPng, launchChromium, openChatPage, root, run, sayOnPage as say, seenOnPage as seen,
  startServer,
} from './lib.mjs';

const bin = path.resolve(process.argv[2] ?? path.join(root, 'target/debug/multiclient'));
const KEY = 'browser-test-key';

async function main() {
  const { ports } = await startServer(bin, [
    '--service', 'http=127.0.0.1:0', '--service', 'chat=127.0.0.1:0',
  ], { MULTICLIENT_API_KEY: KEY }, 'server');
  const base = `http://127.0.0.1:${ports.http}`;
  console.log('server: http', ports.http, 'chat', ports.chat);
  const context = await launchChromium();

  const ann = await openChatPage(context, base, 'ann', { socketDrops: true });
  const bob = await openChatPage(context, base, 'bob', { socketDrops: true });
  await ann.locator('#members li', { hasText: 'bob' }).waitFor({ timeout: STEP });
  await ann.locator('#log li.event', { hasText: 'bob joined' }).waitFor({ timeout: STEP });
  check(true, 'ann sees bob join the room and in its member list');
  await bob.locator('#members li', { hasText: 'ann' }).waitFor({ timeout: STEP });
  check(true, 'bob lists ann as a member');

  await say(ann, 'hello from ann');
  await seen(bob, 'ann', 'hello from ann');
  await seen(ann, 'ann', 'hello from ann');
  check(true, "bob (and ann) see ann's message");
  await say(bob, 'hi ann, bob here');
  await seen(ann, 'bob', 'hi ann, bob here');
  check(true, "ann sees bob's message");

  const res = await fetch(`${base}/rooms/lobby/messages`, {
    method: 'POST', headers: { Authorization: `Bearer ${KEY}` }, body: 'deploy finished',
  });
  check(res.status === 202, `a notification is accepted (${res.status})`);
  await seen(ann, 'server', 'deploy finished');
  await seen(bob, 'server', 'deploy finished');
  check(true, 'both pages show the notification from server');

  const liveTime = await bob.locator('#log li.msg', { hasText: 'hi ann, bob here' }).locator('time').textContent();
  check(/^\d\d:\d\d/.test(liveTime.trim()), `a live message shows its time (${liveTime.trim()})`);
  const icon = await fetch(`${base}/chat/favicon.svg`);
  check(icon.status === 200 && (await icon.text()).startsWith('<svg'), 'the favicon is served');

  // A page joining now sees the room's history, each message once, under its divider,
  // then live messages with a time. At phone size.
  const cat = await openChatPage(context, base, 'cat', { viewport: { width: 390, height: 844 }, socketDrops: true });
  await seen(cat, 'ann', 'hello from ann');
  await seen(cat, 'server', 'deploy finished');
  const hist = await cat.locator('#log li.msg').allTextContents();
  const once = (t) => hist.filter((x) => x.includes(t)).length === 1;
  check(once('hello from ann') && once('hi ann, bob here') && once('deploy finished'),
    `the newcomer sees the room's history once each (${hist.length} messages)`);
  check(await cat.locator('#log li.divider', { hasText: 'recent history' }).count() === 1, 'the history sits under its divider');
  const histTime = (await cat.locator('#log li.msg', { hasText: 'hello from ann' }).locator('time').textContent()).trim();
  const annTime = (await ann.locator('#log li.msg', { hasText: 'hello from ann' }).locator('time').textContent()).trim();
  check(/^\d\d:\d\d/.test(histTime) && histTime === annTime,
    `a message replayed from history shows when it was said (${histTime}; its author saw ${annTime})`);
  await cat.locator('#log li.divider', { hasText: 'live' }).waitFor({ timeout: STEP });
  await say(bob, 'live for cat');
  await seen(cat, 'bob', 'live for cat');
  const order = await cat.locator('#log li.msg .text').allTextContents();
  check(order.indexOf('live for cat') === order.length - 1 && order.indexOf('hello from ann') < order.indexOf('hi ann, bob here'),
    'history first, in order, then the live message');
  const catTime = await cat.locator('#log li.msg', { hasText: 'live for cat' }).locator('time').textContent();
  check(/^\d\d:\d\d/.test(catTime.trim()), 'the live message after the history carries a time');
  const overflow = await cat.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `no sideways scrolling at phone size (${overflow} px too wide)`);
  const inputBox = await cat.locator('#text').boundingBox();
  check(inputBox && inputBox.width > 200 && inputBox.y + inputBox.height <= 844, 'the message box is on screen and wide at phone size');

  // Ann's socket drops; she retries in 4 s. What bob says meanwhile must reach her
  // through her rejoin with "after", exactly once.
  await ann.evaluate(() => { backoff = 4000; ws.close(); }); // eslint-disable-line no-undef
  await ann.locator('#status', { hasText: 'reconnecting in' }).waitFor({ timeout: STEP });
  check(await ann.locator('#log li.event', { hasText: 'connection lost' }).count() === 1, 'ann is told the connection was lost');
  await bob.locator('#log li.event', { hasText: 'ann left' }).waitFor({ timeout: STEP });
  await say(bob, 'said while ann was away');
  await seen(bob, 'bob', 'said while ann was away');
  check((await ann.textContent('#status')).includes('offline'), 'ann was still offline when bob spoke');
  await ann.locator('#status', { hasText: 'back online as ann' }).waitFor({ timeout: STEP });
  check(true, 'ann is shown back online');
  await seen(ann, 'bob', 'said while ann was away');
  check(await ann.locator('#log li.divider', { hasText: 'missed while offline' }).count() === 1,
    'what ann missed sits under its divider');
  const copies = await ann.locator('#log li.msg', { hasText: 'said while ann was away' }).count();
  const hellos = await ann.locator('#log li.msg', { hasText: 'hello from ann' }).count();
  check(copies === 1 && hellos === 1, `after reconnecting ann has the missed message once (${copies}) and no duplicates (${hellos})`);
  await say(ann, 'back again');
  await seen(bob, 'ann', 'back again');
  check(true, 'ann talks again after reconnecting');

  mkdirSync(path.join(root, 'target'), { recursive: true });
  const shotA = path.join(root, 'target/chat-web-ann.png');
  const shotB = path.join(root, 'target/chat-web-bob.png');
  const shotPhone = path.join(root, 'target/chat-web-phone.png');
  await ann.screenshot({ path: shotA });
  await bob.screenshot({ path: shotB });
  await seen(cat, 'ann', 'back again');
  await cat.screenshot({ path: shotPhone });
  checkPng(shotA);
  checkPng(shotB);
  checkPng(shotPhone);

  // Past the presence limit no join object comes: the member list is asked for again.
  const small = await startServer(bin, [
    '--service', 'http=127.0.0.1:0', '--service', 'chat=127.0.0.1:0', '--presence-limit', '2',
  ], {}, 'server (presence limit 2)');
  const base2 = `http://127.0.0.1:${small.ports.http}`;
  const dan = await openChatPage(context, base2, 'dan');
  const eve = await openChatPage(context, base2, 'eve');
  await dan.locator('#members li', { hasText: 'eve' }).waitFor({ timeout: STEP });
  check(await dan.locator('#log li.event', { hasText: 'eve joined' }).count() === 1, 'within the limit, dan is told eve joined');
  const fay = await openChatPage(context, base2, 'fay');
  await fay.locator('#members li', { hasText: 'dan' }).waitFor({ timeout: STEP });
  await dan.locator('#members li', { hasText: 'fay' }).waitFor({ timeout: STEP + 10_000 });
  check(await dan.locator('#log li.event', { hasText: 'fay joined' }).count() === 0,
    'past the limit no join is told, yet dan lists fay after the refresh');
  const title = await dan.textContent('#members-title');
  check(/Members \(3, updated every \d+ s\)/.test(title), `the member list says it is refreshed (${title})`);
  await Promise.all([dan.close(), eve.close(), fay.close()]);
}

await run('chat page in headless Chromium', 120_000, main);
