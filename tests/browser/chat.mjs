// End-to-end test of the chat page in headless Chromium (Debian's, driven by
// Playwright): starts `multiclient serve` on free loopback ports, opens two pages of
// /chat, both join one room and see each other's messages, a backend notification
// reaches both, and a page whose socket dropped gets what was said meanwhile through
// its rejoin with "after". Screenshots go to target/. Exits non-zero on any failure.
//
// Usage: node chat.mjs [path/to/multiclient]   (default: target/debug/multiclient)
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { STEP, check, checkPng, launchChromium, root, run, startServer } from './lib.mjs';

const bin = path.resolve(process.argv[2] ?? path.join(root, 'target/debug/multiclient'));
const KEY = 'browser-test-key';

async function openPage(context, base, nick) {
  const page = await context.newPage();
  page.on('pageerror', (e) => { console.error(`${nick}: page error:`, e.message); process.exitCode = 1; });
  await page.goto(base + '/chat');
  await page.locator('#status', { hasText: 'online as guest-' }).waitFor({ timeout: STEP });
  await page.fill('#nick', nick);
  await page.click('#nick-set');
  await page.locator('#status', { hasText: `online as ${nick}` }).waitFor({ timeout: STEP });
  await page.fill('#room', 'lobby');
  await page.click('#join');
  await page.locator('#rooms li.current', { hasText: '#lobby' }).waitFor({ timeout: STEP });
  await page.locator('#text:enabled').waitFor({ timeout: STEP });
  return page;
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

const seen = (page, nick, text) =>
  page.locator('#log li.msg', { hasText: text }).filter({ hasText: nick }).waitFor({ timeout: STEP });

async function main() {
  const { ports } = await startServer(bin, [
    '--service', 'http=127.0.0.1:0', '--service', 'chat=127.0.0.1:0',
  ], { MULTICLIENT_API_KEY: KEY }, 'server');
  const base = `http://127.0.0.1:${ports.http}`;
  console.log('server: http', ports.http, 'chat', ports.chat);
  const context = await launchChromium();

  const ann = await openPage(context, base, 'ann');
  const bob = await openPage(context, base, 'bob');
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

  // Ann's socket drops; she retries in 4 s. What bob says meanwhile must reach her
  // through her rejoin with "after", exactly once.
  await ann.evaluate(() => { backoff = 4000; ws.close(); }); // eslint-disable-line no-undef
  await ann.locator('#status', { hasText: 'offline' }).waitFor({ timeout: STEP });
  await bob.locator('#log li.event', { hasText: 'ann left' }).waitFor({ timeout: STEP });
  await say(bob, 'said while ann was away');
  await seen(bob, 'bob', 'said while ann was away');
  check((await ann.textContent('#status')).includes('offline'), 'ann was still offline when bob spoke');
  await ann.locator('#status', { hasText: 'online as ann' }).waitFor({ timeout: STEP });
  await seen(ann, 'bob', 'said while ann was away');
  const copies = await ann.locator('#log li.msg', { hasText: 'said while ann was away' }).count();
  const hellos = await ann.locator('#log li.msg', { hasText: 'hello from ann' }).count();
  check(copies === 1 && hellos === 1, `after reconnecting ann has the missed message once (${copies}) and no duplicates (${hellos})`);
  await say(ann, 'back again');
  await seen(bob, 'ann', 'back again');
  check(true, 'ann talks again after reconnecting');

  mkdirSync(path.join(root, 'target'), { recursive: true });
  const shotA = path.join(root, 'target/chat-web-ann.png');
  const shotB = path.join(root, 'target/chat-web-bob.png');
  await ann.screenshot({ path: shotA });
  await bob.screenshot({ path: shotB });
  checkPng(shotA);
  checkPng(shotB);
}

await run('chat page in headless Chromium', 120_000, main);
