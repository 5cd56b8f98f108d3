// What every browser test file needs: the real binary (target/debug/classifier-api, built by
// scripts/browser-test.sh) on 127.0.0.1:0 with a fresh data dir, a fixture image server
// (python3 -m http.server on fixtures/shared/images), and Debian's Chromium driven by
// playwright-core on the page. Each test file gets its own servers, so their reports start empty.
// Everything started is stopped by `close`, pass or fail, or at exit if the runner dies first.
//
// Environment: CLASSIFIER_BIN (binary), CHROMIUM (browser).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const images = path.join(root, 'fixtures/shared/images');
const binary = process.env.CLASSIFIER_BIN || path.join(root, 'target/debug/classifier-api');
const browserPath = process.env.CHROMIUM || '/usr/bin/chromium';

// Chromium as this machine needs it: no sandbox (root), no GPU, and none of its own network
// traffic (the network is closed; those connections would only be refused).
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];

const children = [];

/** Starts a process and resolves with the first match of `pattern` in its `stream` output. */
function start(name, command, args, { stream, pattern, timeoutMs, env }) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let seen = '';
    const timer = setTimeout(() => fail(`no match for ${pattern} within ${timeoutMs} ms`), timeoutMs);
    function fail(why) {
      clearTimeout(timer);
      reject(new Error(`${name}: ${why}\n--- output so far ---\n${seen}`));
    }
    for (const s of ['stdout', 'stderr']) {
      child[s].setEncoding('utf8');
      child[s].on('data', (chunk) => {
        seen += chunk;
        if (s !== stream) return;
        const m = seen.match(pattern);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
    }
    child.on('error', (e) => fail(String(e)));
    child.on('exit', (code, signal) => fail(`exited early (code ${code}, signal ${signal})`));
  });
}

/** SIGTERM, then SIGKILL if still running after 5 s. */
export async function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

// Last resort if the runner dies between hooks: never leave a server behind.
process.on('exit', () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
});

/** `classifier-api user add NAME --password-stdin [--role ROLE]` on `dataDir`, before the server holds it. */
function addUser(dataDir, { name, password, role }) {
  const args = ['user', 'add', name, '--password-stdin', '--data-dir', dataDir, ...(role ? ['--role', role] : [])];
  const out = spawnSync(binary, args, { input: `${password}\n`, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
  assert.equal(out.status, 0, `user add ${name}: ${out.stderr}`);
}

/**
 * Starts both servers and the browser on `/?refresh=1` (the dashboard refreshes every second
 * instead of every 5, so tests wait less). Options: `serveArgs`, more flags for `serve` (e.g.
 * `['--ops-auth', 'token']`); `users`, [{name, password, role?}] added with the CLI before the
 * server starts. Resolves to
 * {api, img, page, problems, foreignRequests, classifyDirectly, getJson, login, close}:
 * `problems` collects page errors and console errors, `foreignRequests` any request to a third
 * host; `login(name, password)` resolves to a token from `POST /token`.
 */
export async function launch({ serveArgs = [], users = [] } = {}) {
  const scratch = mkdtempSync(path.join(tmpdir(), 'classifier-browser-'));
  const dataDir = path.join(scratch, 'data');
  for (const user of users) addUser(dataDir, user);
  const imagePort = await start('image server', 'python3', ['-u', '-m', 'http.server', '0', '--bind', '127.0.0.1', '--directory', images], {
    stream: 'stdout',
    pattern: /port (\d+)/,
    timeoutMs: 15000,
  });
  const img = `http://127.0.0.1:${imagePort}`;
  const addr = await start(
    'classifier-api',
    binary,
    ['serve', '--listen', '127.0.0.1:0', '--allow-private-networks', '--data-dir', dataDir, ...serveArgs],
    {
      stream: 'stderr',
      pattern: /listening on http:\/\/([0-9.]+:[0-9]+)/,
      timeoutMs: 120000,
      env: { NO_COLOR: '1', RUST_LOG: 'info' },
    },
  );
  const api = `http://${addr}`;

  const context = await chromium.launchPersistentContext(path.join(scratch, 'profile'), {
    executablePath: browserPath,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1200, height: 900 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const problems = [];
  const foreignRequests = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // A failed image load is the expected outcome of the bad-URL test, not a page problem.
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('request', (r) => {
    const url = r.url();
    const own = [api, img, 'data:', `blob:${api}`].some((prefix) => url.startsWith(prefix));
    if (!own) foreignRequests.push(url);
  });
  await page.goto(`${api}/?refresh=1`);

  async function classifyDirectly(imageUrl) {
    const response = await fetch(`${api}/classify-image`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ image_url: imageUrl }),
    });
    return { status: response.status, body: await response.json() };
  }

  async function getJson(p) {
    const response = await fetch(`${api}${p}`);
    assert.equal(response.status, 200, p);
    return response.json();
  }

  async function login(username, password) {
    const response = await fetch(`${api}/token`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password }),
    });
    assert.equal(response.status, 200, `login of ${username}`);
    return (await response.json()).token;
  }

  async function close() {
    await context.close().catch(() => {});
    await Promise.all(children.map(stop));
    rmSync(scratch, { recursive: true, force: true });
  }

  return { api, img, page, problems, foreignRequests, classifyDirectly, getJson, login, close };
}

/** The page fits its window's width: nothing to scroll sideways (phone width, say). */
export async function assertNoSidewaysScroll(page, when) {
  const [pageWidth, windowWidth] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(pageWidth <= windowWidth, `${when}: the page is ${pageWidth} px wide in a ${windowWidth} px window`);
}
