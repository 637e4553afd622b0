// repliq built-in dashboard: polls this node's /api/v1 every second and
// derives rates from the cumulative counters. No framework, no CDN; the
// only library is the vendored Chart.js. URLs are relative, so the page
// also works behind a proxy that serves the daemon under a path prefix.
'use strict';

const POLL_MS = 1000;
const HISTORY = 120; // points kept per series (two minutes)
const PALETTE = ['#4f9cf7', '#a77bf3', '#3fb97a', '#e5a83b', '#e5534b', '#36c5d8', '#f27bb5', '#b5c93b'];

const state = {
  prev: null,        // previous /api/v1/queues answer
  selected: null,    // selected queue name
  series: new Map(), // queue name -> series
  charts: null,
};

// ---------------------------------------------------------------- helpers

function $(id) { return document.getElementById(id); }

// Builds an element; children are nodes or text (never parsed as HTML).
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, String(v));
    else if (k === 'onclick') e.addEventListener('click', v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function setText(id, text, value) {
  const e = $(id);
  if (!e) return;
  e.textContent = text;
  if (value !== undefined) e.dataset.value = String(value);
}

function fmtCount(n) {
  if (n === null || n === undefined || !isFinite(n)) return '–';
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(2) + ' G';
  if (a >= 1e6) return (n / 1e6).toFixed(2) + ' M';
  if (a >= 1e4) return (n / 1e3).toFixed(1) + ' k';
  if (Number.isInteger(n)) return String(n);
  return n.toFixed(1);
}

function fmtRate(r) {
  if (r === null || r === undefined || !isFinite(r)) return '–';
  return r < 10 ? r.toFixed(1) : fmtCount(Math.round(r));
}

function fmtBytes(b) {
  if (b === null || b === undefined || !isFinite(b)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = b;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return (i === 0 ? String(v) : v.toFixed(1)) + ' ' + units[i];
}

function fmtSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return '–';
  if (s === 0) return '0';
  if (s < 1e-6) return (s * 1e9).toFixed(0) + ' ns';
  if (s < 1e-3) return (s * 1e6).toFixed(s < 1e-5 ? 2 : 0) + ' µs';
  if (s < 1) return (s * 1e3).toFixed(1) + ' ms';
  return s.toFixed(1) + ' s';
}

function fmtUptime(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  if (d > 0) return `${d}d ${hh}h`;
  if (hh > 0) return `${hh}h ${mm}m`;
  if (mm > 0) return `${mm}m ${ss}s`;
  return `${ss}s`;
}

function clock(unix) {
  const d = new Date(unix * 1000);
  return d.toTimeString().slice(0, 8);
}

// The upper bound (seconds) below which fraction q of the samples lie, from
// non-cumulative [bound|null, count] buckets; null without samples.
function quantile(buckets, q) {
  const total = buckets.reduce((a, b) => a + b[1], 0);
  if (total === 0) return null;
  const want = Math.max(1, Math.ceil(total * q));
  let seen = 0;
  for (const [bound, n] of buckets) {
    seen += n;
    if (seen >= want) return bound;
  }
  return buckets[buckets.length - 1][0];
}

function dequeued(q) {
  return q.groups.reduce((a, g) => a + g.dequeued_messages, 0);
}

function healthClass(health) {
  if (health === 'ok') return 'ok';
  if (health === 'lagging' || health === 'not ready') return 'warn';
  return 'bad';
}

function linkClass(link) {
  if (link === 'connected' || link === 'self') return 'ok';
  if (link === 'partial') return 'warn';
  return 'bad';
}

// ---------------------------------------------------------------- series

function seriesOf(name) {
  let s = state.series.get(name);
  if (!s) {
    s = { labels: [], inRate: [], outRate: [], depth: [], capacity: 0, p50: [], p99: [], lag: new Map() };
    state.series.set(name, s);
  }
  return s;
}

function push(arr, v) {
  arr.push(v);
  while (arr.length > HISTORY) arr.shift();
}

// Rates and windowed latency of queue q against its previous reading.
function derive(q, prevQ, dt) {
  const d = { inRate: null, outRate: null, p50: null, p99: null };
  if (!prevQ || !(dt > 0)) return d;
  d.inRate = Math.max(0, (q.appended_messages - prevQ.appended_messages) / dt);
  d.outRate = Math.max(0, (dequeued(q) - dequeued(prevQ)) / dt);
  const cur = q.enqueue_latency.buckets;
  const old = prevQ.enqueue_latency.buckets;
  if (cur.length === old.length) {
    const delta = cur.map((b, i) => [b[0], Math.max(0, b[1] - old[i][1])]);
    d.p50 = quantile(delta, 0.5);
    d.p99 = quantile(delta, 0.99);
  }
  return d;
}

// ---------------------------------------------------------------- charts

function lineChart(id, datasets, opts) {
  opts = opts || {};
  const canvas = $(id);
  if (!canvas || typeof Chart === 'undefined') return null;
  return new Chart(canvas.getContext('2d'), {
    type: 'line',
    data: { labels: [], datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: 'index', intersect: false },
      elements: { point: { radius: 0 }, line: { tension: 0.25, borderWidth: 2 } },
      scales: {
        x: { ticks: { maxTicksLimit: 4, maxRotation: 0, autoSkipPadding: 16 }, grid: { display: false } },
        y: opts.log
          ? { type: 'logarithmic', ticks: { callback: (v) => (String(v)[0] === '1' ? fmtCount(v) : '') } }
          : { beginAtZero: true, ticks: { callback: (v) => fmtCount(v) } },
      },
      plugins: { legend: { display: opts.legend !== false, labels: { boxWidth: 10, boxHeight: 10 } } },
    },
  });
}

