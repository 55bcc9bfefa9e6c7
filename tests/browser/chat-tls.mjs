// The chat page over https and wss in headless Chromium: `serve` with a test CA's
// ECDSA P-256 certificate (made here with openssl, as .ci/tls.sh and docs/security.md
// make it) and every listener marked `,tls`; Chromium trusts exactly that certificate
// (`--ignore-certificate-errors-spki-list` with its key's hash, not every certificate).
// Two pages load /chat over https, their WebSocket is `wss://` on the same port (a
// `ws://` one from an https page is blocked by the browser as mixed content), both
// join one room and see each other's messages both ways; no request fails and no
// console error appears. Screenshots in target/ (chat-tls-ann.png, chat-tls-bob.png).
// Exits non-zero on any failure.
//
// Usage: node chat-tls.mjs [path/to/multiclient]   (default: target/debug/multiclient)
import { execFileSync } from 'node:child_process';
import { X509Certificate, createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  STEP, check, checkPng, launchChromium, onCleanup, openChatPage, root, run, sayOnPage as say,
  seenOnPage as seen, startServer,
} from './lib.mjs';

const bin = path.resolve(process.argv[2] ?? path.join(root, 'target/debug/multiclient'));

/** A CA and a server certificate it signed for localhost and 127.0.0.1, in `dir`. */
function makePki(dir) {
  const ssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=multiclient browser test CA', '-keyout', 'ca.key', '-out', 'ca.pem');
  ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-subj', '/CN=localhost', '-keyout', 'key.pem', '-out', 'server.csr');
  writeFileSync(path.join(dir, 'san.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  ssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-days', '2', '-extfile', 'san.ext', '-out', 'cert.pem');
  const cert = new X509Certificate(readFileSync(path.join(dir, 'cert.pem')));
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
  return {
    cert: path.join(dir, 'cert.pem'),
    key: path.join(dir, 'key.pem'),
    spkiHash: createHash('sha256').update(spki).digest('base64'),
  };
}

async function main() {
  const dir = mkdtempSync(path.join(tmpdir(), 'multiclient-chat-tls-'));
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const pki = makePki(dir);
  const { ports } = await startServer(bin, [
    '--tls-cert', pki.cert, '--tls-key', pki.key, '--admin', 'off',
    '--service', 'http=127.0.0.1:0,tls', '--service', 'chat=127.0.0.1:0,tls',
  ], {}, 'server');
  const base = `https://127.0.0.1:${ports.http}`;
  console.log('server: https', ports.http, 'chat over TLS', ports.chat);
  const context = await launchChromium([`--ignore-certificate-errors-spki-list=${pki.spkiHash}`]);

  const sockets = { ann: [], bob: [] };
  const ann = await openChatPage(context, base, 'ann', { sockets: sockets.ann });
  const bob = await openChatPage(context, base, 'bob', { sockets: sockets.bob });
  for (const [nick, page] of [['ann', ann], ['bob', bob]]) {
    const url = new URL(page.url());
    check(url.protocol === 'https:' && url.port === String(ports.http), `${nick}'s page was loaded over https (${page.url()})`);
    check(await page.evaluate(() => window.isSecureContext), `${nick}'s page is a secure context`);
    const want = `wss://127.0.0.1:${ports.http}/chat/ws`;
    check(sockets[nick].length >= 1 && sockets[nick].every((u) => u.startsWith(want)),
      `${nick}'s WebSocket is wss:// on the https port (${sockets[nick].join(', ')})`);
  }

  await ann.locator('#members li', { hasText: 'bob' }).waitFor({ timeout: STEP });
  check(true, 'ann sees bob in the room');
  await say(ann, 'hello over wss from ann');
  await seen(bob, 'ann', 'hello over wss from ann');
  await seen(ann, 'ann', 'hello over wss from ann');
  check(true, "bob (and ann) see ann's message");
  await say(bob, 'hi ann, bob here, encrypted');
  await seen(ann, 'bob', 'hi ann, bob here, encrypted');
  check(true, "ann sees bob's message");

  mkdirSync(path.join(root, 'target'), { recursive: true });
  const shotA = path.join(root, 'target/chat-tls-ann.png');
  const shotB = path.join(root, 'target/chat-tls-bob.png');
  await ann.screenshot({ path: shotA });
  await bob.screenshot({ path: shotB });
  checkPng(shotA);
  checkPng(shotB);
}

await run('chat page over https and wss in headless Chromium', 90_000, main);
