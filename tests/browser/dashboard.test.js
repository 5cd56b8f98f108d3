// The page at GET /, in real Chromium: the URL form filled as a person would, the dashboard
// following traffic, phone width, and the screenshot the readme shows. Servers and browser come
// from harness.js (the real binary and a fixture image server on loopback).
//
// Environment: SCREENSHOT (where the PNG goes; default target/browser-test/dashboard.png), and
// those of harness.js.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { assertNoSidewaysScroll, launch, images, root } from './harness.js';

const screenshotPath = process.env.SCREENSHOT || path.join(root, 'target/browser-test/dashboard.png');
// Not committed: for a person to look at after a run.
const phoneShotPath = path.join(root, 'target/browser-test/phone.png');

let app;
let page;
let img; // http://127.0.0.1:PORT of the image server
const classifyDirectly = (url) => app.classifyDirectly(url);
const getJson = (p) => app.getJson(p);
const text = (selector) => page.locator(selector).innerText();

before(async () => {
  app = await launch();
  ({ page, img } = app);
});

after(async () => {
  if (app) await app.close();
});

test('the page loads from the binary with its form and an empty dashboard', async () => {
  assert.equal(await page.title(), 'classifier-api');
  await page.getByRole('heading', { name: 'Classify an image' }).waitFor();
  await page.getByLabel('Image URL', { exact: true }).waitFor();
  await page.locator('#report-empty').waitFor({ state: 'visible' });
  await page.waitForFunction(() => /No requests in the last hour/.test(document.getElementById('usage-summary').textContent));
  assert.match(await text('#usage-source'), /source: memory/);
  // Keyboard: the first two Tab stops are the URL field and its button.
  await page.locator('body').click({ position: { x: 5, y: 5 } });
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'image-url');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'classify-button');
});

test('a pasted URL shows the image, label, confidence and processing time', async () => {
  const input = page.getByLabel('Image URL', { exact: true });
  await input.fill(`${img}/cat.bmp`);
  await input.press('Enter');
  await page.locator('#result-label').filter({ hasText: 'Egyptian_cat' }).waitFor({ timeout: 30000 });
  assert.match(await text('#result-confidence'), /^\d{1,3}\.\d %$/);
  assert.match(await text('#result-time'), /^\d+\.\d{3} s$/);
  assert.match(await page.locator('#classify-status').textContent(), /Egyptian_cat: .* confidence/);
  assert.equal(await page.locator('#classify-error').isHidden(), true);
  await page.waitForFunction(() => document.getElementById('result-image').naturalWidth > 0);
  assert.match(await page.locator('#result-image').getAttribute('alt'), /classified as Egyptian_cat/);
  // The form asks for the top 5: one bar each, the first the label itself.
  const bars = await page.locator('#result-predictions li').evaluateAll((items) => items.map((li) => li.dataset.label));
  assert.equal(bars.length, 5);
  assert.equal(bars[0], 'Egyptian_cat');
});

test('a bad URL shows the service error message in words', async () => {
  const input = page.getByLabel('Image URL', { exact: true });
  const alert = page.locator('#classify-error');

  // An image that is not there: the service's 502 upstream_error, message and all.
  const missing = `${img}/no-such-image.bmp`;
  const direct = await classifyDirectly(missing);
  assert.equal(direct.status, 502);
  await input.fill(missing);
  await page.getByRole('button', { name: 'Classify' }).click();
  await alert.waitFor({ state: 'visible' });
  const shown = await alert.innerText();
  assert.ok(shown.includes(direct.body.error.message), `${shown} vs ${direct.body.error.message}`);
  assert.match(shown, /Could not classify this image: .*404/);
  assert.match(shown, /upstream_error, HTTP 502/);
  assert.equal(await page.locator('#classify-result').isHidden(), true, 'no stale result next to an error');

  // Not a URL at all.
  await input.fill('not a url');
  await input.press('Enter');
  await page.waitForFunction(() => /not a valid absolute URL/.test(document.getElementById('classify-error').textContent));
  assert.match(await alert.innerText(), /invalid_url, HTTP 400/);

  // Nothing at all: said on the page, without a request.
  await input.fill('');
  await input.press('Enter');
  await page.waitForFunction(() => /Nothing to classify/.test(document.getElementById('classify-error').textContent));
  assert.equal(await page.evaluate(() => document.activeElement.id), 'image-url');
});

