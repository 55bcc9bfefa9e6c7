// Shared pieces of the headless browser tests (chat.mjs, chat-redis.mjs): cleanup of
// everything a test started, on every exit path and by PID only; `multiclient serve`
// and `redis-server` on free loopback ports, each ready when it says so; a TCP line
// client; an inbox that waits for a condition on what arrived, always with a deadline;
// Debian's Chromium driven by playwright-core.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** A safety net per wait: a step that takes this long has failed. */
export const STEP = 15_000;

const cleanups = [];

/** Registers `fn` to run at exit, last registered first. */
export function onCleanup(fn) {
  cleanups.push(fn);
}

let cleaning = null;

/**
 * Runs every cleanup once, each bounded in time, whatever failed before. Concurrent
 * callers (a signal during a failing step) share one run, so nobody exits while a
 * child is still being stopped.
 */
export function cleanup() {
  cleaning ??= (async () => {
    while (cleanups.length) {
      const fn = cleanups.pop();
      try {
        await withTimeout(Promise.resolve().then(fn), 10_000, 'a cleanup step');
      } catch (e) {
        console.error('cleanup:', e.message);
      }
    }
  })();
  return cleaning;
}

/**
 * Runs `main` as the test named `name`: at most `limitMs` in all, cleanup on success,
 * failure, timeout, SIGINT/SIGTERM and unhandled errors; the exit code says which.
 * After a timeout or a signal, what `main` reports as it is torn down is not news.
 */