function dataset(label, color, extra) {
  return Object.assign({ label, data: [], borderColor: color, backgroundColor: color + '33', fill: false, spanGaps: true }, extra || {});
}

function initCharts() {
  if (typeof Chart === 'undefined') return null;
  Chart.defaults.color = '#8a93a3';
  Chart.defaults.borderColor = '#2a303c';
  Chart.defaults.font.family = 'system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Roboto, sans-serif';
  return {
    rate: lineChart('chart-rate', [dataset('in', PALETTE[0], { fill: true }), dataset('out', PALETTE[2])]),
    depth: lineChart('chart-depth', [dataset('depth', PALETTE[3], { fill: true })], { legend: false }),
    lag: lineChart('chart-lag', []),
    latency: lineChart('chart-latency', [dataset('p50', PALETTE[2]), dataset('p99', PALETTE[4])], { log: true }),
  };
}

function drawCharts() {
  const c = state.charts;
  const s = state.selected && state.series.get(state.selected);
  if (!c || !s) return;
  const set = (chart, data) => {
    if (!chart) return;
    chart.data.labels = s.labels.slice();
    data.forEach((d, i) => { if (chart.data.datasets[i]) chart.data.datasets[i].data = d.slice(); });
    chart.update('none');
  };
  set(c.rate, [s.inRate, s.outRate]);
  set(c.depth, [s.depth]);
  set(c.latency, [s.p50.map((v) => (v === null ? null : v * 1e6)), s.p99.map((v) => (v === null ? null : v * 1e6))]);
  if (c.lag) {
    const peers = [...s.lag.keys()].sort();
    c.lag.data.datasets = peers.map((p, i) => dataset(p, PALETTE[(i + 1) % PALETTE.length], { data: s.lag.get(p).slice() }));
    c.lag.data.labels = s.labels.slice();
    c.lag.update('none');
  }
}

// ---------------------------------------------------------------- render

function renderNode(node) {
  setText('me-name', node.name);
  const role = $('me-role');
  role.textContent = node.role;
  role.className = 'badge ' + node.role;
  role.dataset.role = node.role;
  setText('me-mode', node.mode);
  setText('me-epoch', String(node.epoch), node.epoch);
  setText('me-uptime', fmtUptime(node.uptime_seconds));
  setText('me-version', node.version + (node.commit ? ' (' + node.commit.slice(0, 8) + ')' : ''));
  const d = node.disk;
  if (d) {
    const used = d.total_bytes - d.free_bytes;
    const frac = d.total_bytes > 0 ? used / d.total_bytes : 0;
    setText('disk-path', d.path);
    const fill = $('disk-fill');
    fill.style.width = (frac * 100).toFixed(1) + '%';
    fill.className = 'fill' + (frac > 0.9 ? ' bad' : frac > 0.75 ? ' warn' : '');
    setText('disk-text', `${fmtBytes(d.free_bytes)} free of ${fmtBytes(d.total_bytes)} (${(frac * 100).toFixed(1)}% used)`, d.free_bytes);
  }
}

function renderDiskQueues(data) {
  const bytes = data.queues.reduce((a, q) => a + q.disk_bytes, 0);
  const segs = data.queues.reduce((a, q) => a + q.segments, 0);
  setText('disk-queues', `queues: ${fmtBytes(bytes)} in ${segs} segment${segs === 1 ? '' : 's'} (${data.queues.length} queue${data.queues.length === 1 ? '' : 's'})`, bytes);
}

