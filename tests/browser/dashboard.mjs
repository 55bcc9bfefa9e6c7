// The admin dashboard in headless Chromium under load: starts `multiclient serve` with
// its admin listener on a free port, runs `multiclient bench hello` (a connection per
// operation: accepts move) and `bench ack` (connections held open) against it, opens
// /dashboard, and checks that the page runs under its strict CSP without an error,
// shows the server ready, and that its figures change between two screenshots
// (target/admin-dashboard-1.png, -2.png). Exits non-zero on any failure.
//
// Usage: node dashboard.mjs [path/to/multiclient]   (default: target/debug/multiclient)
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { STEP, check, checkPng, killAtCleanup, launchChromium, root, run, startServer } from './lib.mjs';

const bin = path.resolve(process.argv[2] ?? path.join(root, 'target/debug/multiclient'));

function bench(args) {
  const child = spawn(bin, ['bench', ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
  killAtCleanup(child, 2000);
  return child;
}

async function main() {
  const server = await startServer(bin, [
    '--service', 'http=127.0.0.1:0', '--service', 'chat=127.0.0.1:0',
    '--service', 'hello=127.0.0.1:0', '--service', 'ack=127.0.0.1:0',
    '--admin', '127.0.0.1:0',
  ], {}, 'server');
  // The admin listener starts after the services: its line comes last.
  await server.logged(/Admin on http:\/\//);
  const ports = {};
  for (const m of server.text().matchAll(/Listening on 127\.0\.0\.1:(\d+) \((\w+),/g)) ports[m[2]] = Number(m[1]);
  check(ports.admin && ports.hello && ports.ack, 'the server logs its admin, hello and ack ports');
  const base = `http://127.0.0.1:${ports.admin}`;
  bench(['hello', '--addr', `127.0.0.1:${ports.hello}`, '--conns', '4', '--secs', '20']);
  bench(['ack', '--addr', `127.0.0.1:${ports.ack}`, '--conns', '8', '--secs', '20']);

  const context = await launchChromium();
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  await page.goto(base + '/dashboard');
  await page.locator('#state', { hasText: 'ready' }).waitFor({ timeout: STEP });
  check(true, 'the dashboard says the server is ready');
  // Two samples are needed for a rate; wait until connections are seen accepted.
  await page.waitForFunction(() => {
    const v = Number(document.getElementById('accepts').textContent.replace(/,/g, ''));
    return v > 0;
  }, null, { timeout: STEP });
  check(true, 'accepts per second above 0 under bench hello');
  // p50 and p99 come from the per-second difference of the latency histograms.
  await page.waitForFunction(() => /µs$/.test(document.getElementById('latency').textContent), null, { timeout: STEP });
  check(true, 'the answer latency tile shows p50 · p99 in µs under load');
  const figures = () => page.evaluate(() => ['open', 'accepts', 'answers', 'latency', 'rss', 'uptime']
    .map((id) => document.getElementById(id).textContent).join(' | ')
    + ' | ' + [...document.querySelectorAll('#services tbody tr')]
      .map((tr) => [...tr.cells].map((td) => td.textContent).join('\t') + '\t').join(' '));
  mkdirSync(path.join(root, 'target'), { recursive: true });
  const shot1 = path.join(root, 'target/admin-dashboard-1.png');
  const shot2 = path.join(root, 'target/admin-dashboard-2.png');
  const first = await figures();
  await page.screenshot({ path: shot1, fullPage: true });
  await page.waitForFunction((before) => {
    const now = ['open', 'accepts', 'answers', 'latency', 'rss', 'uptime']
      .map((id) => document.getElementById(id).textContent).join(' | ')
      + ' | ' + [...document.querySelectorAll('#services tbody tr')]
        .map((tr) => [...tr.cells].map((td) => td.textContent).join('\t') + '\t').join(' ');
    return now !== before;
  }, first, { timeout: STEP });
  await page.waitForTimeout(2500); // let the charts grow a little for the picture
  const second = await figures();
  await page.screenshot({ path: shot2, fullPage: true });
  check(first !== second, `the figures changed between the screenshots:\n  ${first}\n  ${second}`);
  const accepted = (s) => Number((s.match(/hello\t\S+\t(\S+)\t/) ?? [0, '-1'])[1].replace(/,/g, ''));
  check(accepted(second) > accepted(first), `hello's accepted count rose (${accepted(first)} → ${accepted(second)})`);
  const legend = await page.evaluate(() => document.getElementById('l-lat').textContent);
  const p99 = Number((legend.match(/ack message p99 ([\d,.]+)/) ?? [0, '0'])[1].replace(/,/g, ''));
  check(p99 > 0, `the latency chart draws ack's p99 (${p99} µs; legend: ${legend})`);
  const answered = (s) => Number(s.split(' | ')[2].replace(/,/g, ''));
  check(answered(second) > 0, `answers per second above 0 (${answered(second)})`);
  checkPng(shot1);
  checkPng(shot2);
  check(problems.length === 0, `no page error, no CSP violation (${problems.join('; ') || 'none'})`);
}

run('dashboard', 90_000, main);