export async function run(name, limitMs, main) {
  let over = false;
  const bail = async (why) => {
    if (over) return;
    over = true;
    console.error(`FAIL: ${name}: ${why}`);
    await cleanup();
    process.exit(1);
  };
  const overall = setTimeout(() => bail(`did not finish within ${limitMs / 1000} s`), limitMs);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.once(sig, () => bail(`got ${sig}`));
  process.on('unhandledRejection', (e) => bail(`unhandled: ${e?.stack ?? e}`));
  const started = Date.now();
  try {
    await main();
    if (process.exitCode) throw new Error('a page reported an error');
    if (!over) console.log(`PASS: ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (e) {
    if (!over) console.error(`FAIL: ${name}:`, e.stack ?? e.message);
    process.exitCode = 1;
  } finally {
    over = true;
    clearTimeout(overall);
    await cleanup();
  }
}

export function check(cond, what) {
  if (!cond) throw new Error(what);
  console.log('ok -', what);
}

/** `promise`, or a rejection naming `what` after `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Items arriving over time (log text, lines, WebSocket frames), and waits for a
 * condition on them: `wait(cond)` resolves with the first non-undefined `cond(items)`,
 * evaluated now and on every arrival, or rejects after `ms` or when the source ends.
 */
export class Inbox {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = new Set();
    this.ended = null;
  }

  push(item) {
    this.items.push(item);
    for (const w of [...this.waiters]) w.poll();
  }

  end(why) {
    this.ended = why;
    for (const w of [...this.waiters]) w.poll();
  }

  wait(cond, what, ms = STEP) {
    return new Promise((resolve, reject) => {
      const w = {
        poll: () => {
          let v;
          try {
            v = cond(this.items);
          } catch (e) {
            return done(() => reject(e));
          }
          if (v !== undefined) return done(() => resolve(v));
          if (this.ended !== null) done(() => reject(new Error(`${this.name}: ${this.ended} while waiting for ${what}`)));
        },
      };
      const timer = setTimeout(() => done(() => reject(new Error(
        `${this.name}: no ${what} within ${ms} ms; last received:\n  ${this.items.slice(-8).map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join('\n  ')}`,
      ))), ms);
      const done = (f) => {
        clearTimeout(timer);
        this.waiters.delete(w);
        f();
      };
      this.waiters.add(w);
      w.poll();
    });
  }
}

/** Ends `child` (by its PID) at cleanup: SIGTERM, then SIGKILL after `graceMs`. */
export function killAtCleanup(child, graceMs = 5000) {
  onCleanup(() => stop(child, 'SIGTERM', graceMs));
}

/** Sends `sig` to `child` and waits for its exit; SIGKILL if it lingers `graceMs`. */
export function stop(child, sig = 'SIGKILL', graceMs = 5000) {
  return new Promise((done) => {
    if (child.exitCode !== null || child.signalCode !== null) return done();
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => { clearTimeout(t); done(); });
    child.kill(sig);
  });
}

/**
 * Starts `multiclient serve` with `args` (its services on port 0) and waits until it
 * logs the ports of both `http` and `chat`. Returns the child, its ports and its log
 * (an Inbox of output chunks; `logged(re, n)` waits for the n-th line matching `re`).
 */
export async function startServer(bin, args, env, name) {
  const child = spawn(bin, ['serve', ...args], {
    env: { ...process.env, ...env, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  killAtCleanup(child);
  const log = new Inbox(name);
  child.on('error', (e) => log.end(`cannot run ${bin}: ${e.message}`));
  child.stdout.setEncoding('utf8').on('data', (d) => log.push(d));
  child.stderr.setEncoding('utf8').on('data', (d) => log.push(d));
  child.once('exit', (code, sig) => log.end(`exited (${code ?? sig})`));
  const text = () => log.items.join('');
  const ports = await log.wait(() => {
    const p = {};
    // A TLS listener is logged as `http+tls`: its port is the service's all the same.
    for (const m of text().matchAll(/Listening on 127\.0\.0\.1:(\d+) \((\w+)(?:\+tls)?,/g)) p[m[2]] = Number(m[1]);
    return p.http && p.chat ? p : undefined;
  }, 'ports of http and chat in its log');
  const logged = (re, n = 1, ms = STEP) => log.wait(
    () => ((text().match(new RegExp(re.source, 'g')) ?? []).length >= n ? true : undefined),
    `${n} × /${re.source}/ in its log`, ms,
  );
  const count = (re) => (text().match(new RegExp(re.source, 'g')) ?? []).length;
  return { child, ports, log, text, logged, count };
}

/** A free loopback port (the OS's pick for port 0, released for the caller). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** The `process_id` in `INFO server` of whatever Redis answers on `port`, or null. */
export function redisPid(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const finish = (v) => { s.destroy(); clearTimeout(t); resolve(v); };
    const t = setTimeout(() => finish(null), 2000);
    s.on('error', () => finish(null));
    s.on('connect', () => s.write('INFO server\r\n'));
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      const m = /process_id:(\d+)/.exec(buf.toString('latin1'));
      if (m) finish(Number(m[1]));
    });
    s.on('end', () => finish(null));
  });
}

/**
 * Starts a `redis-server` of the test's own (no persistence) on `port`, or on a free
 * port when none is given, and returns it once it said it is ready and `INFO` on the
 * port names its PID: on a shared machine another test's server may have taken the
 * port meanwhile, and chatting through it would mix two tests' rooms. A free port is
 * retried up to 5 times; a given port (a restart) is not.
 */
export async function startRedis(port = null) {
  for (let attempt = 0; attempt < (port === null ? 5 : 1); attempt++) {
    const p = port ?? await freePort();
    let child;
    try {
      child = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(p), '--save', '', '--appendonly', 'no'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (e) {
      throw new Error(`cannot start redis-server (${e.message}): install it (Debian: apt-get install redis-server)`);
    }
    const spawned = await new Promise((resolve) => {
      child.once('spawn', () => resolve(null));
      child.once('error', (e) => resolve(e));
    });
    if (spawned) throw new Error(`cannot start redis-server (${spawned.message}): install it (Debian: apt-get install redis-server)`);
    child.on('error', (e) => console.error('redis-server:', e.message));
    onCleanup(() => stop(child, 'SIGKILL'));
    const out = new Inbox('redis-server');
    child.stdout.setEncoding('utf8').on('data', (d) => out.push(d));
    child.stderr.setEncoding('utf8').on('data', (d) => out.push(d));
    child.once('exit', (code, sig) => out.end(`exited (${code ?? sig})`));
    try {
      await out.wait((items) => (items.join('').includes('Ready to accept connections') ? true : undefined), 'readiness', STEP);
    } catch (e) {
      console.error(`redis-server on port ${p} did not start: ${e.message}`);
      await stop(child, 'SIGKILL');
      continue;
    }
    const pid = await redisPid(p);
    if (pid === child.pid) return { child, port: p, url: `redis://127.0.0.1:${p}/` };
    console.error(`port ${p} is answered by pid ${pid}, not by our redis-server ${child.pid}`);
    await stop(child, 'SIGKILL');
  }
  throw new Error(port === null ? 'redis-server could not start on a free port in 5 tries' : `redis-server could not restart on port ${port}`);
}

/** A chat member on the TCP line protocol: lines in an Inbox, read with a cursor. */
export class LineClient {
  static async connect(name, port) {
    const c = new LineClient(name, port);
    await withTimeout(new Promise((resolve, reject) => {
      c.sock.once('connect', resolve);
      c.sock.once('error', reject);
    }), STEP, `${name}: connect to ${port}`);
    c.welcome = await c.until((l) => l.startsWith('WELCOME '), 'WELCOME');
    return c;
  }

  constructor(name, port) {
    this.name = name;
    this.inbox = new Inbox(name);
    this.cursor = 0;
    this.sock = net.connect(port, '127.0.0.1');
    this.sock.setEncoding('utf8');
    let buf = '';
    this.sock.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        this.inbox.push(buf.slice(0, i).replace(/\r$/, ''));
        buf = buf.slice(i + 1);
      }
    });
    this.sock.on('error', (e) => this.inbox.end(`socket error ${e.message}`));
    this.sock.on('close', () => this.inbox.end('connection closed'));
    onCleanup(() => this.sock.destroy());
  }

  get lines() {
    return this.inbox.items;
  }

  send(...lines) {
    this.sock.write(lines.map((l) => l + '\n').join(''));
  }

  /** The next line after the cursor for which `pred` holds; the cursor moves past it. */
  async until(pred, what = 'a matching line', ms = STEP) {
    const from = this.cursor;
    const i = await this.inbox.wait((items) => {
      for (let k = from; k < items.length; k++) if (pred(items[k])) return k;
      return undefined;
    }, what, ms);
    this.cursor = i + 1;
    return this.lines[i];
  }

  /** Sends `cmd` and returns the first line after it starting with a prefix given. */
  async ask(cmd, prefixes, ms = STEP) {
    const ps = [prefixes].flat();
    this.cursor = this.lines.length;
    this.send(cmd);
    return this.until((l) => ps.some((p) => l.startsWith(p)), `${ps.join('… or ')}… after ${cmd}`, ms);
  }

  /** Every `MSG <room>` received so far, as { id, nick, text }. */
  msgsIn(room) {
    const out = [];
    for (const l of this.lines) {
      const m = /^MSG (\S+) (\S+) (\S+) (.*)$/.exec(l);
      if (m && m[1] === room) out.push({ id: m[2], nick: m[3], text: m[4] });
    }
    return out;
  }
}

