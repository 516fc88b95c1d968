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

  function fillOperation(row, op) {
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
  for (const link of document.querySelectorAll('table.operations [data-f="target"] a')) {
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

  // ---- dispatch -----------------------------------------------------------------------------

  const pages = {
    servers: serversPage,
    operations: operationsPage,
  };
  if (pages[page]) pages[page]();
})();
