// TokMesh operations dashboard. No framework, no build step: this file is served as is.
//
// Every action is an ordinary call of the node's HTTP API with the key the operator typed
// in (Authorization: Bearer key_id:secret), so roles, audit and rate limits apply as for
// any client. The key lives in this tab's sessionStorage only and goes nowhere else.
"use strict";

(() => {
  const KEY_STORE = "tokmesh.dashboard.key";
  const POLL_MS = 2000; // live numbers and charts, from /metrics (not audited)
  const ADMIN_REFRESH_MS = 30000; // admin status calls are audited: poll them rarely
  const WINDOW_S = 15 * 60;
  const MAX_EVENTS = 500;
  // The dashboard's own polling is left out of the error and latency charts (the cluster
  // status answers 501 on a standalone node, which is no fault).
  const OWN_PATHS = new Set([
    "/metrics", "/health", "/ready", "/ui", "/ui/", "/ui/assets/{name}", "/admin/v1/cluster/status",
  ]);

  const $ = (id) => document.getElementById(id);
  const state = {
    key: null,
    role: null, // "admin" | "metrics"
    timers: [],
    samples: [], // {t, validations, creates, e4, e5, buckets: Map(le -> count), total}
    series: { t: [], validations: [], creates: [], e4: [], e5: [], p99: [] },
    charts: {},
    uptimeBase: null,
    sessions: [],
    lastUser: null,
    events: null,
    standalone: false,
    eventsPaused: false,
  };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // --- API ---------------------------------------------------------------------------

  async function errorOf(resp) {
    let body = null;
    try {
      body = await resp.json();
    } catch (_) {
      // not an envelope (a proxy's page, an empty body): fall back to the HTTP status
    }
    const code = body && body.code ? body.code : `HTTP-${resp.status}`;
    const message = body && body.message ? body.message : resp.statusText || "request failed";
    return new ApiError(resp.status, code, message);
  }

  /** One API call; the envelope's data, or the Response itself with {raw: true}. */
  async function api(method, path, { body, raw } = {}) {
    const headers = { Authorization: `Bearer ${state.key}` };
    let payload;
    if (body instanceof FormData) {
      payload = body; // the browser writes the multipart boundary
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, { method, headers, body: payload, cache: "no-store", credentials: "omit" });
    } catch (exc) {
      throw new ApiError(0, "NETWORK", `the node did not answer (${exc.message})`);
    }
    if (!resp.ok) {
      const err = await errorOf(resp);
      if (resp.status === 401 && state.key) {
        // An expired, disabled or rotated-out key: back to the login, key forgotten.
        logout(`${err.code}: ${err.message}`);
      }
      throw err;
    }
    if (raw) return resp;
    const envelope = await resp.json();
    return envelope.data;
  }

  // --- messages ----------------------------------------------------------------------

  function showError(err) {
    const text = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err.message || err);
    $("error-text").textContent = text;
    $("error").hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error-text").textContent = "";
  }

  function say(text) {
    $("status").textContent = text;
  }

  /** Run an action: its API error is shown with code and message, a 401 already logged out. */
  async function guarded(action) {
    try {
      clearError();
      return await action();
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) showError(err);
      return undefined;
    }
  }

  // --- formatting --------------------------------------------------------------------

  function fmtTime(ms) {
    if (!ms) return "never";
    return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function fmtBytes(n) {
    if (n == null) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function fmtDuration(s) {
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const parts = d ? [`${d}d`, `${h}h`, `${m}m`] : h ? [`${h}h`, `${m}m`] : [`${m}m`, `${s % 60}s`];
    return parts.join(" ");
  }

  /** An element with text or children; attributes set as properties or attributes. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "on") {
        for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      } else if (name in node && name !== "list") {
        node[name] = value;
      } else {
        node.setAttribute(name, value);
      }
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
    }
    return node;
  }

  /** A card's value (in a span of class "value", which tests read) and a note under it. */
  function setText(id, text, extra) {
    const node = $(id);
    node.replaceChildren(el("span", { className: "value" }, text));
    if (extra) node.append(el("small", {}, extra));
  }

  // --- confirmation dialog -----------------------------------------------------------

  /** Ask before a destructive action; with ``typed`` the operator must type that word. */
  function confirmAction({ title, text, typed = null, ok = "Confirm" }) {
    const dialog = $("confirm");
    const input = $("confirm-input");
    const okButton = $("confirm-ok");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-typed").hidden = typed === null;
    $("confirm-label").textContent = typed === null ? "" : `Type ${typed} to confirm`;
    input.value = "";
    okButton.textContent = ok;
    okButton.disabled = typed !== null;
    return new Promise((resolve) => {
      const onInput = () => {
        okButton.disabled = input.value !== typed;
      };
      const finish = (answer) => {
        input.removeEventListener("input", onInput);
        okButton.removeEventListener("click", onOk);
        $("confirm-cancel").removeEventListener("click", onCancel);
        dialog.removeEventListener("cancel", onCancel);
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      const onOk = () => finish(true);
      const onCancel = (ev) => {
        if (ev) ev.preventDefault();
        finish(false);
      };
      input.addEventListener("input", onInput);
      okButton.addEventListener("click", onOk);
      $("confirm-cancel").addEventListener("click", onCancel);
      dialog.addEventListener("cancel", onCancel); // Escape
      dialog.showModal();
      (typed === null ? $("confirm-cancel") : input).focus();
    });
  }

  // --- login and navigation ----------------------------------------------------------

  async function login(key) {
    state.key = key;
    let role = null;
    try {
      await api("GET", "/admin/v1/status/summary");
      role = "admin";
    } catch (err) {
      if (err.status !== 403) throw err;
      await api("GET", "/metrics", { raw: true }); // a metrics key may read this, no more
      role = "metrics";
    }
    sessionStorage.setItem(KEY_STORE, key);
    state.role = role;
    document.body.dataset.role = role;
    for (const node of document.querySelectorAll(".admin-only")) node.hidden = role !== "admin";
    $("who-role").textContent = `${key.split(":")[0]} (${role}${role === "admin" ? "" : ", read-only"})`;
    $("nav").hidden = false;
    $("who").hidden = false;
    startPolling();
    route();
  }

  function logout(message) {
    sessionStorage.removeItem(KEY_STORE);
    state.key = null;
    state.role = null;
    stopPolling();
    stopEvents();
    hideSecret();
    $("nav").hidden = true;
    $("who").hidden = true;
    showPage("login");
    if (message) showError({ message });
    $("login-key").focus();
  }

  const PAGES = ["overview", "sessions", "keys", "backups", "events"];

  function showPage(name) {
    for (const section of document.querySelectorAll(".page")) {
      section.hidden = section.id !== `page-${name}`;
    }
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.dataset.page === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  function route() {
    if (!state.role) {
      showPage("login");
      return;
    }
    let name = location.hash.replace(/^#/, "");
    if (!PAGES.includes(name)) {
      if (name === "main") return; // the skip link
      name = "overview";
    }
    if (state.role !== "admin" && name !== "overview") name = "overview";
    showPage(name);
    if (name !== "events") stopEvents();
    if (name !== "keys") hideSecret(); // a shown secret does not outlive the page
    const load = { overview: refreshOverview, sessions: searchSessions, keys: loadKeys, backups: loadSnapshots, events: startEvents }[name];
    guarded(load);
  }

  // --- overview ----------------------------------------------------------------------

  /** Prometheus text exposition to [{name, labels, value}]. */
  function parseMetrics(text) {
    const out = [];
    const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const raw of text.split("\n")) {
      if (!raw || raw[0] === "#") continue;
      const m = line.exec(raw);
      if (!m) continue;
      const labels = {};
      if (m[2]) for (const l of m[2].matchAll(label)) labels[l[1]] = l[2].replace(/\\(.)/g, "$1");
      out.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return out;
  }

  function sample(metrics) {
    const s = { t: Date.now() / 1000, validations: 0, creates: 0, e4: 0, e5: 0, buckets: new Map(), gauges: {} };
    for (const { name, labels, value } of metrics) {
      if (name === "tokmesh_token_validate_calls_total") s.validations += value;
      else if (name === "tokmesh_session_create_total") s.creates += value;
      else if (name === "tokmesh_api_request_duration_seconds_count" && !OWN_PATHS.has(labels.path)) {
        const status = Number(labels.status);
        if (status >= 500) s.e5 += value;
        else if (status >= 400) s.e4 += value;
      } else if (name === "tokmesh_api_request_duration_seconds_bucket" && !OWN_PATHS.has(labels.path)) {
        const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
        s.buckets.set(le, (s.buckets.get(le) || 0) + value);
      } else if (!Object.keys(labels).length) {
        s.gauges[name] = value;
      }
    }
    return s;
  }

  /** A counter's increase between two samples (a restarted node starts from zero). */
  function increase(now, before) {
    return now >= before ? now - before : now;
  }

  /** The 0.99 quantile (ms) of the requests between two samples, interpolated in buckets. */
  function p99(now, before) {
    const bounds = [...now.buckets.keys()].sort((a, b) => a - b);
    const deltas = bounds.map((le) => increase(now.buckets.get(le), before.buckets.get(le) || 0));
    const total = deltas.length ? deltas[deltas.length - 1] : 0;
    if (!total) return null;
    const rank = 0.99 * total;
    for (let i = 0; i < bounds.length; i += 1) {
      if (deltas[i] >= rank) {
        const upper = bounds[i];
        const lower = i ? bounds[i - 1] : 0;
        if (upper === Infinity) return lower * 1000; // beyond the last bound: its value
        const below = i ? deltas[i - 1] : 0;
        const inBucket = deltas[i] - below;
        const frac = inBucket ? (rank - below) / inBucket : 1;
        return (lower + (upper - lower) * frac) * 1000;
      }
    }
    return null;
  }

  function record(s) {
    const prev = state.samples[state.samples.length - 1];
    state.samples.push(s);
    if (state.samples.length > 2) state.samples.shift(); // only the previous one is needed
    if (!prev) {
      drawCharts(); // empty until the second sample gives the first rates
      return;
    }
    const dt = s.t - prev.t;
    if (dt <= 0) return;
    const series = state.series;
    series.t.push(s.t);
    series.validations.push(increase(s.validations, prev.validations) / dt);
    series.creates.push(increase(s.creates, prev.creates) / dt);
    series.e4.push(increase(s.e4, prev.e4) / dt);
    series.e5.push(increase(s.e5, prev.e5) / dt);
    series.p99.push(p99(s, prev));
    while (series.t.length && series.t[0] < s.t - WINDOW_S) {
      for (const list of Object.values(series)) list.shift();
    }
    drawCharts();
  }

  function makeChart(id, series) {
    const holder = $(id);
    const width = Math.max(280, holder.clientWidth || 460);
    const opts = {
      width,
      height: 180,
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        // Always the last 15 minutes, however few samples there are yet.
        // (a little room on the right keeps the newest point off the edge).
        x: { time: true, range: (u, min, max) => [max - WINDOW_S, max + WINDOW_S / 100] },
        y: { range: (u, min, max) => [0, Math.max(1, max * 1.15)] },
      },
      series: [{}, ...series.map(([label, stroke]) => ({
        label, stroke, width: 1.5, spanGaps: false, points: { show: true, size: 3, fill: stroke },
      }))],
      // Times in UTC, as everywhere else on the page.
      axes: [{ values: (u, splits) => splits.map((t) => new Date(t * 1000).toISOString().slice(11, 16)) }, { size: 55 }],
    };
    return new uPlot(opts, [[], ...series.map(() => [])], holder);
  }

  function drawCharts() {
    if (typeof uPlot === "undefined") return;
    const c = state.charts;
    if (!c.validations) {
      c.validations = makeChart("chart-validations", [["validations/s", "#2456a6"]]);
      c.creates = makeChart("chart-creates", [["creates/s", "#1e7a3c"]]);
      c.errors = makeChart("chart-errors", [["4xx/s", "#c77700"], ["5xx/s", "#b3261e"]]);
      c.latency = makeChart("chart-latency", [["p99 ms", "#6b3fa0"]]);
    }
    const s = state.series;
    c.validations.setData([s.t, s.validations]);
    c.creates.setData([s.t, s.creates]);
    c.errors.setData([s.t, s.e4, s.e5]);
    c.latency.setData([s.t, s.p99]);
    // The figures in words too: readable without the canvas (screen readers, tests).
    const sum = (a, b) => a.map((v, i) => v + b[i]);
    $("now-validations").textContent = summary(s.validations);
    $("now-creates").textContent = summary(s.creates);
    $("now-errors").textContent = summary(sum(s.e4, s.e5));
    $("now-latency").textContent = summary(s.p99);
  }

  /** "now X, max Y" of a series (nulls are intervals without requests). */
  function summary(values) {
    const known = values.filter((v) => v !== null && v !== undefined);
    if (!known.length) return "";
    const fmt = (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1));
    const last = values[values.length - 1];
    return `now ${last === null ? "–" : fmt(last)}, max ${fmt(Math.max(...known))}`;
  }

  async function pollMetrics() {
    const [health, ready, metrics] = await Promise.all([
      fetch("/health", { cache: "no-store" }).then((r) => r.ok).catch(() => false),
      fetch("/ready", { cache: "no-store" }).then((r) => r.json().then((b) => [r.ok, b])).catch(() => [false, null]),
      api("GET", "/metrics", { raw: true }).then((r) => r.text()),
    ]);
    setText("ov-health", health ? "healthy" : "not answering");
    $("ov-health").className = health ? "good" : "bad";
    const [isReady, body] = ready;
    const checks = body && (body.data || body.details || {}).checks;
    setText("ov-ready", isReady ? "ready" : "not ready", checks ? Object.entries(checks).map(([k, v]) => `${k}: ${v}`).join(", ") : "");
    $("ov-ready").className = isReady ? "good" : "bad";
    const s = sample(parseMetrics(metrics));
    const g = s.gauges;
    setText("ov-sessions", String(g.tokmesh_sessions_active_total ?? "–"));
    setText("ov-memory", fmtBytes(g.tokmesh_mem_usage_bytes ?? g.process_resident_memory_bytes));
    if (g.process_start_time_seconds) state.uptimeBase = g.process_start_time_seconds;
    if (state.uptimeBase) setText("ov-uptime", fmtDuration(Date.now() / 1000 - state.uptimeBase));
    record(s);
  }

  async function refreshOverview() {
    if (state.role !== "admin") {
      setText("ov-version", "–", "admin keys only");
      setText("ov-node", "–", "admin keys only");
      return;
    }
    const [summary, keys, wal, snaps] = await Promise.all([
      api("GET", "/admin/v1/status/summary"),
      api("GET", "/admin/v1/keys?size=1"),
      api("GET", "/admin/v1/wal/status"),
      api("GET", "/admin/v1/backups/snapshots?size=100"),
    ]);
    setText("ov-version", summary.version, `built ${summary.build_time}`);
    setText("ov-node", summary.node_id, summary.cluster_state);
    setText("ov-records", String(summary.metrics.stored_records));
    setText("ov-keys", String(keys.total_items));
    setText("ov-wal", `${wal.total_segments} segment${wal.total_segments === 1 ? "" : "s"}`,
      `${fmtBytes(wal.total_size_bytes)}, sync ${wal.sync_mode}, last write ${fmtTime(wal.newest_entry_time)}`);
    const latest = snaps.items.reduce((a, b) => (!a || b.created_at > a.created_at ? b : a), null);
    setText("ov-snapshots", String(snaps.total_items), latest ? `latest ${fmtTime(latest.created_at)}` : "none taken");
    await refreshCluster();
  }

  async function refreshCluster() {
    const holder = $("cluster-body");
    const parity = $("cluster-parity");
    if (state.standalone) return; // a node does not join a cluster without a restart
    let status;
    try {
      status = await api("GET", "/admin/v1/cluster/status");
    } catch (err) {
      if (err.status !== 501) throw err;
      state.standalone = true;
      holder.replaceChildren(el("p", { className: "hint" }, "Standalone node (cluster mode is off)."));
      parity.hidden = true;
      return;
    }
    const nodes = await api("GET", "/admin/v1/cluster/nodes");
    const even = status.parity ? status.parity.even : status.nodes.total % 2 === 0;
    parity.hidden = !even;
    parity.textContent = even
      ? `Even node count (${status.nodes.total}): a split into two halves leaves neither side a majority. Run an odd number of nodes.`
      : "";
    const facts = el("dl", { className: "cards" },
      el("div", {}, el("dt", {}, "State"), el("dd", {}, status.state)),
      el("div", {}, el("dt", {}, "Nodes"), el("dd", {}, `${status.nodes.active}/${status.nodes.total} active`,
        el("small", {}, `${status.nodes.suspect} suspect, ${status.nodes.down} down`))),
      el("div", {}, el("dt", {}, "Coordinator"), el("dd", {}, status.leader_id || "none")),
      el("div", {}, el("dt", {}, "Shard map"), el("dd", {}, status.shard_map ? `version ${status.shard_map.version}` : "none yet")));
    if ("under_replicated_shards" in status) {
      const under = status.under_replicated_shards;
      const count = Array.isArray(under) ? under.length : Number(under);
      facts.append(el("div", {}, el("dt", {}, "Under-replicated shards"),
        el("dd", { className: count ? "bad" : "good" }, String(count), el("small", {}, `replication factor ${status.replication_factor}`))));
    }
    const owners = status.shard_map ? status.shard_map.owners : {};
    const rows = nodes.nodes.map((n) => el("tr", {},
      el("td", {}, el("code", {}, n.node_id)), el("td", {}, n.address || "–"), el("td", {}, n.status),
      el("td", {}, n.role), el("td", {}, String(owners[n.node_id] ?? n.metrics.shards ?? 0)),
      el("td", {}, n.version || "–"), el("td", {}, n.uptime_seconds == null ? "–" : fmtDuration(n.uptime_seconds))));
    const table = el("table", {},
      el("thead", {}, el("tr", {}, ...["Node", "Address", "Status", "Role", "Shards", "Version", "Uptime"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows));
    holder.replaceChildren(facts, table);
  }

  function startPolling() {
    stopPolling();
    const tick = () => guarded(pollMetrics);
    tick();
    state.timers.push(setInterval(tick, POLL_MS));
    state.timers.push(setInterval(() => {
      if (!$("page-overview").hidden) guarded(refreshOverview);
    }, ADMIN_REFRESH_MS));
  }

  function stopPolling() {
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
  }

  // --- sessions ----------------------------------------------------------------------

  async function searchSessions() {
    const by = $("session-by").value;
    const q = $("session-q").value.trim();
    let items;
    let total;
    if (by === "session" && q) {
      items = [await api("GET", `/sessions/${encodeURIComponent(q)}`)];
      total = 1;
    } else {
      const params = new URLSearchParams({ size: "100", sort_by: "created_at", sort_order: "desc" });
      if (q) params.set("user_id", q);
      const page = await api("GET", `/sessions?${params}`);
      items = page.items;
      total = page.total_items;
    }
    state.sessions = items;
    state.lastUser = by === "user" && q ? q : null;
    renderSessions(total);
  }

  function renderSessions(total) {
    const rows = state.sessions.map((s) => el("tr", {},
      el("td", {}, el("code", {}, s.id)),
      el("td", {}, s.user_id),
      el("td", {}, s.device_id || "–"),
      el("td", {}, s.last_access_ip || s.ip_address || "–"),
      el("td", {}, fmtTime(s.created_at)),
      el("td", {}, fmtTime(s.expires_at)),
      el("td", {}, fmtTime(s.last_active)),
      el("td", { className: "actions" }, el("button", {
        type: "button", className: "danger", "aria-label": `Revoke session ${s.id}`,
        on: { click: () => guarded(() => revokeSession(s)) },
      }, "Revoke"))));
    $("session-table").tBodies[0].replaceChildren(...rows);
    $("session-count").textContent = total > state.sessions.length
      ? `${state.sessions.length} of ${total} shown (newest first).`
      : `${state.sessions.length} session${state.sessions.length === 1 ? "" : "s"}.`;
    const user = state.lastUser;
    $("session-user-actions").hidden = !user || !state.sessions.length;
    $("revoke-user").textContent = `Revoke all sessions of ${user}`;
    $("keep-which").replaceChildren(...state.sessions.map((s) =>
      el("option", { value: s.id }, `${s.id} (${s.device_id || "no device"})`)));
  }

  async function revokeSession(s) {
    const ok = await confirmAction({ title: "Revoke session", text: `Revoke ${s.id} of user ${s.user_id}? Its token stops validating at once.`, ok: "Revoke" });
    if (!ok) return;
    await api("POST", `/sessions/${encodeURIComponent(s.id)}/revoke`, { body: {} });
    say(`Session ${s.id} revoked.`);
    await searchSessions();
  }

  async function revokeUser() {
    const user = state.lastUser;
    if (!user) return;
    const keep = $("keep-one").checked ? $("keep-which").value : null;
    const ok = await confirmAction({
      title: "Revoke all sessions of a user",
      text: keep ? `Revoke every session of ${user} except ${keep}.` : `Revoke every session of ${user}.`,
      typed: user,
      ok: "Revoke all",
    });
    if (!ok) return;
    const body = keep ? { except_session_id: keep } : {};
    const res = await api("POST", `/users/${encodeURIComponent(user)}/sessions/revoke`, { body });
    say(`${res.revoked_count} session${res.revoked_count === 1 ? "" : "s"} of ${user} revoked.`);
    await searchSessions();
  }

  // --- API keys ----------------------------------------------------------------------

  async function loadKeys() {
    const items = [];
    for (let page = 1; ; page += 1) {
      const res = await api("GET", `/admin/v1/keys?size=100&page=${page}`);
      items.push(...res.items);
      if (items.length >= res.total_items || !res.items.length) break;
    }
    const mine = state.key.split(":")[0];
    const rows = items.map((k) => {
      const enable = k.status === "disabled";
      return el("tr", {},
        el("td", {}, el("code", {}, k.key_id), k.key_id === mine ? el("small", {}, " (this tab)") : ""),
        el("td", {}, k.role),
        el("td", {}, el("span", { className: `badge ${k.status}` }, k.status)),
        el("td", {}, k.description || ""),
        el("td", {}, fmtTime(k.created_at)),
        el("td", {}, fmtTime(k.last_used_at)),
        el("td", {}, k.expires_at ? fmtTime(k.expires_at) : "never"),
        el("td", { className: "actions" },
          el("button", {
            type: "button", className: enable ? "" : "danger", "aria-label": `${enable ? "Enable" : "Disable"} key ${k.key_id}`,
            on: { click: () => guarded(() => setKeyStatus(k, enable ? "active" : "disabled")) },
          }, enable ? "Enable" : "Disable"),
          el("button", {
            type: "button", className: "secondary", "aria-label": `Rotate key ${k.key_id}`,
            on: { click: () => guarded(() => rotateKey(k)) },
          }, "Rotate")));
    });
    $("key-table").tBodies[0].replaceChildren(...rows);
  }

  function showSecret(label, credential, note) {
    $("secret-label").textContent = label;
    $("secret-value").value = credential;
    $("secret-note").textContent = note || "";
    $("secret").hidden = false;
    $("secret-value").focus();
    $("secret-value").select();
  }

  function hideSecret() {
    $("secret").hidden = true;
    $("secret-value").value = "";
  }

  async function copySecret() {
    const input = $("secret-value");
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (_) {
      // The Clipboard API needs a secure context (HTTPS or localhost); select and copy.
      input.select();
      document.execCommand("copy");
    }
    say("Key copied to the clipboard.");
  }

  async function createKey(ev) {
    ev.preventDefault();
    const body = { role: $("key-role").value };
    const desc = $("key-desc").value.trim();
    if (desc) body.description = desc;
    const res = await api("POST", "/admin/v1/keys", { body });
    showSecret(`New ${res.role} key ${res.key_id}`, `${res.key_id}:${res.key_secret}`, res.warning || "");
    $("key-desc").value = "";
    await loadKeys();
  }

  async function setKeyStatus(k, status) {
    if (status === "disabled") {
      const ok = await confirmAction({ title: "Disable key", text: `Disable ${k.key_id} (${k.role})? Clients using it get 401 at once.`, ok: "Disable" });
      if (!ok) return;
    }
    const res = await api("POST", `/admin/v1/keys/${encodeURIComponent(k.key_id)}/status`, { body: { status } });
    say(`Key ${k.key_id} is ${status}.${res.warning ? ` ${res.warning}` : ""}`);
    await loadKeys();
  }

  async function rotateKey(k) {
    const ok = await confirmAction({ title: "Rotate key", text: `Give ${k.key_id} a new secret? The old secret keeps working for the grace period only.`, ok: "Rotate" });
    if (!ok) return;
    const res = await api("POST", `/admin/v1/keys/${encodeURIComponent(k.key_id)}/rotate`, { body: {} });
    const until = res.old_secret_valid_until || res.grace_period_end;
    showSecret(`New secret of ${res.key_id}`, `${res.key_id}:${res.new_key_secret || res.key_secret}`,
      until ? `The old secret stops working at ${fmtTime(until)}.` : "");
    await loadKeys();
  }

  // --- backups -----------------------------------------------------------------------

  async function loadSnapshots() {
    const res = await api("GET", "/admin/v1/backups/snapshots?size=100");
    const items = [...res.items].sort((a, b) => b.created_at - a.created_at);
    const rows = items.map((s) => el("tr", {},
      el("td", {}, el("code", {}, s.snapshot_id)),
      el("td", {}, fmtTime(s.created_at)),
      el("td", {}, fmtBytes(s.size_bytes)),
      el("td", {}, String(s.session_count ?? "–")),
      el("td", {}, String(s.key_count ?? "–")),
      el("td", {}, s.type || ""),
      el("td", {}, s.description || ""),
      el("td", { className: "actions" },
        el("button", {
          type: "button", className: "secondary", "aria-label": `Download snapshot ${s.snapshot_id}`,
          on: { click: () => guarded(() => download(s)) },
        }, "Download"),
        el("button", {
          type: "button", className: "danger", "aria-label": `Restore snapshot ${s.snapshot_id}`,
          on: { click: () => guarded(() => restore({ snapshot_id: s.snapshot_id }, s.snapshot_id)) },
        }, "Restore"))));
    $("snapshot-table").tBodies[0].replaceChildren(...rows);
  }

  async function takeSnapshot(ev) {
    ev.preventDefault();
    const desc = $("snapshot-desc").value.trim();
    say("Taking a snapshot…");
    const res = await api("POST", "/admin/v1/backups/snapshots", { body: desc ? { description: desc } : {} });
    say(`Snapshot ${res.snapshot_id} taken (${fmtBytes(res.size_bytes)}, ${res.session_count} sessions).`);
    $("snapshot-desc").value = "";
    await loadSnapshots();
  }

  async function download(s) {
    // A link cannot carry the Authorization header: fetch the file, hand it over as a blob.
    say(`Downloading ${s.snapshot_id}…`);
    const resp = await api("GET", `/admin/v1/backups/snapshots/${encodeURIComponent(s.snapshot_id)}/file`, { raw: true });
    const blob = await resp.blob();
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: `${s.snapshot_id}.bak`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    say(`${s.snapshot_id}.bak downloaded (${fmtBytes(blob.size)}).`);
  }

  async function restore(body, what) {
    const ok = await confirmAction({
      title: "Restore",
      text: `Replace every session and key of this node with ${what}? The node answers 503 (maintenance) until the restore is done.`,
      typed: "RESTORE",
      ok: "Restore",
    });
    if (!ok) return;
    const job = await api("POST", "/admin/v1/backups/restores", { body });
    $("restore").hidden = false;
    $("restore-label").textContent = `Restore of ${what}`;
    await followRestore(job);
  }

  async function followRestore(job) {
    const bar = $("restore-progress");
    for (;;) {
      bar.value = job.progress || 0;
      $("restore-text").textContent = `${job.status} ${job.progress || 0}% ${job.message || ""}`;
      if (job.status !== "RUNNING") break;
      await new Promise((r) => setTimeout(r, 1000));
      try {
        job = await api("GET", `/admin/v1/backups/restores/${encodeURIComponent(job.job_id)}`);
      } catch (err) {
        if (err.status !== 503) throw err; // in maintenance: keep asking
      }
    }
    if (job.status === "FAILED") throw new ApiError(0, "RESTORE-FAILED", job.message || "restore failed");
    say(`Restore finished: ${job.message || job.status}.`);
    await loadSnapshots();
  }

  async function uploadRestore(ev) {
    ev.preventDefault();
    const file = $("upload-file").files[0];
    if (!file) {
      showError({ message: "Choose a .bak file first." });
      return;
    }
    const form = new FormData();
    form.append("file", file, file.name);
    await restore(form, file.name);
  }

  // --- events ------------------------------------------------------------------------

  /** base64url of a string, without padding (the WebSocket subprotocol carries the key). */
  function base64url(text) {
    const bytes = new TextEncoder().encode(text);
    let bin = "";
    for (const b of bytes) bin += String.fromCharCode(b);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // Close codes after which the stream is opened again from the last cursor: the node
  // going away, a dropped connection, and a client that fell behind.
  const RESUMABLE = new Set([1001, 1006, 4429]);
  const CURSOR_EXPIRED = 4410;

  function startEvents(cursor = null, attempt = 0) {
    stopEvents();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol.
    const protocols = ["tokmesh.events", `tokmesh.auth.${base64url(state.key)}`];
    const query = cursor ? `?cursor=${encodeURIComponent(cursor)}` : "";
    const socket = new WebSocket(`${scheme}//${location.host}/events${query}`, protocols);
    const stream = { socket, cursor, opened: false, attempt };
    state.events = stream;
    $("events-state").textContent = "Connecting…";
    socket.addEventListener("open", () => {
      stream.opened = true;
      $("events-state").textContent = "Live.";
    });
    socket.addEventListener("close", (ev) => {
      if (state.events !== stream) return; // closed on purpose, or replaced
      if (ev.code === 4401) {
        // The key was disabled, rotated away or removed while the stream was open.
        logout(`event stream closed: ${ev.reason || "API key no longer valid"}`);
        return;
      }
      $("events-state").textContent = `Not connected (close code ${ev.code}${ev.reason ? `: ${ev.reason}` : ""}).`;
      let from = stream.cursor;
      let attempt = 0;
      if (!stream.opened) {
        // The handshake failed, and a browser is not told why: a first connection is not
        // retried (the node refused it); a reconnection is, a few times (a restarting node).
        if (stream.attempt === 0 || stream.attempt >= 5) {
          $("events-state").textContent = "The node refused the event stream (it needs the native HTTP engine and a key allowed to read events).";
          return;
        }
        attempt = stream.attempt + 1;
      } else if (RESUMABLE.has(ev.code) || ev.code === CURSOR_EXPIRED) {
        // An expired cursor cannot be resumed: start again from now (events in between
        // are not shown).
        if (ev.code === CURSOR_EXPIRED) from = null;
        attempt = 1;
      } else {
        return;
      }
      $("events-state").textContent += " Reconnecting in 2 s…";
      setTimeout(() => {
        if (state.events === stream && state.key) startEvents(from, attempt);
      }, 2000);
    });
    socket.addEventListener("message", (ev) => {
      let event;
      try {
        event = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      stream.cursor = event.cursor ?? stream.cursor;
      // Paused: the cursor still advances, the rows are not shown.
      if (!state.eventsPaused) addEvent(event);
    });
  }

  function stopEvents() {
    const stream = state.events;
    state.events = null; // first, so its close handler does not reconnect
    if (stream) stream.socket.close(1000);
  }

  function eventShown(event) {
    const type = $("events-type").value.trim();
    const user = $("events-user").value.trim();
    return (!type || event.type === type) && (!user || event.user_id === user);
  }

  function addEvent(event) {
    const row = el("tr", {},
      el("td", {}, fmtTime(typeof event.at === "number" ? event.at : Date.parse(event.at))),
      el("td", {}, event.type), el("td", {}, el("code", {}, event.session_id || "")),
      el("td", {}, event.user_id || ""), el("td", {}, event.device_id || ""),
      el("td", {}, event.by || ""), el("td", {}, String(event.cursor ?? "")));
    row.dataset.type = event.type || "";
    row.dataset.user = event.user_id || "";
    row.hidden = !eventShown(event);
    const body = $("events-table").tBodies[0];
    body.prepend(row);
    while (body.rows.length > MAX_EVENTS) body.deleteRow(-1);
  }

  function refilterEvents() {
    for (const row of $("events-table").tBodies[0].rows) {
      row.hidden = !eventShown({ type: row.dataset.type, user_id: row.dataset.user });
    }
  }

  // --- wiring ------------------------------------------------------------------------

  function init() {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("login-key").value.trim();
      $("login-key").value = "";
      guarded(() => login(key).catch((err) => {
        if (err.status === 403) err = new ApiError(403, err.code, `${err.message} (this key is neither admin nor metrics)`);
        state.key = null;
        sessionStorage.removeItem(KEY_STORE);
        throw err;
      }));
    });
    $("logout").addEventListener("click", () => logout());
    $("error-close").addEventListener("click", clearError);
    $("overview-refresh").addEventListener("click", () => guarded(refreshOverview));
    $("session-search").addEventListener("submit", (ev) => {
      ev.preventDefault();
      guarded(searchSessions);
    });
    $("keep-one").addEventListener("change", () => {
      $("keep-which").disabled = !$("keep-one").checked;
    });
    $("revoke-user").addEventListener("click", () => guarded(revokeUser));
    $("key-create").addEventListener("submit", (ev) => guarded(() => createKey(ev)));
    $("secret-copy").addEventListener("click", () => guarded(copySecret));
    $("secret-hide").addEventListener("click", hideSecret);
    $("snapshot-form").addEventListener("submit", (ev) => guarded(() => takeSnapshot(ev)));
    $("upload-form").addEventListener("submit", (ev) => guarded(() => uploadRestore(ev)));
    $("events-type").addEventListener("change", refilterEvents);
    $("events-user").addEventListener("input", refilterEvents);
    $("events-toggle").addEventListener("click", () => {
      state.eventsPaused = !state.eventsPaused;
      $("events-toggle").textContent = state.eventsPaused ? "Resume" : "Pause";
      if (!state.events && state.key) startEvents();
    });
    $("events-clear").addEventListener("click", () => $("events-table").tBodies[0].replaceChildren());
    window.addEventListener("hashchange", route);
    const saved = sessionStorage.getItem(KEY_STORE);
    if (saved) guarded(() => login(saved));
    else route();
  }

  init();
})();
