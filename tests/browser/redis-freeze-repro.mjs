// Reproduction of an open bug in the Redis bridge (src/hub/bridge.rs), NOT run by CI
// (it fails today): when Redis hangs (SIGSTOP) rather than dies, a SAY is answered
// `ERR unavailable` after the bridge's 2 s command timeout, yet the Lua script already
// written to the socket runs when Redis resumes. The refused message then reaches the
// members of the other instance and the room's history, while its author's instance
// (which dropped that connection and subscribed again) never delivers it: the
// instances disagree and "nothing half-delivered" is broken. Kill and restart (as in
// chat-redis.mjs) does not show it, since a dead Redis runs nothing.
//
// Checks the right behaviour: a refused message reaches nobody and is in no history.
// Usage: node redis-freeze-repro.mjs [path/to/multiclient]; exits non-zero on failure.
import path from 'node:path';
import { LineClient, check, root, run, startRedis, startServer } from './lib.mjs';

const bin = path.resolve(process.argv[2] ?? path.join(root, 'target/debug/multiclient'));
const CONNECTED = /redis: connected and subscribed/;

await run('a SAY refused while Redis hangs reaches nobody', 60_000, async () => {
  const redis = await startRedis();
  const args = ['--service', 'http=127.0.0.1:0', '--service', 'chat=127.0.0.1:0', '--redis', redis.url];
  const [one, two] = await Promise.all([startServer(bin, args, {}, 'instance 1'), startServer(bin, args, {}, 'instance 2')]);
  await Promise.all([one.logged(CONNECTED), two.logged(CONNECTED)]);
  const a = await LineClient.connect('a', one.ports.chat);
  const b = await LineClient.connect('b', two.ports.chat);
  await a.ask('JOIN lobby', 'OK JOIN');
  await b.ask('JOIN lobby', 'OK JOIN');
  await a.ask('SAY lobby before', 'MSG lobby');

  process.kill(redis.child.pid, 'SIGSTOP');
  const refused = await a.ask('SAY lobby refused while frozen', 'ERR ', 10_000);
  process.kill(redis.child.pid, 'SIGCONT');
  check(refused.startsWith('ERR unavailable'), `the SAY is refused while Redis hangs (${refused})`);
  await one.logged(CONNECTED, 2);

  await a.ask('SAY lobby after', 'MSG lobby');
  await b.until((l) => l.endsWith(' after'), 'the message after');
  b.cursor = b.lines.length;
  b.send('HISTORY lobby 10');
  await b.until((l) => l.startsWith('OK HISTORY'), 'the end of HISTORY');
  for (const c of [a, b]) {
    const ghosts = c.lines.filter((l) => l.startsWith('MSG ') && l.endsWith(' refused while frozen'));
    check(ghosts.length === 0, `${c.name} (live and HISTORY) never gets the refused message: ${JSON.stringify(ghosts)}`);
  }
});
