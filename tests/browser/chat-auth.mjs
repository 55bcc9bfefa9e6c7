// The chat page with token authentication, in headless Chromium: `serve` runs with
// MULTICLIENT_JWT_SECRET; the page is told auth is on by its welcome, hides the nick
// form and asks for a token; a bad token is refused and asked for again; a good one
// signs the page in under the token's sub; the token is kept for the tab, so a dropped
// socket reconnects signed in and rejoins its room with no question asked. Tokens are
// minted here (HS256 with node's crypto). Screenshot in target/. Exits non-zero on any
// failure.
//
// Usage: node chat-auth.mjs [path/to/multiclient]   (default: target/debug/multiclient)
import { createHmac } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { STEP, check, checkPng, launchChromium, root, run, startServer } from './lib.mjs';

const bin = path.resolve(process.argv[2] ?? path.join(root, 'target/debug/multiclient'));
const SECRET = 'browser-test-secret-of-32-bytes!!';

const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

function hs256(claims) {
  const body = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64(claims);
  return body + '.' + createHmac('sha256', SECRET).update(body).digest('base64url');
}

async function main() {
  const { ports } = await startServer(bin, [
    '--service', 'http=127.0.0.1:0', '--service', 'chat=127.0.0.1:0',
  ], { MULTICLIENT_JWT_SECRET: SECRET }, 'server');
  const base = `http://127.0.0.1:${ports.http}`;
  const context = await launchChromium();
  const page = await context.newPage();
  page.on('pageerror', (e) => { console.error('page error:', e.message); process.exitCode = 1; });
  await page.goto(base + '/chat');

  await page.locator('#token-form').waitFor({ state: 'visible', timeout: STEP });
  check(await page.locator('#nick-form').isHidden(), 'with auth on the nick form is hidden and a token is asked for');
  await page.fill('#token', 'not.a.token');
  await page.click('#token-set');
  await page.locator('#status', { hasText: 'bad-token' }).waitFor({ timeout: STEP });
  check(await page.locator('#token-form').isVisible(), 'a bad token is refused and asked for again');

  await page.fill('#token', hs256({ sub: 'ann', exp: Math.floor(Date.now() / 1000) + 600 }));
  await page.click('#token-set');
  await page.locator('#status', { hasText: 'online as ann' }).waitFor({ timeout: STEP });
  check(await page.locator('#token-form').isHidden(), 'a good token signs the page in under its sub');
  await page.fill('#room', 'lobby');
  await page.click('#join');
  await page.locator('#text:enabled').waitFor({ timeout: STEP });
  await page.fill('#text', 'signed in');
  await page.click('#send');
  await page.locator('#log li.msg', { hasText: 'signed in' }).filter({ hasText: 'ann' }).waitFor({ timeout: STEP });
  check(true, 'the signed-in page joins and talks');

  await page.evaluate(() => { backoff = 300; ws.close(); }); // eslint-disable-line no-undef
  await page.locator('#status', { hasText: 'back online as ann' }).waitFor({ timeout: STEP });
  await page.locator('#text:enabled').waitFor({ timeout: STEP });
  check(await page.locator('#token-form').isHidden(), 'after a dropped socket the page is back, signed in with its kept token, in its room');

  mkdirSync(path.join(root, 'target'), { recursive: true });
  const shot = path.join(root, 'target/chat-web-auth.png');
  await page.screenshot({ path: shot });
  checkPng(shot);
}

await run('chat page with tokens', 60_000, main);