function renderCluster(cluster) {
  const box = $('nodes');
  box.replaceChildren(...cluster.nodes.map((n) => {
    const rows = h('div', { class: 'rows' },
      h('span', { class: 'k' }, 'role'), h('span', { class: 'v' }, n.role),
      h('span', { class: 'k' }, 'epoch'), h('span', { class: 'v' }, n.epoch === null ? '–' : n.epoch),
      h('span', { class: 'k' }, 'health'),
      h('span', { class: 'v link-state' }, h('span', { class: 'dot ' + healthClass(n.health) }), n.health),
      h('span', { class: 'k' }, 'link'),
      h('span', { class: 'v link-state' }, h('span', { class: 'dot ' + linkClass(n.link) }), n.link),
      h('span', { class: 'k' }, 'address'), h('span', { class: 'v' }, n.address || '–'),
      n.self ? null : h('span', { class: 'k' }, 'lag'),
      n.self ? null : h('span', { class: 'v' }, `${fmtBytes(n.lag_bytes)} · ${fmtSeconds(n.lag_seconds)}`));
    return h('div', {
      class: 'node ' + n.role,
      'data-name': n.name,
      'data-role': n.role,
      'data-health': n.health,
      'data-link': n.link,
    },
    h('div', { class: 'name' }, n.name, h('span', { class: 'badge ' + n.role }, n.role), n.self ? h('span', { class: 'self' }, '(this node)') : null),
    rows);
  }));
}

// Cluster mode only: the Raft catalog as this node has applied it.
function renderCatalog(catalog) {
  const box = $('catalog');
  box.hidden = !catalog;
  if (!catalog) return;
  setText('catalog-head',
    `leader ${catalog.leader || '–'} · term ${catalog.term} · applied index ${catalog.commit_index ?? '–'}` +
    ` · voters ${catalog.voters.join(', ') || '–'} · failover ${catalog.failover_timeout_ms} ms`);
  $('catalog-rows').replaceChildren(...catalog.queues.map((q) => h('tr', {
    'data-queue': q.name,
    'data-leader': q.leader || '',
    'data-epoch': q.epoch,
  },
  h('td', { class: 'name' }, q.name),
  h('td', null, q.leader || '– (none)'),
  h('td', { class: 'num' }, q.epoch),
  h('td', null, q.replicas.map((r) =>
    `${r.node}${r.node === q.leader ? '*' : ''} ${r.tail === null ? '–' : fmtCount(r.tail)}` +
    ` · ${r.lag_bytes === null ? '–' : fmtBytes(r.lag_bytes)}`).join('   ')),
  h('td', { class: 'num' }, q.min_insync))));
}

function renderQueues(data, derived) {
  const body = $('queue-rows');
  if (data.queues.length === 0) {
    body.replaceChildren(h('tr', {}, h('td', { class: 'empty', colspan: 8 }, 'No queues yet.')));
    return;
  }
  body.replaceChildren(...data.queues.map((q) => {
    const d = derived.get(q.name);
    const frac = q.capacity > 0 ? q.depth / q.capacity : 0;
    const maxLag = q.links.reduce((a, l) => Math.max(a, l.lag_messages), 0);
    const fill = h('div', { class: 'fill' + (frac > 0.9 ? ' bad' : frac > 0.75 ? ' warn' : '') });
    fill.style.width = Math.min(100, frac * 100).toFixed(2) + '%';
    return h('tr', {
      class: 'queue' + (q.name === state.selected ? ' selected' : ''),
      'data-queue': q.name,
      onclick: () => { state.selected = q.name; renderSelected(data, derived); renderQueues(data, derived); drawCharts(); },
    },
    h('td', { class: 'name' }, q.name),
    h('td', { class: 'num', 'data-field': 'in-rate', 'data-value': d.inRate }, fmtRate(d.inRate)),
    h('td', { class: 'num', 'data-field': 'out-rate', 'data-value': d.outRate }, fmtRate(d.outRate)),
    h('td', {}, h('div', { class: 'depth-cell' }, h('div', { class: 'bar' }, fill),
      h('span', { class: 't', 'data-field': 'depth', 'data-value': q.depth }, `${fmtCount(q.depth)} / ${fmtCount(q.capacity)}`))),
    h('td', { class: 'num' }, fmtSeconds(q.enqueue_latency.p99_seconds)),
    h('td', { class: 'num' }, q.links.length ? fmtCount(maxLag) : '–'),
    h('td', { class: 'num' }, fmtBytes(q.disk_bytes)),
    h('td', { class: 'num' }, q.segments));
  }));
}

