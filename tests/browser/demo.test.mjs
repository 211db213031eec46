// The /demo page in a real browser: headless Chromium (Debian's, never a
// downloaded one) follows a room over EventSource with stream tickets, shows
// changes made through the API, and resumes after a dropped stream with a
// fresh ticket and the last event id.
//
// Needs Postgres and Redis on their default local ports and a built binary
// (METACAST_BIN, default target/debug/metacast). Run: node --test tests/browser/

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = resolve(ROOT, process.env.METACAST_BIN ?? 'target/debug/metacast');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const UI_TIMEOUT = 5000; // how long the page may take to show a change

const suffix = randomBytes(6).toString('hex');
const database = `metacast_browser_${suffix}`;
const env = {
  ...process.env,
  METACAST_JWT_SECRET: randomBytes(32).toString('hex'),
  DATABASE_URL: `postgres://postgres@127.0.0.1:5432/${database}`,
  METACAST_REDIS_PREFIX: `browser:${suffix}:`,
  METACAST_SHUTDOWN_DRAIN_SECS: '0',
  METACAST_LOG_FORMAT: 'pretty',
  RUST_LOG: process.env.RUST_LOG ?? 'warn',
};

let server = null;
let serverLog = '';
let base = '';
let token = '';
let browser = null;
let page = null;
let failed = false;

/** A test whose failure also prints the server's log (and the page's errors). */
function check(name, body) {
  test(name, async () => {
    try {
      await body();
    } catch (err) {
      failed = true;
      throw err;
    }
  });
}

