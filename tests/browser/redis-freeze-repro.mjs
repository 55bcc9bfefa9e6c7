// A SAY refused while Redis hangs reaches nobody, ever (run by .ci/chat-web.sh).
//
// When Redis hangs (SIGSTOP) rather than dies, a SAY is answered `ERR unavailable`
// after the bridge's 2 s command timeout, yet its Lua script already sits in Redis's
// socket buffer and runs when Redis resumes. Before the fix the refused message then
// reached the members of the other instance and the room's history, while its
// author's instance (which had dropped that connection) never delivered it. Now every
// SAY carries a deadline on Redis's clock that the script checks first (see
// src/hub/bridge.rs, "A refused message is never sent"). Kill and restart (as in
// chat-redis.mjs) does not show it, since a dead Redis runs nothing.
//
// The instances run with --presence-ttl 2s so their expiry scans (every TTL/6) see
// the hang too: both reconnect before the later message, the barrier that both must
// receive. Checks: the SAY is refused; after Redis resumes, no member receives the
// refused message live, and HISTORY on both instances holds exactly the messages sent.
// Usage: node redis-freeze-repro.mjs [path/to/multiclient]; exits non-zero on failure.
import path from 'node:path';
import { LineClient, check, root, run, startRedis, startServer } from './lib.mjs';

const bin = path.resolve(process.argv[2] ?? path.join(root, 'target/debug/multiclient'));
const CONNECTED = /redis: connected and subscribed/;
const LOST = /redis: connection lost/;
const REFUSED = ' refused while frozen';

await run('a SAY refused while Redis hangs reaches nobody', 60_000, async () => {
  const redis = await startRedis();
  const args = [
    '--service', 'http=127.0.0.1:0', '--service', 'chat=127.0.0.1:0',
    '--redis', redis.url, '--presence-ttl', '2s',
  ];
  const [one, two] = await Promise.all([startServer(bin, args, {}, 'instance 1'), startServer(bin, args, {}, 'instance 2')]);
  await Promise.all([one.logged(CONNECTED), two.logged(CONNECTED)]);
  const a = await LineClient.connect('a', one.ports.chat);
  const b = await LineClient.connect('b', two.ports.chat);
  await a.ask('JOIN lobby', 'OK JOIN');
  await b.ask('JOIN lobby', 'OK JOIN');
  const before = await a.ask('SAY lobby before', 'MSG lobby');
  await b.until((l) => l === before, 'the message before');

  process.kill(redis.child.pid, 'SIGSTOP');
  let refused;
  try {
    refused = await a.ask(`SAY lobby${REFUSED}`, 'ERR ', 10_000);
    // Both instances see the hang before Redis resumes, so both subscribe again.
    await Promise.all([one.logged(LOST), two.logged(LOST)]);
  } finally {
    process.kill(redis.child.pid, 'SIGCONT');
  }
  check(refused.startsWith('ERR unavailable'), `the SAY is refused while Redis hangs (${refused})`);
  await Promise.all([one.logged(CONNECTED, 2), two.logged(CONNECTED, 2)]);

  const after = await a.ask('SAY lobby after', 'MSG lobby');
  check(after.endsWith(' after'), `the message after Redis resumed is delivered (${after})`);
  await b.until((l) => l === after, 'the message after, with the same id');
  for (const c of [a, b]) {
    const ghosts = c.lines.filter((l) => l.startsWith('MSG ') && l.endsWith(REFUSED));
    check(ghosts.length === 0, `${c.name} never receives the refused message live: ${JSON.stringify(ghosts)}`);
    const from = c.lines.length;
    c.cursor = from;
    c.send('HISTORY lobby 10');
    await c.until((l) => l.startsWith('OK HISTORY'), 'the end of HISTORY');
    const history = c.lines.slice(from).filter((l) => l.startsWith('MSG ') || l.startsWith('OK HISTORY'));
    check(
      JSON.stringify(history) === JSON.stringify([before, after, 'OK HISTORY lobby']),
      `${c.name}'s instance has in HISTORY exactly the messages sent: ${JSON.stringify(history)}`,
    );
  }
});