function renderSelected(data, derived) {
  const q = data.queues.find((x) => x.name === state.selected);
  if (!q) return;
  const d = derived.get(q.name);
  setText('sel-name', q.name);
  setText('kpi-in', fmtRate(d.inRate), d.inRate);
  setText('kpi-out', fmtRate(d.outRate), d.outRate);
  setText('kpi-depth', fmtCount(q.depth), q.depth);
  setText('kpi-depth-u', `of ${fmtCount(q.capacity)} (${q.capacity > 0 ? ((q.depth / q.capacity) * 100).toFixed(1) : 0}%)`);
  setText('kpi-appended', fmtCount(q.appended_messages), q.appended_messages);
  setText('kpi-lat', `${fmtSeconds(q.enqueue_latency.p50_seconds)} / ${fmtSeconds(q.enqueue_latency.p99_seconds)}`);
  setText('kpi-full', fmtCount(q.full_rejections), q.full_rejections);
  const body = $('link-rows');
  if (q.links.length === 0) {
    body.replaceChildren(h('tr', {}, h('td', { class: 'empty', colspan: 8 }, 'No replication links.')));
    return;
  }
  body.replaceChildren(...q.links.map((l) => h('tr', { 'data-peer': l.peer, 'data-connected': l.connected },
    h('td', { class: 'name' }, l.peer),
    h('td', {}, h('span', { class: 'badge ' + l.peer_role }, l.peer_role)),
    h('td', {}, h('span', { class: 'link-state' }, h('span', { class: 'dot ' + (l.connected ? 'ok' : 'bad') }), l.connected ? 'connected' : 'disconnected')),
    h('td', { class: 'num' }, l.acked_position),
    h('td', { class: 'num' }, fmtCount(l.lag_messages)),
    h('td', { class: 'num' }, fmtBytes(l.lag_bytes)),
    h('td', { class: 'num' }, fmtSeconds(l.lag_seconds)),
    h('td', { class: 'num' }, l.reconnects))));
}

// ---------------------------------------------------------------- loop

async function getJSON(path) {
  const r = await fetch(path, { cache: 'no-store' });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function live(ok, text) {
  $('live-dot').className = 'dot ' + (ok ? 'ok' : 'bad');
  setText('live-text', text);
  document.body.dataset.live = ok ? 'yes' : 'no';
}

async function tick() {
  try {
    const [node, cluster, data] = await Promise.all([
      getJSON('api/v1/node'), getJSON('api/v1/cluster'), getJSON('api/v1/queues'),
    ]);
    const prev = state.prev;
    const dt = prev ? data.time_unix - prev.time_unix : 0;
    const derived = new Map();
    for (const q of data.queues) {
      const prevQ = prev && prev.queues.find((x) => x.name === q.name);
      const d = derive(q, prevQ, dt);
      derived.set(q.name, d);
      const s = seriesOf(q.name);
      if (prevQ) {
        push(s.labels, clock(data.time_unix));
        push(s.inRate, d.inRate);
        push(s.outRate, d.outRate);
        push(s.depth, q.depth);
        push(s.p50, d.p50);
        push(s.p99, d.p99);
        for (const l of q.links) {
          if (!s.lag.has(l.peer)) s.lag.set(l.peer, new Array(Math.max(0, s.labels.length - 1)).fill(null));
        }
        for (const [peer, arr] of s.lag) {
          const l = q.links.find((x) => x.peer === peer);
          push(arr, l ? l.lag_messages : null);
        }
      }
    }
    if (!state.selected || !data.queues.some((q) => q.name === state.selected)) {
      state.selected = data.queues.length ? data.queues[0].name : null;
    }
    state.prev = data;
    renderNode(node);
    renderCluster(cluster);
    renderCatalog(cluster.catalog);
    renderQueues(data, derived);
    renderSelected(data, derived);
    renderDiskQueues(data);
    drawCharts();
    live(true, 'live · ' + clock(data.time_unix));
  } catch (e) {
    live(false, 'disconnected: ' + e.message);
  }
}

async function loop() {
  const started = Date.now();
  await tick();
  setTimeout(loop, Math.max(100, POLL_MS - (Date.now() - started)));
}

state.charts = initCharts();
loop();