/**
 * Debian's Chromium, headless, in a fresh profile removed at cleanup; `extraArgs` are
 * added to its command line (chat-tls.mjs: the test certificate to trust).
 */
export async function launchChromium(extraArgs = []) {
  const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
  const profile = mkdtempSync(path.join(tmpdir(), 'multiclient-chromium-'));
  onCleanup(() => rmSync(profile, { recursive: true, force: true }));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    timeout: 2 * STEP,
    viewport: { width: 1000, height: 600 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...extraArgs,
    ],
  });
  onCleanup(() => context.close());
  context.setDefaultTimeout(STEP);
  return context;
}

/** Checks that `file` is a non-empty PNG. */
export function checkPng(file) {
  const size = statSync(file).size;
  const magic = readFileSync(file).subarray(0, 8).toString('hex');
  check(size > 0 && magic === '89504e470d0a1a0a', `${path.relative(root, file)} is a non-empty PNG (${size} bytes)`);
}

/**
 * Opens the chat page at `base + '/chat'` as `nick` and joins `lobby`, failing the run
 * on a page error, a console error, a response of 400 or more, or a failed request.
 * Options: `viewport` (a size for this page), `socketDrops` (the test drops the page's
 * WebSocket on purpose: its console errors and failed request are expected), `sockets`
 * (an array the page's WebSocket URLs are pushed to).
 */
export async function openChatPage(context, base, nick, { viewport = null, socketDrops = false, sockets = null } = {}) {
  const page = await context.newPage();
  if (viewport) await page.setViewportSize(viewport);
  const fail = (...what) => { console.error(`${nick}:`, ...what); process.exitCode = 1; };
  page.on('pageerror', (e) => fail('page error:', e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && !(socketDrops && /WebSocket/.test(m.text()))) fail('console error:', m.text());
  });
  page.on('response', (r) => { if (r.status() >= 400) fail(`${r.status()} for ${r.url()}`); });
  page.on('requestfailed', (r) => {
    if (!(socketDrops && r.url().includes('/chat/ws'))) fail(`request failed: ${r.url()} (${r.failure()?.errorText})`);
  });
  if (sockets) page.on('websocket', (ws) => sockets.push(ws.url()));
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

/** Says `text` in the page's current room. */
export async function sayOnPage(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

/** Waits until the page shows a message of `nick` with `text`. */
export const seenOnPage = (page, nick, text) =>
  page.locator('#log li.msg', { hasText: text }).filter({ hasText: nick }).waitFor({ timeout: STEP });