function freePort() {
  return new Promise((ok, fail) => {
    const probe = createServer();
    probe.once('error', fail);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

async function waitReady() {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (server.exitCode !== null) throw new Error(`metacast exited (${server.exitCode}):\n${serverLog}`);
    try {
      if ((await fetch(`${base}/readyz`)).ok) return;
    } catch { /* not listening yet */ }
    await sleep(200);
  }
  throw new Error(`metacast did not become ready in 60 s:\n${serverLog}`);
}

/** PUT a room's metadata through the API, as another client would. */
async function putMetadata(room, document, ifMatch) {
  const headers = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' };
  if (ifMatch !== undefined) headers['If-Match'] = `"${ifMatch}"`;
  const response = await fetch(`${base}/v1/rooms/${room}/metadata`, {
    method: 'PUT', headers, body: JSON.stringify(document),
  });
  const text = await response.text();
  assert.ok(response.ok, `PUT ${room} metadata: ${response.status} ${text}`);
  return Number(response.headers.get('etag').replaceAll('"', ''));
}

async function expectText(selector, expected) {
  await page.locator(selector).filter({ hasText: expected }).waitFor({ timeout: UI_TIMEOUT });
}

async function shownVersion() {
  return (await page.locator('#room-version').textContent()).trim();
}

function cleanup() {
  if (server && server.exitCode === null) server.kill('SIGKILL');
}
process.on('exit', cleanup);

before(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  env.METACAST_LISTEN = `127.0.0.1:${port}`;
  server = spawn(BIN, ['serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  server.stdout.on('data', (chunk) => { serverLog += chunk; });
  server.stderr.on('data', (chunk) => { serverLog += chunk; });
  await waitReady();
  token = execFileSync(BIN, ['token', '--sub', 'browser', '--admin', '--ttl', '15m'], { env })
    .toString().trim();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-sync', '--disable-quic'],
  });
  page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.on('pageerror', (err) => { serverLog += `\n[page error] ${err.message}`; });
}, { timeout: 90_000 });

after(async () => {
  if (failed) console.error(`--- metacast log (and page errors) ---\n${serverLog.slice(-20_000)}`);
  await browser?.close().catch(() => {});
  if (server && server.exitCode === null) {
    let timer;
    const exited = new Promise((ok) => server.once('exit', ok));
    server.kill('SIGTERM');
    await Promise.race([exited, new Promise((ok) => { timer = setTimeout(ok, 10_000); })]);
    clearTimeout(timer);
    cleanup();
  }
  spawnSync('psql', ['-h', '127.0.0.1', '-U', 'postgres', '-q', '-c',
    `drop database if exists ${database} with (force)`], { stdio: 'ignore' });
  spawnSync('sh', ['-c', `redis-cli --scan --pattern '${env.METACAST_REDIS_PREFIX}*' | xargs -r redis-cli del`],
    { stdio: 'ignore' });
});

describe('the demo page', { timeout: 60_000 }, () => {
  check('is served from the binary, with no-cache and a strict CSP', async () => {
    const redirect = await fetch(`${base}/demo`, { redirect: 'manual' });
    assert.equal(redirect.status, 308);
    assert.equal(redirect.headers.get('location'), '/demo/');
    for (const [path, type] of [['/demo/', 'text/html; charset=utf-8'],
      ['/demo/metacast-client.js', 'text/javascript; charset=utf-8'],
      ['/demo/demo.js', 'text/javascript; charset=utf-8'],
      ['/demo/demo.css', 'text/css; charset=utf-8']]) {
      const response = await fetch(`${base}${path}`);
      assert.equal(response.status, 200, path);
      assert.equal(response.headers.get('content-type'), type, path);
      assert.equal(response.headers.get('cache-control'), 'no-cache', path);
      assert.ok((await response.text()).length > 100, path);
    }
    const csp = (await fetch(`${base}/demo/`)).headers.get('content-security-policy');
    assert.match(csp, /script-src 'self'/);
  });

  check('shows live changes and resumes a dropped stream with a fresh ticket', async () => {
    assert.equal(await putMetadata('lobby', { topic: 'standup', seats: 4 }), 1);

    const streams = [];
    page.on('request', (request) => {
      if (request.url().includes('/events?')) streams.push(new URL(request.url()));
    });
    await page.goto(`${base}/demo/`);
    await page.fill('#token', token);
    await page.fill('#room', 'lobby');
    await page.click('#connect');
    await page.locator('#status[data-state="live"]').waitFor({ timeout: UI_TIMEOUT });
    await expectText('#room-metadata', '"standup"');
    assert.equal(await shownVersion(), '1');
    assert.equal(await page.locator('#event-log li').first().getAttribute('data-type'), 'sync');

    // A change by someone else arrives over the EventSource.
    assert.equal(await putMetadata('lobby', { topic: 'retro', seats: 4 }, 1), 2);
    await expectText('#room-metadata', '"retro"');
    await expectText('#room-version', '2');
    assert.equal(await page.locator('#event-log li').first().getAttribute('data-type'),
      'room.metadata.updated');

    // Drop the stream, change the room while the page cannot hear it, then
    // report the drop as the browser would on a network error.
    const lastId = await page.evaluate(() => {
      const { stream } = window.metacastDemo;
      window.droppedSource = stream.source;
      stream.source.close();
      return stream.lastEventId;
    });
    assert.ok(lastId, 'the client remembers the last event id');
    assert.equal(await putMetadata('lobby', { topic: 'planning', seats: 5 }, 2), 3);
    await sleep(500);
    assert.equal(await shownVersion(), '2', 'a closed stream delivers nothing');
    await page.evaluate(() => window.droppedSource.dispatchEvent(new Event('error')));

    await expectText('#room-metadata', '"planning"');
    await expectText('#room-version', '3');
    await page.locator('#status[data-state="live"][data-connects="2"]').waitFor({ timeout: UI_TIMEOUT });
    // Resumed by replay (the missed update itself), not by a fresh snapshot.
    assert.equal(await page.locator('#event-log li').first().getAttribute('data-type'),
      'room.metadata.updated');
    assert.equal(streams.length, 2, `two streams opened: ${streams.join(', ')}`);
    const [first, second] = streams;
    assert.ok(first.searchParams.get('ticket'));
    assert.equal(first.searchParams.get('last_event_id'), null);
    assert.ok(second.searchParams.get('ticket'));
    assert.notEqual(second.searchParams.get('ticket'), first.searchParams.get('ticket'),
      'a fresh ticket for the new stream');
    assert.equal(second.searchParams.get('last_event_id'), lastId);
  });

  check('saves edits with If-Match and shows a 412 conflict', async () => {
    // Continues on the connected page of the previous test (version 3).
    await expectText('#editor-version', '3');
    await page.fill('#metadata-editor', JSON.stringify({ topic: 'mine' }));
    // Someone else saves first: the editor's If-Match "3" is now stale.
    assert.equal(await putMetadata('lobby', { topic: 'theirs' }, 3), 4);
    await expectText('#room-version', '4');
    await expectText('#room-notice', 'changed to version 4');
    await page.click('#save');
    await expectText('#save-result', 'Conflict (412)');
    assert.match(await page.locator('#room-metadata').textContent(), /"theirs"/);

    await page.click('#load-current');
    await expectText('#editor-version', '4');
    await page.fill('#metadata-editor', JSON.stringify({ topic: 'mine', seats: 6 }));
    await page.click('#save');
    await expectText('#save-result', 'Saved as version 5');
    await expectText('#room-version', '5');
    await expectText('#room-metadata', '"mine"');
    assert.equal(await page.locator('#room-notice').isVisible(), false);
  });

  check('shows the session and occupants as a connection joins and leaves', async () => {
    const api = async (method, path, body, type = 'application/json') => {
      const headers = { Authorization: `Bearer ${token}` };
      if (body !== undefined) headers['Content-Type'] = type;
      const response = await fetch(`${base}/v1${path}`, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await response.text();
      assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`);
      return text ? JSON.parse(text) : null;
    };
    const connection = await api('POST', '/connections', { metadata: { name: 'Alice' }, ttl_seconds: 120 });
    const row = `#occupant-rows tr[data-connection-id="${connection.id}"]`;
    await api('PUT', `/rooms/lobby/connections/${connection.id}`);
    await expectText(row, 'Alice');
    await expectText('#occupant-count', '1');
    await expectText('#session-occupancy', '1');
    await expectText('#session-version', '0');

    await api('PATCH', '/rooms/lobby/session/metadata', { recording: true }, 'application/merge-patch+json');
    await expectText('#session-metadata', '"recording"');
    await expectText('#session-version', '1');
    await api('PATCH', `/connections/${connection.id}/metadata`, { muted: true });
    await expectText(row, '"muted":true');
    if (process.env.DEMO_SCREENSHOT) {
      await sleep(1500); // let the highlight fade
      await page.screenshot({ path: process.env.DEMO_SCREENSHOT, fullPage: true });
    }

    await api('DELETE', `/rooms/lobby/connections/${connection.id}`);
    await page.locator('#no-session').waitFor({ timeout: UI_TIMEOUT });
    await expectText('#occupant-count', '0');
    assert.equal(await page.locator(row).count(), 0);
    await api('DELETE', `/connections/${connection.id}`);

    // Deleting the room ends its stream; the client stops instead of retrying.
    await api('DELETE', '/rooms/lobby');
    await expectText('#room-notice', 'deleted');
    await page.locator('#status[data-state="closed"]').waitFor({ timeout: UI_TIMEOUT });
    assert.equal(await page.locator('#event-log li').first().getAttribute('data-type'), 'room.deleted');
    assert.equal(await page.evaluate(() => window.metacastDemo.stream.source), null);
  });
});
