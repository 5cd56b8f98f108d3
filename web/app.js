// classifier-api page: classify a URL or a file (picker, drop, paste), and the dashboard (top 10
// and usage over time), behind an operator token when the service asks for one.
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

  /**
   * How a /report row names its image: the URL, or for an upload (image_url null) the start of
   * its SHA-256, with the whole hash for a tooltip.
   */
  function imageName(row) {
    if (typeof row.image_url === 'string') return { text: row.image_url, full: row.image_url, upload: false };
    const hash = typeof row.upload_sha256 === 'string' ? row.upload_sha256 : '';
    return { text: `upload ${hash.slice(0, 8)}…`, full: `upload, SHA-256 ${hash}`, upload: true };
  }

  // ---- classify: a URL, or a file (picker, drop, paste) ---------------------------------

  // What the service reads; any other image type is sent as bytes for its sniffer to judge.
  const SENT_AS_IS = new Set(['image/jpeg', 'image/png', 'image/gif', 'image/webp', 'image/bmp']);
  // The service's default --max-image-bytes: a bigger file is refused before it is sent.
  const MAX_UPLOAD_BYTES = 20 * 1024 * 1024;
  const TOP_K = 5;

  const form = $('classify-form');
  const input = $('image-url');
  const button = $('classify-button');
  const fileInput = $('image-file');
  const dropZone = $('drop-zone');
  const statusLine = $('classify-status');
  const classifyError = $('classify-error');
  const result = $('classify-result');
  const image = $('result-image');

  // Only the newest request may show its answer: a file chosen while a URL is being classified wins.
  let latest = 0;
  // The object URL of the previewed file, released when another image replaces it.
  let previewUrl = null;

  function showImage(src, alt) {
    if (previewUrl && previewUrl !== src) URL.revokeObjectURL(previewUrl);
    previewUrl = src.startsWith('blob:') ? src : null;
    image.src = src;
    image.alt = alt;
  }

  function fail(lead, message, detail) {
    result.hidden = true;
    statusLine.textContent = '';
    showError(classifyError, lead, message, detail);
  }

  /** A request still running no longer shows its answer: what the user did since replaces it. */
  function forgetPending() {
    latest += 1;
    setBusy(false);
  }

  function setBusy(busy) {
    button.disabled = busy;
    button.textContent = busy ? 'Classifying…' : 'Classify';
    for (const node of [form, dropZone]) {
      if (busy) node.setAttribute('aria-busy', 'true');
      else node.removeAttribute('aria-busy');
    }
  }

  /**
   * POSTs one classification to `path` and shows its answer. `what` names the image in sentences
   * ("the image at the URL given", "the file cat.jpg"); `src` is what the result shows as the image.
   */
  async function classify(path, request, src, what) {
    const mine = ++latest;
    clearError(classifyError);
    setBusy(true);
    statusLine.textContent = `Classifying ${what}…`;
    try {
      const answer = await requestJson(path, { method: 'POST', ...request });
      if (mine !== latest) return;
      if (answer.ok && answer.body && typeof answer.body.classification === 'string') {
        showResult(answer.body, src, what);
      } else {
        const { message, detail } = describeFailure(answer.status, answer.body);
        fail('Could not classify this image:', message, detail);
      }
    } catch (e) {
      if (mine === latest) fail('Could not reach the service:', String(e.message || e), '');
    } finally {
      if (mine === latest) setBusy(false);
      refreshDashboard();
    }
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const url = input.value.trim();
    clearError(classifyError);
    if (!url) {
      forgetPending();
      fail('Nothing to classify.', 'Enter the address of an image, starting with http:// or https://.', '');
      input.focus();
      return;
    }
    classify(
      '/classify-image',
      {
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ image_url: url, top_k: TOP_K }),
      },
      url,
      'the image at the URL given',
    );
  });

  /** Why `file` is not sent, or null when it is. */
  function refusal(file) {
    if (file.type && !file.type.startsWith('image/')) {
      return `${file.name || 'This file'} is not an image (${file.type}). Choose a JPEG, PNG, GIF, BMP or WebP file.`;
    }
    if (file.size > MAX_UPLOAD_BYTES) {
      return `${file.name || 'This file'} is larger than 20 MiB, the most the service takes.`;
    }
    if (file.size === 0) return `${file.name || 'This file'} is empty.`;
    return null;
  }

  /** The raw-body upload: the file's bytes, its type when the service reads it by name. */
  function classifyFile(file) {
    const why = refusal(file);
    if (why) {
      forgetPending();
      fail('Not sent:', why, '');
      return;
    }
    const what = file.name ? `the file ${file.name}` : 'the pasted image';
    // The preview shows at once; the label and the rest follow the answer.
    const src = URL.createObjectURL(file);
    showImage(src, `Preview of ${what}`);
    for (const id of ['result-label', 'result-confidence', 'result-time']) $(id).textContent = '…';
    $('result-top').hidden = true;
    result.hidden = false;
    // A raw body has no JSON for top_k to go in: it rides in the query.
    classify(
      `/classify-image?top_k=${TOP_K}`,
      {
        headers: { 'Content-Type': SENT_AS_IS.has(file.type) ? file.type : 'application/octet-stream' },
        body: file,
      },
      src,
      what,
    );
  }

  fileInput.addEventListener('change', () => {
    const [file] = fileInput.files;
    if (file) classifyFile(file);
    // The same file chosen again is a new request, so the input must not keep it.
    fileInput.value = '';
  });

  dropZone.addEventListener('click', () => fileInput.click());
  dropZone.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' && event.key !== ' ') return;
    event.preventDefault();
    fileInput.click();
  });

  const carriesFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes('Files');
  for (const name of ['dragenter', 'dragover']) {
    dropZone.addEventListener(name, (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = 'copy';
      dropZone.classList.add('dragging');
    });
  }
  for (const name of ['dragleave', 'dragend']) dropZone.addEventListener(name, () => dropZone.classList.remove('dragging'));
  dropZone.addEventListener('drop', (event) => {
    event.preventDefault();
    dropZone.classList.remove('dragging');
    const [file] = event.dataTransfer.files;
    if (file) classifyFile(file);
  });
  // A file dropped just beside the zone would otherwise replace the page with the file.
  for (const name of ['dragover', 'drop']) {
    document.addEventListener(name, (event) => {
      if (carriesFiles(event) && !dropZone.contains(event.target)) {
        event.preventDefault();
        if (event.dataTransfer) event.dataTransfer.dropEffect = 'none';
      }
    });
  }

  // A file on the clipboard (a screenshot, an image copied from another program) is classified
  // wherever it is pasted; text pasted into a text field stays the browser's business.
  document.addEventListener('paste', (event) => {
    const data = event.clipboardData;
    if (!data) return;
    const target = event.target;
    const inField =
      target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || Boolean(target && target.isContentEditable);
    if (inField && data.types.includes('text/plain')) return;
    const [file] = data.files;
    if (!file) return;
    event.preventDefault();
    classifyFile(file);
  });

  function showResult(body, src, what) {
    const percent = asPercent(body.confidence);
    showImage(src, `${what[0].toUpperCase()}${what.slice(1)}, classified as ${body.classification}`);
    $('result-label').textContent = body.classification;
    $('result-confidence').textContent = percent;
    $('result-time').textContent = `${body.processing_time} s`;
    renderPredictions(Array.isArray(body.predictions) ? body.predictions : []);
    result.hidden = false;
    statusLine.textContent = `${body.classification}: ${percent} confidence, in ${body.processing_time} s.`;
  }

  function asPercent(confidence) {
    const x = Number(confidence);
    return Number.isFinite(x) ? `${(x * 100).toFixed(1)} %` : String(confidence);
  }

  /** The top-k as a list of horizontal bars, each as long as its confidence. */
  function renderPredictions(predictions) {
    const list = $('result-predictions');
    list.replaceChildren(
      ...predictions.map((p) => {
        const confidence = Math.min(1, Math.max(0, Number(p.confidence) || 0));
        const item = document.createElement('li');
        item.dataset.label = p.classification;
        item.dataset.confidence = String(p.confidence);
        const name = document.createElement('span');
        name.className = 'pred-label';
        name.textContent = p.classification;
        const value = document.createElement('span');
        value.className = 'pred-value';
        value.textContent = asPercent(p.confidence);
        const track = document.createElement('span');
        track.className = 'pred-track';
        track.setAttribute('aria-hidden', 'true');
        const fill = document.createElement('span');
        fill.className = 'pred-fill';
        // A CSSOM property, not a style attribute: the CSP allows only our stylesheet's rules.
        fill.style.width = `${(confidence * 100).toFixed(2)}%`;
        track.append(fill);
        item.append(name, value, track);
        return item;
      }),
    );
    $('result-top-title').textContent = `Top ${predictions.length}`;
    $('result-top').hidden = predictions.length === 0;
  }

  // ---- operator token (--ops-auth token) -----------------------------------------------------

  // With `--ops-auth token` the dashboard's endpoints answer 401 without a token of a user with
  // the ops role (403 with another user's). The page then asks for one instead of showing the
  // dashboard, keeps it for this tab (sessionStorage: gone when the tab closes, never sent to
  // another origin) and sends it as `Authorization: Bearer`. Classifying needs no token.
  const TOKEN_KEY = 'classifier-api.ops-token';
  const authCard = $('ops-auth');
  const authForm = $('ops-auth-form');
  const tokenInput = $('ops-token');
  const authError = $('ops-auth-error');
  const dashboardCards = [$('usage-card'), $('top-card')];
  // True while the page waits for a token: the dashboard is not asked again until one is given.
  let waitingForToken = false;

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {
      return null; // storage disabled: the token lives only as long as this page
    }
  }

  let tokenInMemory = null;
  function currentToken() {
    return storedToken() || tokenInMemory;
  }

  function keepToken(token) {
    tokenInMemory = token;
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      // Kept in memory only.
    }
  }

  /** GET an operator endpoint with the token, if there is one; `sent` says which token went. */
  async function requestOps(path) {
    const sent = currentToken();
    const answer = await requestJson(path, sent ? { headers: { Authorization: `Bearer ${sent}` } } : {});
    return { ...answer, sent };
  }

  /**
   * The dashboard's endpoints refused the token `sent` (401: none, or not valid; 403: a user
   * without the ops role): forget it, say why, and ask for another in place of the dashboard.
   * An answer to a token the user has replaced since changes nothing.
   */
  function askForToken(answer) {
    if (answer.sent !== currentToken()) return;
    keepToken(null);
    waitingForToken = true;
    if (answer.sent) {
      const { detail } = describeFailure(answer.status, answer.body);
      const message =
        answer.status === 403
          ? 'This token is valid, but its user does not have the ops role. Use the token of an operator.'
          : 'The token was refused: it has expired, was revoked, or is not a token of this service.';
      showError(authError, 'Not shown:', message, detail);
    }
    for (const card of dashboardCards) card.hidden = true;
    authCard.hidden = false;
  }

  /** The dashboard answered: the token (or none, when the service needs none) is good. */
  function tokenAccepted() {
    if (!authCard.hidden) {
      authCard.hidden = true;
      clearError(authError);
    }
    for (const card of dashboardCards) card.hidden = false;
  }

  const refusedToken = (status) => status === 401 || status === 403;

  authForm.addEventListener('submit', (event) => {
    event.preventDefault();
    // A pasted `Bearer <token>` (as curl examples show it) is taken for the token.
    const token = tokenInput.value.trim().replace(/^bearer\s+/i, '');
    if (!token) {
      showError(authError, 'No token given.', 'Paste the token of a user with the ops role.', '');
      tokenInput.focus();
      return;
    }
    clearError(authError);
    keepToken(token);
    tokenInput.value = '';
    waitingForToken = false;
    refreshDashboard();
  });

  // ---- top 10 -----------------------------------------------------------------------------

  async function refreshReport() {
    const errorNode = $('report-error');
    let answer;
    try {
      answer = await requestOps('/report');
    } catch (e) {
      showError(errorNode, 'Could not load the report:', String(e.message || e), '');
      return;
    }
    if (refusedToken(answer.status)) {
      askForToken(answer);
      return;
    }
    if (!answer.ok || !Array.isArray(answer.body)) {
      const { message, detail } = describeFailure(answer.status, answer.body);
      showError(errorNode, 'Could not load the report:', message, detail);
      return;
    }
    clearError(errorNode);
    tokenAccepted();
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
        const name = imageName(row);
        const cells = [
          [String(i + 1), 'num'],
          [name.text, name.upload ? 'url upload' : 'url', name.full],
          [String(row.count), 'num'],
          [seconds(row.min_processing_time), 'num'],
          [seconds(row.avg_processing_time), 'num'],
          [seconds(row.max_processing_time), 'num'],
        ];
        for (const [text, cls, title] of cells) {
          const td = document.createElement('td');
          td.textContent = text;
          td.className = cls;
          if (title && title !== text) td.title = title;
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
      const name = imageName(row);
      const key = name.upload ? { 'data-sha256': row.upload_sha256 } : { 'data-url': row.image_url };
      const group = svg('g', { class: 'bar-row', ...key, 'data-count': row.count });
      group.append(
        svg('title', {}, `${name.full}: ${row.count} requests`),
        svg('text', { x: 0, y: y + 13, class: 'bar-label' }, `${i + 1}. ${name.upload ? name.text : shortUrl(row.image_url)}`),
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
      answer = await requestOps(`/report/history?minutes=${minutes}`);
    } catch (e) {
      showError(errorNode, 'Could not load the usage history:', String(e.message || e), '');
      return;
    }
    if (refusedToken(answer.status)) {
      askForToken(answer);
      return;
    }
    if (!answer.ok || !answer.body || !Array.isArray(answer.body.points)) {
      const { message, detail } = describeFailure(answer.status, answer.body);
      showError(errorNode, 'Could not load the usage history:', message, detail);
      return;
    }
    clearError(errorNode);
    tokenAccepted();
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
    // Without a token the answers are known already; the form's submit asks again.
    if (waitingForToken) return Promise.resolve();
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