test('the dashboard table and charts follow traffic sent to the API', async () => {
  // One request so far (the form's cat); the table shows it once the refresh after it ran.
  await page.waitForFunction(() => document.querySelectorAll('#report-table tbody tr').length === 1);

  // Traffic from outside the page: only the periodic refresh can show it.
  const plan = { 'cat.bmp': 3, 'dragonfly.bmp': 4, 'owl.jpg': 2, 'bird.bmp': 2, 'sunflower.bmp': 1, 'parrot.jpg': 1 };
  for (const [name, times] of Object.entries(plan)) {
    for (let i = 0; i < times; i += 1) {
      const { status, body } = await classifyDirectly(`${img}/${name}`);
      assert.equal(status, 200, JSON.stringify(body));
    }
  }
  const total = 1 + Object.values(plan).reduce((a, b) => a + b, 0);
  const report = await getJson('/report');
  assert.equal(report.length, 6);
  assert.deepEqual(
    report.map((r) => [r.image_url.split('/').pop(), r.count]),
    [['cat.bmp', 4], ['dragonfly.bmp', 4], ['bird.bmp', 2], ['owl.jpg', 2], ['parrot.jpg', 1], ['sunflower.bmp', 1]],
  );

  // Table: the report's rows, in its order, with its counts and times.
  await page.waitForFunction((n) => document.querySelectorAll('#report-table tbody tr').length === n, report.length, { timeout: 15000 });
  const rows = await page.locator('#report-table tbody tr').evaluateAll((trs) =>
    trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)),
  );
  assert.deepEqual(
    rows,
    report.map((r, i) => [
      String(i + 1),
      r.image_url,
      String(r.count),
      r.min_processing_time.toFixed(3),
      r.avg_processing_time.toFixed(3),
      r.max_processing_time.toFixed(3),
    ]),
  );
  assert.equal(await page.locator('#report-empty').isHidden(), true);

  // Bar chart: one bar per row, lengths in proportion to the counts.
  const bars = await page.locator('#report-chart .bar-row').evaluateAll((groups) =>
    groups.map((g) => ({ url: g.dataset.url, width: Number(g.querySelector('.bar').getAttribute('width')) })),
  );
  assert.deepEqual(bars.map((b) => b.url), report.map((r) => r.image_url));
  for (const [i, r] of report.entries()) {
    const expected = (bars[0].width * r.count) / report[0].count;
    assert.ok(Math.abs(bars[i].width - expected) < 0.2, `${r.image_url}: ${bars[i].width} vs ${expected}`);
  }

  // Usage over time: every successful request, none of the failures.
  await page.waitForFunction((n) => document.getElementById('usage-chart').dataset.totalRequests === String(n), total, { timeout: 15000 });
  assert.match(await text('#usage-summary'), new RegExp(`^${total} requests in the last hour`));
  const history = await getJson('/report/history?minutes=60');
  assert.equal(history.points.reduce((s, p) => s + p.requests, 0), total);
  const drawn = await page.locator('#usage-chart .usage-bars rect').evaluateAll((rects) =>
    rects.reduce((s, r) => s + Number(r.dataset.requests), 0),
  );
  assert.equal(drawn, total);
  assert.equal(await page.locator('#usage-chart .time-line').count(), 1);
});

test('at phone width nothing scrolls sideways and the form still works', async () => {
  await page.setViewportSize({ width: 375, height: 740 });
  try {
    await assertNoSidewaysScroll(page, 'before classifying');
    for (const selector of ['#image-url', '#classify-button', '#drop-zone', '#usage-minutes']) {
      const box = await page.locator(selector).boundingBox();
      assert.ok(box && box.x >= 0 && box.x + box.width <= 375, `${selector} within the screen: ${JSON.stringify(box)}`);
    }
    const input = page.getByLabel('Image URL', { exact: true });
    await input.fill(`${img}/owl.jpg`);
    await input.press('Enter');
    await page.waitForFunction(() => /owl\.jpg$/.test(document.getElementById('result-image').src) && !document.getElementById('classify-result').hidden, null, { timeout: 30000 });
    const { body } = await classifyDirectly(`${img}/owl.jpg`);
    assert.equal(await text('#result-label'), body.classification);
    await assertNoSidewaysScroll(page, 'with a result and its top 5');
    mkdirSync(path.dirname(phoneShotPath), { recursive: true });
    await page.screenshot({ path: phoneShotPath, fullPage: true });
  } finally {
    await page.setViewportSize({ width: 1200, height: 900 });
  }
});

test('the page loaded nothing from elsewhere and logged no errors', async () => {
  assert.deepEqual(app.foreignRequests, []);
  assert.deepEqual(app.problems, []);
});

test('screenshot after some traffic', async () => {
  await page.selectOption('#usage-minutes', '15');
  await page.waitForFunction(() => /in the last 15 minutes/.test(document.getElementById('usage-summary').textContent));
  const input = page.getByLabel('Image URL', { exact: true });
  await input.fill(`${img}/cat.bmp`);
  await input.press('Enter');
  await page.locator('#result-label').filter({ hasText: 'Egyptian_cat' }).waitFor({ timeout: 30000 });
  await page.waitForFunction(() => document.getElementById('result-image').complete);
  // The refresh after the classification has shown it everywhere.
  await page.waitForFunction(() => document.querySelector('#report-chart .bar-row').dataset.count === '5');
  // Then a file of one's own: its preview, its top 5, and its row in the table.
  await page.locator('#image-file').setInputFiles(path.join(images, 'hot_dog.jpg'));
  await page.locator('#result-label').filter({ hasText: 'hotdog' }).waitFor({ timeout: 30000 });
  await page.waitForFunction(() => document.getElementById('result-image').complete && document.querySelector('#report-table td.upload'));
  mkdirSync(path.dirname(screenshotPath), { recursive: true });
  await page.screenshot({ path: screenshotPath, fullPage: true });
});
