// classifier-api page: the classify form and the dashboard (top 10 and usage over time).
// Plain JS, no libraries. Every string from the service (URLs, labels, messages) goes into the page
// through textContent or setAttribute, never as HTML: image URLs in /report come from anyone.
'use strict';

(() => {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  // ?refresh=SECONDS overrides the dashboard's refresh period (at least 1 s).
  const REFRESH_MS = Math.max(1, Number(new URLSearchParams(location.search).get('refresh')) || 5) * 1000;

  const $ = (id) => document.getElementById(id);

  // ---- helpers ----------------------------------------------------------------------------

  /** GET or POST JSON. Resolves to {ok, status, body}; body is null when the answer is not JSON. */
  async function requestJson(path, options) {
    const response = await fetch(path, { cache: 'no-store', ...options });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      // Not JSON (a proxy's HTML error page, say): described by its status below.
    }
    return { ok: response.ok, status: response.status, body };
  }

  /** The service's error in words: its message, with code and status for the curious. */
  function describeFailure(status, body) {
    const error = body && body.error;
    if (error && typeof error.message === 'string') {
      return { message: error.message, detail: `${error.code || 'error'}, HTTP ${status}` };
    }
    return { message: `The service answered HTTP ${status} without an explanation.`, detail: '' };
  }

  function showError(node, lead, message, detail) {
    node.replaceChildren();
    const strong = document.createElement('strong');
    strong.textContent = lead;
    node.append(strong, ' ', message);
    if (detail) {
      const small = document.createElement('small');
      small.textContent = ` (${detail})`;
      node.append(small);
    }
    node.hidden = false;
  }

  function clearError(node) {
    node.hidden = true;
    node.replaceChildren();
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const clockTime = (date) =>
    date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  /** Charts are drawn at the size they are shown (1 unit = 1 CSS pixel), so text stays legible. */
  const drawnWidth = (node, fallback) => Math.round(node.getBoundingClientRect().width) || fallback;

  const hourMinute = (date) => date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const seconds = (x) => Number(x).toFixed(3);

  /** 1, 2 or 5 times a power of ten, at least `x` (axis tops). */
  function niceCeil(x) {
    if (!(x > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(x));
    for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
    return 10 * p;
  }

  /** A short name for a URL in the bar chart: host and last path segment, query kept. */
  function shortUrl(raw) {
    let text = raw;
    try {
      const u = new URL(raw);
      const segments = u.pathname.split('/').filter(Boolean);
      const last = segments.length ? segments[segments.length - 1] : '';
      const middle = segments.length > 1 ? '/…/' : '/';
      text = `${u.host}${middle}${last}${u.search}`;
    } catch (_) {
      // Not parseable: shown as it is.
    }
    return text.length > 46 ? `${text.slice(0, 45)}…` : text;
  }

  // ---- classify form ----------------------------------------------------------------------

  const form = $('classify-form');
  const input = $('image-url');
  const button = $('classify-button');
  const statusLine = $('classify-status');
  const classifyError = $('classify-error');
  const result = $('classify-result');

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const url = input.value.trim();
    clearError(classifyError);
    if (!url) {
      result.hidden = true;
      statusLine.textContent = '';
      showError(classifyError, 'Nothing to classify.', 'Enter the address of an image, starting with http:// or https://.');
      input.focus();
      return;
    }
    button.disabled = true;
    button.textContent = 'Classifying…';
    form.setAttribute('aria-busy', 'true');
    statusLine.textContent = 'Classifying…';
    try {
      const answer = await requestJson('/classify-image', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ image_url: url }),
      });
      if (answer.ok && answer.body && typeof answer.body.classification === 'string') {
        showResult(url, answer.body);
      } else {
        result.hidden = true;
        statusLine.textContent = '';
        const { message, detail } = describeFailure(answer.status, answer.body);
        showError(classifyError, 'Could not classify this image:', message, detail);
      }
    } catch (e) {
      result.hidden = true;
      statusLine.textContent = '';
      showError(classifyError, 'Could not reach the service:', String(e.message || e), '');
    } finally {
      button.disabled = false;
      button.textContent = 'Classify';
      form.removeAttribute('aria-busy');
      refreshDashboard();
    }
  });

  function showResult(url, body) {
    const confidence = Number(body.confidence);
    const percent = Number.isFinite(confidence) ? `${(confidence * 100).toFixed(1)} %` : body.confidence;
    const image = $('result-image');
    image.src = url;
    image.alt = `The image at the URL given, classified as ${body.classification}`;
    $('result-label').textContent = body.classification;
    $('result-confidence').textContent = percent;
    $('result-time').textContent = `${body.processing_time} s`;
    result.hidden = false;
    statusLine.textContent = `${body.classification}: ${percent} confidence, in ${body.processing_time} s.`;
  }

  // ---- top 10 -----------------------------------------------------------------------------

  async function refreshReport() {
    const errorNode = $('report-error');
    let answer;
    try {
      answer = await requestJson('/report');
    } catch (e) {
      showError(errorNode, 'Could not load the report:', String(e.message || e), '');
      return;
    }
    if (!answer.ok || !Array.isArray(answer.body)) {
      const { message, detail } = describeFailure(answer.status, answer.body);
      showError(errorNode, 'Could not load the report:', message, detail);
      return;
    }
    clearError(errorNode);
    renderTable(answer.body);
    renderBars(answer.body);
    lastReport = answer.body;
    $('report-empty').hidden = answer.body.length > 0;
    $('report-updated').textContent = `Updated ${clockTime(new Date())}`;
  }

  function renderTable(rows) {
    const tbody = document.querySelector('#report-table tbody');
    tbody.replaceChildren(
      ...rows.map((row, i) => {
        const tr = document.createElement('tr');
        const cells = [
          [String(i + 1), 'num'],
          [row.image_url, 'url'],
          [String(row.count), 'num'],
          [seconds(row.min_processing_time), 'num'],
          [seconds(row.avg_processing_time), 'num'],
          [seconds(row.max_processing_time), 'num'],
        ];
        for (const [text, cls] of cells) {
          const td = document.createElement('td');
          td.textContent = text;
          td.className = cls;
          tr.append(td);
        }
        return tr;
      }),
    );
  }

  function renderBars(rows) {
    const chart = $('report-chart');
    const width = Math.max(200, drawnWidth(chart, 480));
    const rowHeight = 36;
    const barMax = width - 40;
    const height = Math.max(rows.length, 1) * rowHeight + 8;
    chart.setAttribute('viewBox', `0 0 ${width} ${height}`);
    chart.replaceChildren();
    if (!rows.length) {
      chart.append(svg('text', { x: 0, y: 24, class: 'empty-note' }, 'No requests yet.'));
      return;
    }
    const top = Math.max(...rows.map((r) => r.count));
    rows.forEach((row, i) => {
      const y = i * rowHeight;
      const w = Math.max(2, (row.count / top) * barMax);
      const group = svg('g', { class: 'bar-row', 'data-url': row.image_url, 'data-count': row.count });
      group.append(
        svg('title', {}, `${row.image_url}: ${row.count} requests`),
        svg('text', { x: 0, y: y + 13, class: 'bar-label' }, `${i + 1}. ${shortUrl(row.image_url)}`),
        svg('rect', { x: 0, y: y + 17, width: barMax, height: 14, rx: 2, class: 'bar-bg' }),
        svg('rect', { x: 0, y: y + 17, width: w.toFixed(1), height: 14, rx: 2, class: 'bar' }),
        svg('text', { x: barMax + 6, y: y + 29, class: 'bar-value' }, String(row.count)),
      );
      chart.append(group);
    });
  }

  // ---- usage over time --------------------------------------------------------------------

  const minutesSelect = $('usage-minutes');
  minutesSelect.addEventListener('change', () => refreshUsage());
  $('usage-form').addEventListener('submit', (event) => event.preventDefault());

  async function refreshUsage() {
    const errorNode = $('usage-error');
    const minutes = Number(minutesSelect.value);
    let answer;
    try {
      answer = await requestJson(`/report/history?minutes=${minutes}`);
    } catch (e) {
      showError(errorNode, 'Could not load the usage history:', String(e.message || e), '');
      return;
    }
    if (!answer.ok || !answer.body || !Array.isArray(answer.body.points)) {
      const { message, detail } = describeFailure(answer.status, answer.body);
      showError(errorNode, 'Could not load the usage history:', message, detail);
      return;
    }
    clearError(errorNode);
    $('usage-source').textContent = `source: ${answer.body.source}`;
    renderUsage(answer.body.minutes, answer.body.points);
    lastUsage = answer.body;
    $('usage-updated').textContent = `Updated ${clockTime(new Date())}`;
  }

  /** Every minute of the window, oldest first; minutes the service left out had no traffic. */
  function fillMinutes(minutes, points) {
    const byMinute = new Map(points.map((p) => [Math.floor(Date.parse(p.minute) / 60000), p]));
    const lastPoint = points.length ? Math.max(...byMinute.keys()) : -Infinity;
    const end = Math.max(Math.floor(Date.now() / 60000), lastPoint);
    const series = [];
    for (let m = end - minutes + 1; m <= end; m += 1) {
      const p = byMinute.get(m);
      series.push({ minute: m, requests: p ? p.requests : 0, avg: p ? p.avg_processing_time : null });
    }
    return series;
  }

  function renderUsage(minutes, points) {
    const chart = $('usage-chart');
    const series = fillMinutes(minutes, points);
    const W = Math.max(260, drawnWidth(chart, 600));
    const H = W < 480 ? 190 : 230;
    const left = 40;
    const right = 52;
    const topPad = 14;
    const bottom = 26;
    const plotW = W - left - right;
    const plotH = H - topPad - bottom;
    chart.setAttribute('viewBox', `0 0 ${W} ${H}`);
    chart.replaceChildren();

    const total = series.reduce((s, p) => s + p.requests, 0);
    const peak = Math.max(0, ...series.map((p) => p.requests));
    const weighted = series.reduce((s, p) => s + (p.avg === null ? 0 : p.avg * p.requests), 0);
    const maxAvgMs = Math.max(0, ...series.filter((p) => p.avg !== null).map((p) => p.avg * 1000));
    const yTop = niceCeil(peak);
    const msTop = niceCeil(maxAvgMs);
    const bw = plotW / series.length;
    const xOf = (i) => left + i * bw;
    const yReq = (v) => topPad + plotH - (v / yTop) * plotH;
    const yMs = (v) => topPad + plotH - (v / msTop) * plotH;

    // Grid and axes.
    for (const f of [0, 0.5, 1]) {
      const y = topPad + plotH - f * plotH;
      chart.append(svg('line', { x1: left, x2: left + plotW, y1: y, y2: y, class: f === 0 ? 'axis' : 'grid' }));
      chart.append(svg('text', { x: left - 6, y: y + 4, 'text-anchor': 'end', class: 'tick' }, formatCount(f * yTop)));
      chart.append(svg('text', { x: left + plotW + 6, y: y + 4, class: 'tick time' }, `${formatCount(f * msTop)} ms`));
    }
    const labelAt = [0, Math.floor((series.length - 1) / 2), series.length - 1];
    labelAt.forEach((i, k) => {
      const anchor = ['start', 'middle', 'end'][k];
      const x = k === 1 ? xOf(i) + bw / 2 : k === 0 ? left : left + plotW;
      chart.append(
        svg('text', { x, y: H - 8, 'text-anchor': anchor, class: 'tick' }, hourMinute(new Date(series[i].minute * 60000))),
      );
    });

    // Requests: one bar per minute with traffic.
    const bars = svg('g', { class: 'usage-bars' });
    series.forEach((p, i) => {
      if (!p.requests) return;
      const y = yReq(p.requests);
      const bar = svg('rect', {
        x: xOf(i) + (bw > 3 ? 0.5 : 0),
        y,
        width: Math.max(bw > 3 ? bw - 1 : bw, 0.5),
        height: topPad + plotH - y,
        class: 'bar',
        'data-requests': p.requests,
      });
      bar.append(svg('title', {}, `${hourMinute(new Date(p.minute * 60000))}: ${p.requests} requests, avg ${(p.avg * 1000).toFixed(1)} ms`));
      bars.append(bar);
    });
    chart.append(bars);

    // Average processing time: a line through minutes with traffic, broken where there was none.
    let d = '';
    let previous = false;
    series.forEach((p, i) => {
      if (p.avg === null) {
        previous = false;
        return;
      }
      const x = xOf(i) + bw / 2;
      d += `${previous ? 'L' : 'M'}${x.toFixed(1)},${yMs(p.avg * 1000).toFixed(1)}`;
      previous = true;
      if (series.length <= 120) chart.append(svg('circle', { cx: x.toFixed(1), cy: yMs(p.avg * 1000).toFixed(1), r: 4, class: 'time-dot' }));
    });
    if (d) chart.append(svg('path', { d, class: 'time-line' }));

    if (!total) {
      chart.append(svg('text', { x: left + plotW / 2, y: topPad + plotH / 2, 'text-anchor': 'middle', class: 'empty-note' }, 'No requests in this window yet.'));
    }

    const windowName = minutesSelect.selectedOptions[0] ? minutesSelect.selectedOptions[0].textContent : `last ${minutes} minutes`;
    const summary = total
      ? `${total} ${total === 1 ? 'request' : 'requests'} in the ${windowName}, at most ${peak} in one minute; average processing time ${((weighted / total) * 1000).toFixed(1)} ms.`
      : `No requests in the ${windowName}.`;
    $('usage-summary').textContent = summary;
    chart.dataset.totalRequests = String(total);
  }

  function formatCount(v) {
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  // ---- redraw on resize (phone turned, window resized) --------------------------------------

  let lastReport = null;
  let lastUsage = null;
  let resizeTimer = 0;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (lastReport) renderBars(lastReport);
      if (lastUsage) renderUsage(lastUsage.minutes, lastUsage.points);
    }, 150);
  });

  // ---- refresh loop -----------------------------------------------------------------------

  // One refresh at a time; a request for another while one runs (a classification just
  // finished, say) runs once more after it, so the newest figures are never skipped.
  let running = null;
  let again = false;
  function refreshDashboard() {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        await Promise.all([refreshReport(), refreshUsage()]);
      } while (again);
    })().finally(() => {
      running = null;
    });
    return running;
  }

  setInterval(() => {
    if (!document.hidden) refreshDashboard();
  }, REFRESH_MS);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) refreshDashboard();
  });
  refreshDashboard();
})();
