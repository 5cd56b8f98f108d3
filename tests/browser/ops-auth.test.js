// The page against `serve --ops-auth token`, in real Chromium: /report and /report/history answer
// 401, so the page asks for a token in place of the dashboard; a plain user's token gets the 403
// explained; an operator's token shows the dashboard, goes with every dashboard request as
// `Authorization: Bearer`, and is kept for the tab (a reload needs no new one); a token that stops
// working is forgotten and asked for again. Classifying needs no token throughout.
//
// Users are made with the CLI before the server starts (harness.js `users`): `operator` with the
// ops role and `viewer` without.
//
// Environment: those of harness.js.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { launch, root } from './harness.js';

const TOKEN_KEY = 'classifier-api.ops-token';
// Not committed: for a person to look at after a run.
const shotPath = path.join(root, 'target/browser-test/ops-auth.png');

let app;
let page;
let img;
let operatorToken;
let viewerToken;
// The Authorization header of every request the page made to the dashboard's endpoints.
const dashboardRequests = [];

const text = (selector) => page.locator(selector).innerText();
const stored = () => page.evaluate((key) => sessionStorage.getItem(key), TOKEN_KEY);

before(async () => {
  app = await launch({
    serveArgs: ['--ops-auth', 'token'],
    users: [
      { name: 'operator', password: 'operator-pass', role: 'ops' },
      { name: 'viewer', password: 'viewer-pass' },
    ],
  });
  ({ page, img } = app);
  page.on('request', (r) => {
    const { pathname } = new URL(r.url());
    if (pathname === '/report' || pathname === '/report/history') {
      dashboardRequests.push({ path: pathname, authorization: r.headers().authorization || null });
    }
  });
  operatorToken = await app.login('operator', 'operator-pass');
  viewerToken = await app.login('viewer', 'viewer-pass');
  // launch() opened the page before the listener above was there: again, with it.
  await page.reload();
});

after(async () => {
  if (app) await app.close();
});

/** Types `token` into the page's token form and submits it. */
async function submitToken(token) {
  await page.getByLabel('Token', { exact: true }).fill(token);
  await page.getByRole('button', { name: 'Show the dashboard' }).click();
}

test('without a token the page asks for one instead of showing the dashboard', async () => {
  await page.locator('#ops-auth').waitFor({ state: 'visible' });
  await page.getByRole('heading', { name: 'Operator token' }).waitFor();
  assert.equal(await page.locator('#usage-card').isHidden(), true);
  assert.equal(await page.locator('#top-card').isHidden(), true);
  // Nothing was refused yet: no error, just the question.
  assert.equal(await page.locator('#ops-auth-error').isHidden(), true);
  assert.equal(await stored(), null);
  // The service really says 401 there, and the page sent no token.
  const direct = await fetch(`${app.api}/report`);
  assert.equal(direct.status, 401);
  assert.ok(dashboardRequests.length > 0);
  assert.ok(dashboardRequests.every((r) => r.authorization === null), JSON.stringify(dashboardRequests));
});

test('classifying still works without a token', async () => {
  const input = page.getByLabel('Image URL', { exact: true });
  await input.fill(`${img}/cat.bmp`);
  await input.press('Enter');
  await page.locator('#result-label').filter({ hasText: 'Egyptian_cat' }).waitFor({ timeout: 30000 });
  // The dashboard is still behind the question.
  assert.equal(await page.locator('#ops-auth').isVisible(), true);
});

test("a plain user's token is refused with the reason, and not kept", async () => {
  await submitToken(viewerToken);
  const alert = page.locator('#ops-auth-error');
  await alert.waitFor({ state: 'visible' });
  const shown = await alert.innerText();
  assert.match(shown, /does not have the ops role/);
  assert.match(shown, /forbidden, HTTP 403/);
  assert.equal(await page.locator('#top-card').isHidden(), true);
  assert.equal(await stored(), null);
  assert.equal(await page.getByLabel('Token', { exact: true }).inputValue(), '', 'the field is cleared');
  mkdirSync(path.dirname(shotPath), { recursive: true });
  await page.screenshot({ path: shotPath, fullPage: true });
});

test("an operator's token shows the dashboard and goes with its requests", async () => {
  const before = dashboardRequests.length;
  // As curl examples show it: the page takes the token out of `Bearer <token>`.
  await submitToken(`Bearer ${operatorToken}`);
  await page.locator('#top-card').waitFor({ state: 'visible' });
  await page.locator('#ops-auth').waitFor({ state: 'hidden' });
  // The classification above is in the report.
  await page.locator('#report-table tbody tr').first().waitFor();
  assert.match(await text('#report-table tbody'), /cat\.bmp/);
  await page.waitForFunction(() => /1 request in the last hour/.test(document.getElementById('usage-summary').textContent));
  assert.equal(await stored(), operatorToken);
  const since = dashboardRequests.slice(before);
  for (const p of ['/report', '/report/history']) {
    assert.ok(since.some((r) => r.path === p && r.authorization === `Bearer ${operatorToken}`), `${p}: ${JSON.stringify(since)}`);
  }
  assert.equal(await page.locator('#report-error').isHidden(), true);
});

test('the token is kept for the tab: a reload shows the dashboard at once', async () => {
  await page.reload();
  await page.locator('#report-table tbody tr').first().waitFor();
  assert.equal(await page.locator('#ops-auth').isHidden(), true);
  assert.equal(await stored(), operatorToken);
});

test('a token that no longer works is forgotten and asked for again', async () => {
  // As the page would hold an expired or revoked one: the service answers 401 invalid_token.
  await page.evaluate((key) => sessionStorage.setItem(key, 'not-a-valid-token'), TOKEN_KEY);
  await page.reload();
  const alert = page.locator('#ops-auth-error');
  await alert.waitFor({ state: 'visible' });
  assert.match(await alert.innerText(), /token was refused/);
  assert.match(await alert.innerText(), /invalid_token, HTTP 401/);
  assert.equal(await page.locator('#top-card').isHidden(), true);
  assert.equal(await stored(), null);
  // An empty submit says what is missing and sends nothing.
  await submitToken('   ');
  await page.waitForFunction(() => /No token given/.test(document.getElementById('ops-auth-error').textContent));
  await submitToken(operatorToken);
  await page.locator('#top-card').waitFor({ state: 'visible' });
});

test('the page loaded nothing from elsewhere and logged no errors', () => {
  assert.deepEqual(app.foreignRequests, []);
  assert.deepEqual(app.problems, []);
});
