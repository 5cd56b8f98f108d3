// CORS in real Chromium: a page on a second local origin calls the API with `fetch`.
//
// A node HTTP server on its own port is the "front end" origin: it serves a blank page and the
// fixture image the API downloads. Two instances of the real binary run beside it: one with
// `--cors-origins` set to that origin, where the page's requests work (after the preflight a JSON
// POST needs) and its script can read the answers, errors and exposed headers included; and one
// that allows only another origin, where Chromium blocks the same request (`fetch` rejects with a
// TypeError) although the service itself answers.
//
// Environment: CLASSIFIER_BIN (binary), CHROMIUM (browser).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { stop } from './harness.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const binary = process.env.CLASSIFIER_BIN || path.join(root, 'target/debug/classifier-api');
const browserPath = process.env.CHROMIUM || '/usr/bin/chromium';
const catBmp = readFileSync(path.join(root, 'fixtures/shared/images/cat.bmp'));

const scratch = mkdtempSync(path.join(tmpdir(), 'classifier-cors-'));
const apps = [];
let front; // the page's origin, http://127.0.0.1:PORT
let frontServer;
let browser;
let page;
let allowing; // {url, log()} of the instance that allows `front`
let refusing; // ... of the one that allows only another origin

/** The real binary on 127.0.0.1:0; resolves once it listens, with its URL and its log so far. */
function startApp(name, extraArgs) {
  return new Promise((resolve, reject) => {
    const args = ['serve', '--listen', '127.0.0.1:0', '--allow-private-networks', '--data-dir', path.join(scratch, name), ...extraArgs];
    const child = spawn(binary, args, { env: { ...process.env, NO_COLOR: '1', RUST_LOG: 'info' }, stdio: ['ignore', 'ignore', 'pipe'] });
    apps.push(child);
    let log = '';
    const timer = setTimeout(() => fail('did not start within 120 s'), 120000);
    function fail(why) {
      clearTimeout(timer);
      reject(new Error(`${name}: ${why}\n--- log ---\n${log}`));
    }
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const m = log.match(/listening on (http:\/\/[0-9.]+:[0-9]+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ url: m[1], log: () => log });
      }
    });
    child.on('error', (e) => fail(String(e)));
    child.on('exit', (code, signal) => fail(`exited early (code ${code}, signal ${signal})`));
  });
}

// Last resort if the runner dies between hooks: never leave a server behind.
process.on('exit', () => {
  for (const child of apps) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

/** The front end's origin: a blank page, and the image the API is asked to classify. */
function startFront() {
  frontServer = createServer((req, res) => {
    if (req.url === '/cat.bmp') {
      res.writeHead(200, { 'Content-Type': 'image/bmp' }).end(catBmp);
    } else if (req.url === '/') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' }).end('<!doctype html><title>front end</title><p>promo</p>');
    } else {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve) => frontServer.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${frontServer.address().port}`)));
}

/**
 * Runs `fetch(url, init)` in the page (so from the front end's origin) and returns what its
 * script can see: status, JSON body and the named response headers, or the error it rejects with.
 */
function fetchFromPage(url, init, headers = []) {
  return page.evaluate(
    async ({ url, init, headers }) => {
      try {
        const response = await fetch(url, init);
        const seen = Object.fromEntries(headers.map((h) => [h, response.headers.get(h)]));
        return { status: response.status, body: await response.json(), headers: seen };
      } catch (e) {
        return { error: e.name, message: e.message };
      }
    },
    { url, init, headers },
  );
}

const classifyInit = (imageUrl) => ({
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ image_url: imageUrl }),
});

before(async () => {
  front = await startFront();
  [allowing, refusing] = await Promise.all([
    startApp('allowing', ['--cors-origins', front]),
    startApp('refusing', ['--cors-origins', 'https://promo.example.com']),
  ]);
  browser = await chromium.launch({
    executablePath: browserPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
  page = await browser.newPage();
  await page.goto(`${front}/`);
  assert.equal(await page.title(), 'front end');
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await Promise.all(apps.map(stop));
  if (frontServer) frontServer.close();
  rmSync(scratch, { recursive: true, force: true });
});

test('an allowed origin classifies an image URL and reads the answer and its request id', async () => {
  const got = await fetchFromPage(`${allowing.url}/classify-image`, classifyInit(`${front}/cat.bmp`), ['x-request-id', 'content-type']);
  assert.equal(got.status, 200, JSON.stringify(got));
  assert.equal(got.body.classification, 'Egyptian_cat');
  assert.equal(got.body.confidence, '0.835');
  assert.ok(got.headers['x-request-id'], 'X-Request-Id is exposed to the script');
  // A JSON POST is not a "simple" request: Chromium asked first, and the service said yes.
  assert.match(allowing.log(), /method=OPTIONS.*route="?\/classify-image"?.*status=204/);
});

test('an allowed origin reads error answers too, with a bearer token in the request', async () => {
  const bad = await fetchFromPage(`${allowing.url}/classify-image`, classifyInit('not a url'));
  assert.equal(bad.status, 400, JSON.stringify(bad));
  assert.equal(bad.body.error.code, 'invalid_url');
  // Authorization is not a CORS-safe header: the preflight must allow it.
  const secret = await fetchFromPage(`${allowing.url}/secret`, { headers: { Authorization: 'Bearer not-a-token' } });
  assert.equal(secret.status, 401, JSON.stringify(secret));
  assert.equal(secret.body.error.code, 'invalid_token');
});

test('an origin that is not allowed is blocked by the browser', async () => {
  const got = await fetchFromPage(`${refusing.url}/classify-image`, classifyInit(`${front}/cat.bmp`));
  assert.equal(got.error, 'TypeError', JSON.stringify(got));
  // Not a dead server: the same request from outside a browser is answered.
  const direct = await fetch(`${refusing.url}/classify-image`, classifyInit(`${front}/cat.bmp`));
  assert.equal(direct.status, 200);
  assert.equal((await direct.json()).classification, 'Egyptian_cat');
  // The preflight was refused the way a browser understands: the routes' 405, no CORS headers.
  assert.match(refusing.log(), /method=OPTIONS.*status=405/);
});

/** Uploads the front origin's cat.bmp from the page: as a raw body, and as FormData. */
function uploadFromPage(apiUrl, imageUrl) {
  return page.evaluate(
    async ({ apiUrl, imageUrl }) => {
      const blob = await (await fetch(imageUrl)).blob();
      const form = new FormData();
      form.append('image', blob, 'cat.bmp');
      const inits = [
        { method: 'POST', headers: { 'Content-Type': 'image/bmp' }, body: blob },
        { method: 'POST', body: form },
      ];
      const answers = [];
      for (const init of inits) {
        try {
          const response = await fetch(`${apiUrl}/classify-image?top_k=3`, init);
          answers.push({ status: response.status, body: await response.json() });
        } catch (e) {
          answers.push({ error: e.name });
        }
      }
      return answers;
    },
    { apiUrl, imageUrl },
  );
}

test('an allowed origin uploads a file (raw body and FormData); a refused one is blocked', async () => {
  const allowed = await uploadFromPage(allowing.url, `${front}/cat.bmp`);
  for (const got of allowed) {
    assert.equal(got.status, 200, JSON.stringify(got));
    assert.equal(got.body.classification, 'Egyptian_cat');
    assert.equal(got.body.predictions.length, 3);
  }
  const refused = await uploadFromPage(refusing.url, `${front}/cat.bmp`);
  assert.deepEqual(refused, [{ error: 'TypeError' }, { error: 'TypeError' }]);
});
