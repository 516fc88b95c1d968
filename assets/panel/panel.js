// Citrus web panel: calls the admin JSON API with the page's session (and its CSRF token) and
// follows the live stream (GET /admin/live, Server-Sent Events). Every value from the engine or
// an agent is put into the page with textContent, never as HTML.
(() => {
  'use strict';

  const csrfMeta = document.querySelector('meta[name="citrus-csrf"]');
  const csrf = csrfMeta ? csrfMeta.content : '';
  const page = document.body.dataset.page;

  // ---- helpers ------------------------------------------------------------------------------

  /** A JSON call to the admin API; throws an Error with the engine's message. */
  async function api(method, path, body) {
    const headers = { 'x-csrf-token': csrf, accept: 'application/json' };
    const options = { method, headers, credentials: 'same-origin' };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    let data = null;
    try { data = await response.json(); } catch (_) { /* no body */ }
    if (!response.ok) {
      const message = data && data.error && data.error.message;
      throw new Error(message || `${method} ${path}: HTTP ${response.status}`);
    }
    return data;
  }

  /** An element: `props` may hold class, text, href, title, type, and data-* as `data`. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = String(value);
      else if (key === 'data') Object.assign(node.dataset, value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  /** The tone of a status word (as layout::tone on the server). */
  function tone(status) {
    switch (status) {
      case 'online': case 'active': case 'completed': return 'ok';
      case 'failed': case 'errored': case 'offline': return 'bad';
      case 'creating': case 'provisioning': case 'initializing': case 'sent': case 'starting':
      case 'stopping': case 'backoff': return 'busy';
      default: return 'idle';
    }
  }

  function badge(status) {
    return el('span', { class: `badge ${tone(status)}`, data: { status }, text: status });
  }

  const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  function fmtBytes(n) {
    if (n === null || n === undefined) return '—';
    let value = Number(n);
    let unit = 0;
    while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) { value /= 1024; unit += 1; }
    return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
  }

  function fmtSpan(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function fmtAgo(ms) {
    const d = Date.now() - ms;
    return d < 5000 ? 'just now' : `${fmtSpan(d)} ago`;
  }

  function absolute(ms) {
    return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  }

  /** A <time> that the clock below keeps relative. */
  function timeEl(ms) {
    if (ms === null || ms === undefined) return el('span', { class: 'muted', text: '—' });
    const node = el('time', { datetime: new Date(ms).toISOString(), data: { ms: String(ms) } });
    node.textContent = fmtAgo(ms);
    node.title = absolute(ms);
    return node;
  }

  function refreshTimes() {
    for (const node of document.querySelectorAll('time[data-ms]')) {
      const ms = Number(node.dataset.ms);
      node.textContent = fmtAgo(ms);
      node.title = absolute(ms);
    }
  }
  refreshTimes();
  setInterval(refreshTimes, 5000);

  /** Replaces the content of the row's cell named `field` (data-f). */
  function fill(row, field, ...nodes) {
    const cell = row.querySelector(`[data-f="${field}"]`);
    if (cell) cell.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
    return cell;
  }

  function flash(node, text, ok) {
    node.hidden = false;
    node.className = `flash ${ok ? 'ok' : 'bad'}`;
    node.textContent = text;
  }

  /** A row cloned from the page's <template> (the server renders its cells). */
  function fromTemplate(template) {
    return template.content.firstElementChild.cloneNode(true);
  }

  function highlight(row) {
    row.classList.remove('flash-row');
    void row.offsetWidth;
    row.classList.add('flash-row');
  }

  // ---- live stream --------------------------------------------------------------------------

  /** Follows GET /admin/live (+ query); `handlers` by message name; `reload` refetches. */
  function live(query, handlers) {
    const state = document.getElementById('live-state');
    const source = new EventSource(`/admin/live${query || ''}`);
    let broken = false;
    const reload = handlers.reload || (() => window.location.reload());
    source.onopen = () => {
      if (state) { state.textContent = 'live'; state.className = 'live on'; }
      if (broken) { broken = false; reload(); }
    };
    source.onerror = () => {
      broken = true;
      if (state) { state.textContent = 'reconnecting'; state.className = 'live off'; }
    };
    for (const [name, handler] of Object.entries(handlers)) {
      if (name === 'reload') continue;
      source.addEventListener(name, (event) => {
        let data;
        try { data = JSON.parse(event.data); } catch (_) { return; }
        handler(data);
      });
    }
    source.addEventListener('reload', () => reload());
    window.addEventListener('pagehide', () => source.close());
    return source;
  }

  // ---- operations (the Operations page, and the agent page's list) --------------------------

  function operationDetail(command) {
    if (!command || typeof command !== 'object') return '';
    return ['app', 'domain', 'ref', 'commitId', 'action']
      .map((k) => command[k]).filter((v) => typeof v === 'string').join(' ');
  }

  /** Whether `op` is no older than what `node` shows (a final status is never undone). */
  function newer(node, op) {
    const final = (status) => status === 'completed' || status === 'failed';
    if (final(node.dataset.status) && !final(op.status)) return false;
    if (Number(node.dataset.updated || 0) > op.updatedAt) return false;
    node.dataset.status = op.status;
    node.dataset.updated = String(op.updatedAt);
    return true;
  }

  function fillOperation(row, op) {
    if (!newer(row, op)) return;
    row.dataset.id = op.id;
    row.dataset.agent = op.agentId;
    fill(row, 'type', el('code', { text: op.type }));
    const target = row.querySelector('[data-f="target"] a');
    const name = target ? target.textContent : (agentNames.get(op.agentId) || op.agentId);
    fill(row, 'target',
      el('a', { href: `/agents/${encodeURIComponent(op.agentId)}`, text: name }), ' ',
      el('span', { class: 'muted', text: operationDetail(op.command) }));
    fill(row, 'status', badge(op.status));
    fill(row, 'created', timeEl(op.createdAt));
    fill(row, 'updated', timeEl(op.updatedAt));
    const out = [];
    if (op.error) out.push(el('div', { class: 'error', text: op.error }));
    if (op.output) {
      const details = el('details', {}, el('summary', { text: 'output' }), el('pre', { text: op.output }));
      if (row.querySelector('[data-f="output"] details[open]')) details.open = true;
      out.push(details);
    }
    fill(row, 'output', ...out);
  }

  /** Agent names seen in the page's operation rows (for rows that arrive live). */
  const agentNames = new Map();
  for (const link of document.querySelectorAll('table.operations [data-f="target"] a, table.events [data-f="agent"] a')) {
    const row = link.closest('tr');
    if (row && row.dataset.agent) agentNames.set(row.dataset.agent, link.textContent);
  }

  /** Puts a live operation into every operations table of the page that shows its agent. */
  function showOperation(op) {
    for (const table of document.querySelectorAll('table[data-live="operations"]')) {
      const scope = table.closest('[data-agent]');
      if (scope && scope.dataset.agent && scope.dataset.agent !== op.agentId) continue;
      const body = table.tBodies[0];
      let row = [...body.rows].find((r) => r.dataset.id === op.id);
      if (!row) {
        const card = table.closest('.card') || document;
        const template = card.querySelector('template.operation-row');
        if (!template) continue;
        row = fromTemplate(template);
        body.prepend(row);
        const empty = card.querySelector('.empty');
        if (empty) empty.hidden = true;
        while (body.rows.length > 200) body.lastElementChild.remove();
      }
      fillOperation(row, op);
      highlight(row);
    }
    watchers.forEach((watch) => watch(op));
  }

  /** Callbacks told of every live operation (the agent page's action boxes). */
  const watchers = new Set();

  // ---- Servers ------------------------------------------------------------------------------

  function fillServer(row, s) {
    row.dataset.id = s.id;
    row.dataset.name = s.name;
    if (s.dropletId !== undefined && s.dropletId !== null) row.dataset.droplet = String(s.dropletId);
    fill(row, 'name', el('a', { href: `/agents/${encodeURIComponent(s.agentId)}`, text: s.name }));
    fill(row, 'status', badge(s.status));
    fill(row, 'droplet', s.dropletId === null || s.dropletId === undefined ? null : String(s.dropletId));
    fill(row, 'ip', s.ip || null);
    fill(row, 'where', s.region ? `${s.region} · ${s.size}` : null);
    fill(row, 'error', s.error || null);
    fill(row, 'updated', s.updatedAt ? timeEl(s.updatedAt) : null);
  }

  function serversPage() {
    const table = document.getElementById('servers');
    const body = table.tBodies[0];
    const template = document.getElementById('server-row');
    const count = document.getElementById('server-count');
    const none = document.getElementById('no-servers');
    const result = document.getElementById('deploy-result');
    const rowOf = (id) => [...body.rows].find((r) => r.dataset.id === id);
    const counted = () => {
      count.textContent = String(body.rows.length);
      none.hidden = body.rows.length > 0;
    };
    const upsert = (s) => {
      let row = rowOf(s.id);
      if (!row) {
        row = fromTemplate(template);
        body.append(row);
      }
      fillServer(row, s);
      highlight(row);
      counted();
    };

    const form = document.getElementById('deploy-server');
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!form.reportValidity()) return;
      const button = form.querySelector('button');
      button.disabled = true;
      try {
        const name = form.elements.name.value.trim();
        const answer = await api('POST', '/admin/servers/deploy-with-agent', { name });
        const s = answer.server;
        flash(result, answer.message, true);
        if (!rowOf(s.id)) upsert({ id: s.id, name: s.name, status: s.status, agentId: s.agent.id });
        form.reset();
      } catch (e) {
        flash(result, e.message, false);
      } finally {
        button.disabled = false;
      }
    });

    const dialog = document.getElementById('confirm');
    const dialogText = document.getElementById('confirm-text');
    table.addEventListener('click', (event) => {
      const button = event.target.closest('button[data-action="delete-server"]');
      if (!button) return;
      const row = button.closest('tr');
      const { id, name, droplet } = row.dataset;
      dialogText.textContent = droplet
        ? `Delete server ${name} and destroy its droplet ${droplet}? This cannot be undone.`
        : `Delete server ${name}? It has no droplet yet.`;
      dialog.returnValue = '';
      dialog.onclose = async () => {
        if (dialog.returnValue !== 'yes') return;
        button.disabled = true;
        try {
          const answer = await api('DELETE', `/admin/servers/${encodeURIComponent(id)}`);
          flash(result, answer.message, true);
          row.remove();
          counted();
        } catch (e) {
          flash(result, e.message, false);
          button.disabled = false;
        }
      };
      dialog.showModal();
    });

    live('', {
      server: (s) => {
        if (s.deleted) {
          const row = rowOf(s.id);
          if (row) row.remove();
          counted();
        } else {
          upsert(s);
        }
      },
    });
  }

  // ---- Operations ---------------------------------------------------------------------------

  function operationsPage() {
    live('', { operation: showOperation });
  }

  // ---- figures (as the server renders them) -------------------------------------------------

  /** A percent (0–100) as a bar; classes as fleet::bar_percent (5 % steps, warn > 75, bad > 90). */
  function barPercent(percent) {
    const bar = el('span', { class: 'bar' });
    if (percent === null || percent === undefined || Number.isNaN(percent)) return bar;
    const p = Math.min(100, Math.max(0, percent));
    if (p > 90) bar.classList.add('bad'); else if (p > 75) bar.classList.add('warn');
    bar.title = `${p.toFixed(0)} %`;
    bar.append(el('span', { class: `w${Math.round(p / 5) * 5}` }));
    return bar;
  }

  function usedOf(used, total) {
    if (used === null || used === undefined || !total) return null;
    return used * 100 / total;
  }

  function cpuText(s) {
    if (s.load === null || s.load === undefined) return null;
    return `${s.load.toFixed(0)} %${s.cores ? ` of ${s.cores} cores` : ''}`;
  }

  function appCounts(apps) {
    const part = (n, label, cls) => el('span', { class: `${cls}${n === 0 ? ' zero' : ''}`, text: `${n} ${label}` });
    const node = el('span', { class: 'apps-counts' },
      part(apps.online, 'online', 'online'), part(apps.errored, 'errored', 'errored'),
      part(apps.stopped, 'stopped', ''));
    if (apps.other > 0) node.append(el('span', { text: `${apps.other} other` }));
    return node;
  }

  // ---- Fleet --------------------------------------------------------------------------------

  /** As fleet::state on the server: an agent that never enrolled is pending. */
  function agentState(s) {
    return !s.enrolled && s.status === 'offline' ? 'pending' : s.status;
  }

  function fillAgent(row, s) {
    row.dataset.id = s.id;
    row.dataset.name = s.name;
    row.dataset.hostname = s.hostname || '';
    row.dataset.problem = String(s.problem);
    row.classList.toggle('problem', s.problem > 0);
    const agent = [el('span', { class: `dot ${tone(agentState(s))}`, title: agentState(s) }),
      el('a', { href: `/agents/${encodeURIComponent(s.id)}`, text: s.name })];
    if (s.hostname) agent.push(el('br'), el('span', { class: 'muted', text: s.hostname }));
    fill(row, 'agent', ...agent);
    fill(row, 'status', badge(agentState(s)));
    fill(row, 'version', s.version || '—', ...(s.gitVersion ? [el('br'), el('code', { class: 'muted', text: s.gitVersion })] : []));
    const cpu = cpuText(s);
    fill(row, 'cpu', ...(cpu ? [el('span', { class: 'figure', text: cpu }), barPercent(s.load)] : []));
    const figure = (used, total) => (used === null || used === undefined || !total ? [] : [
      el('span', { class: 'figure', text: `${fmtBytes(used)} / ${fmtBytes(total)}` }), barPercent(usedOf(used, total))]);
    fill(row, 'memory', ...figure(s.memoryUsed, s.memoryTotal));
    fill(row, 'disk', ...figure(s.diskUsed, s.diskSize));
    fill(row, 'apps', appCounts(s.apps));
    fill(row, 'seen', timeEl(s.lastSeenAt));
  }

  /** As AgentSummary::matches on the server: name, id or hostname, ignoring case. */
  function agentMatches(row, query) {
    if (!query) return true;
    const has = (text) => (text || '').toLowerCase().includes(query);
    return has(row.dataset.name) || has(row.dataset.id) || has(row.dataset.hostname);
  }

  function fleetPage() {
    const table = document.getElementById('agents');
    const body = table.tBodies[0];
    const template = document.getElementById('agent-row');
    const filter = document.getElementById('filter');
    const count = document.getElementById('agent-count');
    const none = document.getElementById('no-agents');
    const more = document.getElementById('more-agents');
    const serverQuery = filter.value.trim().toLowerCase();
    let total = Number(count.dataset.total);
    const shownLimit = 500;

    const order = (a, b) => (Number(b.dataset.problem) - Number(a.dataset.problem))
      || (a.dataset.name < b.dataset.name ? -1 : a.dataset.name > b.dataset.name ? 1 : 0)
      || (a.dataset.id < b.dataset.id ? -1 : 1);
    const applyFilter = () => {
      const query = filter.value.trim().toLowerCase();
      let shown = 0;
      for (const row of body.rows) {
        row.hidden = !agentMatches(row, query);
        if (!row.hidden) shown += 1;
      }
      none.hidden = shown > 0;
      count.textContent = query === serverQuery
        ? `${total} agent${total === 1 ? '' : 's'}${query ? ' matching' : ''}` : `${shown} shown`;
    };
    const resort = () => {
      const rows = [...body.rows].sort(order);
      body.append(...rows);
    };
    filter.addEventListener('input', applyFilter);

    let pending = new Map();
    let scheduled = false;
    const flush = () => {
      scheduled = false;
      for (const s of pending.values()) {
        let row = [...body.rows].find((r) => r.dataset.id === s.id);
        if (!row) {
          // Rows past the rendered ones stay counted, not shown.
          if (!agentMatchesSummary(s, serverQuery)) continue;
          if (body.rows.length >= shownLimit) { total += 1; more.hidden = false; continue; }
          row = fromTemplate(template);
          body.append(row);
          total += 1;
        }
        fillAgent(row, s);
        highlight(row);
      }
      pending = new Map();
      resort();
      applyFilter();
      const shownNode = document.getElementById('shown');
      const totalNode = document.getElementById('total');
      if (shownNode) shownNode.textContent = String(body.rows.length);
      if (totalNode) totalNode.textContent = String(total);
    };
    const agentMatchesSummary = (s, query) => !query || [s.name, s.id, s.hostname]
      .some((t) => (t || '').toLowerCase().includes(query));

    const servers = document.getElementById('servers');
    const provisioning = document.getElementById('provisioning');
    const serverTemplate = document.getElementById('server-row');
    const showServer = (s) => {
      const sbody = servers.tBodies[0];
      let row = [...sbody.rows].find((r) => r.dataset.id === s.id);
      if (s.deleted || s.status === 'active') {
        if (row) row.remove();
      } else {
        if (!row) { row = fromTemplate(serverTemplate); sbody.append(row); }
        row.dataset.id = s.id;
        fill(row, 'name', el('a', { href: `/agents/${encodeURIComponent(s.agentId)}`, text: s.name }));
        fill(row, 'status', badge(s.status));
        fill(row, 'ip', s.ip || null);
        fill(row, 'error', s.error || null);
        fill(row, 'updated', timeEl(s.updatedAt));
        highlight(row);
      }
      provisioning.hidden = sbody.rows.length === 0;
    };

    live('', {
      agent: (s) => {
        pending.set(s.id, s);
        if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
      },
      server: showServer,
    });
  }

  // ---- Agent page ---------------------------------------------------------------------------

  /** As fleet::validate_domain on the server (and the agent): the reason a domain is refused. */
  function domainError(domain) {
    if (!domain) return 'domain is empty';
    if (domain.length > 253) return `domain is ${domain.length} bytes long, the limit is 253`;
    const bad = [...domain].find((c) => !/[A-Za-z0-9.-]/.test(c));
    if (bad !== undefined) return `domain contains ${JSON.stringify(bad)}: only letters, digits, '-' and '.' are allowed`;
    const labels = domain.toLowerCase().split('.');
    for (const label of labels) {
      if (!label) return 'domain has an empty label (leading or trailing \'.\', or "..")';
      if (label.length > 63) return `domain label is ${label.length} chars long, the limit is 63`;
      if (label.startsWith('-') || label.endsWith('-')) return `domain label "${label}" starts or ends with '-'`;
    }
    if (labels.length < 2) return 'domain needs at least two labels, as in example.com';
    if (/^[0-9]+$/.test(labels[labels.length - 1])) return "domain's last label is all digits (an IP address is not a domain)";
    return '';
  }

  /** Fills an app row's cells but its buttons (a click on them is never lost to an update). */
  function fillAppRow(row, app) {
    row.dataset.app = app.name;
    row.dataset.instance = String(app.instance || 0);
    const dash = () => el('span', { class: 'muted', text: '—' });
    const name = el('td', { text: app.name });
    if (app.instance > 0) name.append(el('span', { class: 'muted', text: ` #${app.instance}` }));
    const cells = [
      name,
      el('td', {}, badge(app.state)),
      el('td', { class: 'num' }, app.pid ? String(app.pid) : dash()),
      el('td', { class: 'num' }, app.state === 'online' ? fmtSpan(app.uptime_ms || 0) : dash()),
      el('td', { class: 'num', text: String(app.restarts || 0) }),
      el('td', { class: 'num', text: fmtBytes(app.memory_bytes || 0) }),
      el('td', { class: 'num', text: `${(app.cpu_percent || 0).toFixed(1)} %` }),
      el('td', {}, app.release ? el('code', { text: app.release }) : dash()),
    ];
    cells.forEach((cell, i) => {
      const old = row.cells[i];
      if (old) old.replaceWith(cell); else row.append(cell);
    });
    if (row.cells.length === cells.length) {
      row.append(el('td', { class: 'row-actions' }, ...['start', 'stop', 'restart'].map((action) => el('button', {
        class: 'small', type: 'button', data: { appAction: action }, text: action[0].toUpperCase() + action.slice(1),
      }))));
    }
    return row;
  }

  /** The chart of one series with uPlot over [from, to] (Unix seconds). */
  function drawChart(node, label, xs, ys, from, to) {
    for (const old of node.querySelectorAll('.uplot')) old.remove();
    if (!window.uPlot) return null;
    const width = Math.max(240, node.clientWidth - 4);
    const options = {
      width, height: 180,
      legend: { show: false },
      scales: { x: { time: true, range: () => [from, to] }, y: { range: [0, 100] } },
      // space: at least 72 px between time ticks, so labels such as "12:50pm" never touch.
      axes: [{ stroke: '#6b7385', grid: { stroke: '#eef0f4' }, space: 72 }, { stroke: '#6b7385', grid: { stroke: '#eef0f4' }, size: 40 }],
      series: [{}, { label, stroke: '#e8a317', width: 2, fill: 'rgba(232,163,23,0.12)', points: { show: xs.length < 60 } }],
    };
    return new window.uPlot(options, [xs, ys], node);
  }

  function agentPage() {
    const agentId = document.getElementById('facts').dataset.agent;
    agentNames.set(agentId, document.getElementById('agent-name').textContent);
    const appsBody = document.getElementById('apps').tBodies[0];
    const actionError = document.getElementById('action-error');
    const log = document.getElementById('action-log');
    const boxTemplate = document.getElementById('op-box');

    // -- actions and their operations
    const boxes = new Map();
    const fillBox = (box, op) => {
      if (!newer(box, op)) return;
      fill(box, 'type', op.type);
      fill(box, 'target', operationDetail(op.command));
      fill(box, 'status', badge(op.status));
      fill(box, 'updated', timeEl(op.updatedAt));
      fill(box, 'error', op.error || null);
      const out = box.querySelector('[data-f="output"]');
      out.textContent = op.output || '';
      out.hidden = !op.output;
    };
    watchers.add((op) => { const box = boxes.get(op.id); if (box) fillBox(box, op); });
    const act = async (method, path, body) => {
      actionError.hidden = true;
      try {
        const answer = await api(method, path, body);
        const op = answer.operation;
        const box = boxTemplate.content.firstElementChild.cloneNode(true);
        box.dataset.id = op.id;
        boxes.set(op.id, box);
        log.prepend(box);
        while (log.children.length > 10) log.lastElementChild.remove();
        fillBox(box, op);
        showOperation(op);
        // The stream may have told the end before the box existed.
        const now = await api('GET', `/admin/operations/${encodeURIComponent(op.id)}`);
        if (now && now.operation) fillBox(box, now.operation);
      } catch (e) {
        flash(actionError, e.message, false);
      }
    };
    const command = (body) => act('POST', `/admin/agents/${encodeURIComponent(agentId)}/commands`, body);

    appsBody.addEventListener('click', (event) => {
      const button = event.target.closest('button[data-app-action]');
      if (!button) return;
      const app = button.closest('tr').dataset.app;
      command({ type: 'app_control', app, action: button.dataset.appAction });
    });
    document.getElementById('deploy-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const form = event.target;
      const body = { app: form.elements.app.value };
      const ref = form.elements.ref.value.trim();
      if (ref) body.ref = ref;
      act('POST', `/admin/agents/${encodeURIComponent(agentId)}/deploy`, body);
    });
    const domain = document.getElementById('site-domain');
    domain.addEventListener('input', () => domain.setCustomValidity(domainError(domain.value.trim())));
    document.getElementById('site-form').addEventListener('submit', (event) => {
      event.preventDefault();
      domain.setCustomValidity(domainError(domain.value.trim()));
      if (!event.target.reportValidity()) return;
      const type = (event.submitter && event.submitter.dataset.site) || 'create_site';
      command({ type, domain: domain.value.trim() });
    });
    document.getElementById('agent-form').addEventListener('click', (event) => {
      const button = event.target.closest('button[data-agent-action]');
      if (!button) return;
      if (button.dataset.agentAction === 'rotate') act('POST', `/admin/agents/${encodeURIComponent(agentId)}/rotate-key`);
      else command({ type: button.dataset.agentAction });
    });
    document.getElementById('rollback-form').addEventListener('submit', (event) => {
      event.preventDefault();
      if (!event.target.reportValidity()) return;
      const commit = event.target.elements.commitId.value.trim();
      command(commit ? { type: 'rollback_agent', commitId: commit } : { type: 'rollback_agent' });
    });

    // -- charts
    let range = 'hour';
    const charts = {};
    const series = { x: [], cpu: [], memory: [], disk: [] };
    const note = document.getElementById('chart-note');
    const spans = { hour: 3600, day: 86400, week: 7 * 86400 };
    const redraw = () => {
      const to = Date.now() / 1000;
      const from = to - spans[range];
      const draw = (id, label, ys) => drawChart(document.getElementById(id), label, series.x, ys, from, to);
      charts.cpu = draw('chart-cpu', 'CPU %', series.cpu);
      charts.memory = draw('chart-memory', 'Memory %', series.memory);
      charts.disk = draw('chart-disk', 'Disk %', series.disk);
    };
    const loadHistory = async () => {
      try {
        const history = await api('GET', `/admin/agents/${encodeURIComponent(agentId)}/history?range=${range}`);
        const points = history.points || [];
        series.x = points.map((p) => p.at / 1000);
        series.cpu = points.map((p) => p.cpuLoad);
        series.memory = points.map((p) => usedOf(p.memoryUsed, p.memoryTotal));
        series.disk = points.map((p) => usedOf(p.diskUsed, p.diskSize));
        note.textContent = `${points.length} point${points.length === 1 ? '' : 's'}${history.bucketMs ? `, ${fmtSpan(history.bucketMs)} each` : ''}`;
        redraw();
      } catch (e) {
        note.textContent = e.message;
      }
    };
    for (const button of document.querySelectorAll('.ranges button')) {
      button.addEventListener('click', () => {
        range = button.dataset.range;
        for (const b of document.querySelectorAll('.ranges button')) b.classList.toggle('active', b === button);
        loadHistory();
      });
    }
    let resizeTimer = null;
    window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(redraw, 200); });
    loadHistory();

    // -- live figures and apps
    const facts = document.getElementById('facts');
    const setFact = (field, ...nodes) => fill(facts, field, ...nodes);
    const showSummary = (s) => {
      if (s.id !== agentId) return;
      document.getElementById('agent-status').replaceChildren(badge(agentState(s)));
      setFact('hostname', s.hostname || '—');
      setFact('version', s.version || '—');
      setFact('cpu', cpuText(s) || '—');
      const pair = (u, t) => (u === null || u === undefined || !t ? '—' : `${fmtBytes(u)} / ${fmtBytes(t)}`);
      setFact('memory', pair(s.memoryUsed, s.memoryTotal));
      setFact('disk', pair(s.diskUsed, s.diskSize));
      setFact('connected', timeEl(s.connectedAt));
      setFact('seen', timeEl(s.lastSeenAt));
      const bars = facts.querySelectorAll('.bar');
      const values = [s.load, usedOf(s.memoryUsed, s.memoryTotal), usedOf(s.diskUsed, s.diskSize)];
      bars.forEach((bar, i) => bar.replaceWith(barPercent(values[i])));
    };
    const showApps = (message) => {
      if (message.agent !== agentId) return;
      const apps = message.apps || [];
      const rows = new Map([...appsBody.rows].map((r) => [`${r.dataset.app}#${r.dataset.instance || 0}`, r]));
      const kept = apps.map((app) => {
        const key = `${app.name}#${app.instance || 0}`;
        const row = rows.get(key) || el('tr');
        rows.delete(key);
        return fillAppRow(row, app);
      });
      for (const gone of rows.values()) gone.remove();
      appsBody.append(...kept);
      document.getElementById('app-count').textContent = String(apps.length);
      document.getElementById('no-apps').hidden = apps.length > 0;
      const select = document.getElementById('deploy-app');
      const chosen = select.value;
      const names = [...new Set(apps.map((a) => a.name))];
      select.replaceChildren(...names.map((n) => el('option', { value: n, text: n })));
      if (names.includes(chosen)) select.value = chosen;
    };

    live(`?agent=${encodeURIComponent(agentId)}`, {
      agent: showSummary,
      apps: showApps,
      operation: (op) => { if (op.agentId === agentId) showOperation(op); },
      event: showEvent,
      reload: () => window.location.reload(),
    });
  }

  // ---- Events -------------------------------------------------------------------------------

  /** As events::tone on the server. */
  function eventTone(kind) {
    switch (kind) {
      case 'errored': case 'health_failed': case 'job_failed': case 'disk': return 'bad';
      case 'memory_restart': case 'deploy': return 'busy';
      default: return 'idle';
    }
  }

  /** Puts a live event into every events table of the page that shows its agent and kind. */
  function showEvent(e) {
    for (const table of document.querySelectorAll('table[data-live="events"]')) {
      const card = table.closest('.card');
      if (card.dataset.agent && card.dataset.agent !== e.agentId) continue;
      if (card.dataset.kind && card.dataset.kind !== e.kind) continue;
      const body = table.tBodies[0];
      if ([...body.rows].some((r) => r.dataset.id === String(e.id))) continue;
      const row = fromTemplate(card.querySelector('template.event-row'));
      row.dataset.id = String(e.id);
      row.dataset.agent = e.agentId;
      fill(row, 'at', timeEl(e.at));
      fill(row, 'agent', el('a', { href: `/agents/${encodeURIComponent(e.agentId)}`, text: agentNames.get(e.agentId) || e.agentId }));
      fill(row, 'kind', el('span', { class: `badge ${eventTone(e.kind)}`, text: e.kind }));
      fill(row, 'app', e.app || null);
      fill(row, 'message', e.message);
      body.prepend(row);
      highlight(row);
      while (body.rows.length > 200) body.lastElementChild.remove();
      card.querySelector('.empty').hidden = true;
    }
  }

  function eventsPage() {
    const form = document.getElementById('event-filter');
    document.getElementById('event-kind').addEventListener('change', () => form.submit());
    form.querySelector('button').hidden = true;
    live('', { event: showEvent });
  }

  // ---- dispatch -----------------------------------------------------------------------------

  const pages = {
    fleet: fleetPage,
    agent: agentPage,
    servers: serversPage,
    operations: operationsPage,
    events: eventsPage,
  };
  if (pages[page]) pages[page]();
})();
