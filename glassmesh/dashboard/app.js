// The glassmesh dashboard: reads the control plane's operator API with the session cookie, and
// redraws without a reload. No library, nothing from another origin: plain DOM and SVG.
//
//   /v1/status  every 2 s   hosts, snapshot versions, rejects, held changes
//   /v1/links   every 2 s   per-link rate, success, latency, errors by hop (from every proxy)
//   /v1/hosts, /v1/config every 5 s   certificate expiry; the services and who calls whom
//   /v1/tap?from=A&to=B     on a link's page: NDJSON, one JSON event per line, as requests cross
"use strict";

const S = {
  status: null, hosts: null, config: null,
  links: [], linksNote: "",            // normalized links; why there are none, when there are none
  history: new Map(),                  // "a\u0000b" -> [{t, p50, p99, rate, success}]
  tap: null,                           // {src, dst, ctrl, events, errors, note}
  loggedOut: false, lastOk: 0, failing: "",
};
const HISTORY_POINTS = 300;
const TAP_ROWS = 50;

// ------------------------------------------------------------------ helpers

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                                       "'": "&#39;"}[c]));
}
function $(id) { return document.getElementById(id); }
// Replace a section only when what it shows changed: a steady section keeps its text selection and hover.
const shown = new Map();
function setHTML(id, html) {
  if (shown.get(id) !== html) { $(id).innerHTML = html; shown.set(id, html); }
}
function num(v) { const n = Number(v); return v === null || v === undefined || v === "" || !isFinite(n) ? null : n; }
function pick(o, names) {
  for (const n of names) { if (o && o[n] !== undefined && o[n] !== null) return o[n]; }
  return undefined;
}
// A count, or the sum of a {reason: count} object.
function count(v) {
  if (v && typeof v === "object") return Object.values(v).reduce((s, n) => s + (num(n) || 0), 0);
  return num(v);
}
function fmtRate(r) { return r === null ? "-" : `${r.toFixed(r < 10 ? 2 : 1)}/s`; }
function fmtPct(s) { return s === null ? "-" : `${(s * 100).toFixed(s >= 0.9995 ? 0 : 1)}%`; }
function fmtMs(ms) { return ms === null ? "-" : ms < 10 ? `${ms.toFixed(2)} ms` : `${ms.toFixed(0)} ms`; }
function fmtAge(s) {
  if (s === null || s === undefined) return "-";
  return s < 120 ? `${Math.round(s)}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${(s / 3600).toFixed(1)}h`;
}
function successClass(s) { return s === null ? "idle" : s >= 0.99 ? "ok" : s >= 0.9 ? "warn" : "bad"; }
function linkKey(a, b) { return `${a}\u0000${b}`; }
function linkHref(a, b) { return `#/link/${encodeURIComponent(a)}/${encodeURIComponent(b)}`; }

class LoggedOut extends Error {}

// The session is the cookie (HttpOnly) and this key: the login hands it over in the fragment, once, and
// this origin's storage keeps it (another port on this host gets the cookie, never the key).
const KEY_STORE = "glassmesh_session_key";
(() => {
  const m = location.hash.match(/^#key=([A-Za-z0-9_-]+)$/);
  if (m) {
    localStorage.setItem(KEY_STORE, m[1]);
    history.replaceState(null, "", `${location.pathname}#/`);
  }
})();
function apiFetch(path, opts = {}) {
  const headers = {"glassmesh-session-key": localStorage.getItem(KEY_STORE) || ""};
  return fetch(path, {credentials: "same-origin", cache: "no-store", headers, ...opts});
}

async function getJSON(path) {
  const r = await apiFetch(path);
  if (r.status === 401 || r.status === 403) throw new LoggedOut(path);
  if (!r.ok) {
    const e = new Error(`${path}: HTTP ${r.status}`);
    e.status = r.status;
    throw e;
  }
  return r.json();
}

// Each source refreshes on its own clock; a failure shows in the banner and is tried again.
function every(ms, name, fn) {
  const tick = async () => {
    if (S.loggedOut) return;
    try {
      await fn();
      S.lastOk = Date.now();
      if (S.failing === name) S.failing = "";
    } catch (e) {
      if (e instanceof LoggedOut) { S.loggedOut = true; render(); return; }
      S.failing = name;
      S.failReason = String(e.message || e);
    }
    render();
    setTimeout(tick, ms);
  };
  tick();
}

// ------------------------------------------------------------------ links

// One link's figures, whatever the names /v1/links gives them (per host and side, or already per link).
function normLink(l) {
  const p = (q) => {
    const ms = num(pick(l, [`${q}_ms`, `latency_${q}_ms`]));
    if (ms !== null) return ms;
    const s = num(pick(l, [`${q}_s`, q]));
    return s === null ? null : s * 1000;
  };
  let success = num(pick(l, ["success", "success_rate", "success_ratio"]));
  if (success !== null && success > 1) success /= 100;
  return {
    src: String(pick(l, ["source", "from", "src"]) ?? "?"), dst: String(pick(l, ["destination", "to", "dst"]) ?? "?"),
    side: pick(l, ["side"]), host: pick(l, ["host"]),
    rate: num(pick(l, ["rate_rps", "rate", "rps", "req_per_s", "requests_per_s", "rate_per_s"])), success,
    p50: p("p50"), p99: p("p99"),
    mtls: pick(l, ["mtls", "tls_version", "tls"]),
    retries: count(pick(l, ["retries", "retries_per_s", "retry_rate"])),
    errors: pick(l, ["mesh_errors", "errors_by_hop", "errors"]),
  };
}

// The calling side's count when the proxies give both sides; rates summed over hosts, success by weight.
function mergeLinks(raw) {
  const all = raw.map(normLink);
  const hasOut = new Set(all.filter((l) => l.side === "outbound").map((l) => linkKey(l.src, l.dst)));
  const out = new Map();
  for (const l of all) {
    const k = linkKey(l.src, l.dst);
    if (l.side && l.side !== "outbound" && hasOut.has(k)) continue;
    const m = out.get(k);
    if (!m) { out.set(k, {...l, errors: errorList(l.errors)}); continue; }
    const r1 = m.rate || 0, r2 = l.rate || 0;
    if (m.success !== null || l.success !== null) {
      m.success = r1 + r2 > 0 ? ((m.success ?? 1) * r1 + (l.success ?? 1) * r2) / (r1 + r2) : (m.success ?? l.success);
    }
    m.rate = m.rate === null && l.rate === null ? null : r1 + r2;
    m.p50 = Math.max(m.p50 ?? -1, l.p50 ?? -1); if (m.p50 < 0) m.p50 = null;
    m.p99 = Math.max(m.p99 ?? -1, l.p99 ?? -1); if (m.p99 < 0) m.p99 = null;
    m.retries = m.retries === null && l.retries === null ? null : (m.retries || 0) + (l.retries || 0);
    m.errors = m.errors.concat(errorList(l.errors));
  }
  return [...out.values()];
}

// Mesh errors by hop as [{hop, reason, count}], from an object {hop: n} / {hop: {reason: n}} or a list.
function errorList(e) {
  if (!e) return [];
  if (Array.isArray(e)) {
    return e.map((x) => ({hop: pick(x, ["hop", "side", "by", "host"]) ?? "?", reason: pick(x, ["reason", "error"]) ?? "",
                          count: num(pick(x, ["count", "n", "total", "rate"])) ?? 1}));
  }
  const out = [];
  for (const [hop, v] of Object.entries(e)) {
    if (v && typeof v === "object") {
      for (const [reason, n] of Object.entries(v)) out.push({hop, reason, count: num(n) ?? 0});
    } else {
      out.push({hop, reason: "", count: num(v) ?? 0});
    }
  }
  return out;
}

async function pollLinks() {
  let doc;
  try {
    doc = await getJSON("/v1/links");
  } catch (e) {
    if (e.status === 404) {
      S.links = [];
      S.linksNote = "this control plane serves no /v1/links yet: per-link figures need a newer release";
      return;
    }
    throw e;
  }
  const raw = Array.isArray(doc) ? doc : (doc.links || []);
  S.links = mergeLinks(raw);
  const missing = Object.entries((doc && doc.missing) || {}).map(([h, why]) => `${h} (${why})`);
  S.linksNote = (S.links.length ? "" : "no traffic seen on any link yet") +
    (missing.length ? `${S.links.length ? "" : "; "}not counted: ${missing.join(", ")}` : "");
  const now = Date.now();
  for (const l of S.links) {
    const k = linkKey(l.src, l.dst);
    const h = S.history.get(k) || [];
    h.push({t: now, p50: l.p50, p99: l.p99, rate: l.rate, success: l.success});
    if (h.length > HISTORY_POINTS) h.splice(0, h.length - HISTORY_POINTS);
    S.history.set(k, h);
  }
}

// ------------------------------------------------------------------ the overview

function services() {
  const names = new Set();
  const calls = [];
  const doc = S.config && S.config.doc;
  for (const s of (doc && doc.services) || []) {
    names.add(s.name);
    for (const c of s.calls || []) calls.push([s.name, c]);
  }
  for (const l of S.links) { names.add(l.src); names.add(l.dst); }
  return {names: [...names].sort(), calls};
}

function renderGraph() {
  const {names, calls} = services();
  const edges = new Map();
  for (const [a, b] of calls) edges.set(linkKey(a, b), {src: a, dst: b, link: null});
  for (const l of S.links) edges.set(linkKey(l.src, l.dst), {src: l.src, dst: l.dst, link: l});
  if (!names.length) { setHTML("graph", '<p class="empty">no services in the config yet</p>'); return; }
  // Columns by depth: a service sits one column right of the deepest service that calls it.
  const depth = new Map(names.map((n) => [n, 0]));
  for (let i = 0; i < names.length; i++) {
    for (const e of edges.values()) {
      if (e.src !== e.dst && depth.get(e.dst) <= depth.get(e.src) && depth.get(e.src) < names.length - 1) {
        depth.set(e.dst, depth.get(e.src) + 1);
      }
    }
  }
  const cols = [];
  for (const n of names) (cols[depth.get(n)] ||= []).push(n);
  const W = 150, H = 44, GX = 170, GY = 40;
  const pos = new Map();
  const rows = Math.max(...cols.map((c) => (c ? c.length : 0)));
  cols.forEach((col, x) => (col || []).forEach((n, y) => {
    const off = (rows - col.length) * (H + GY) / 2;
    pos.set(n, {x: 20 + x * (W + GX), y: 20 + off + y * (H + GY)});
  }));
  const width = 40 + cols.length * (W + GX) - GX, height = 40 + rows * (H + GY) - GY;
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`,
    '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto">' +
    '<path d="M0,0L10,5L0,10z" fill="#8896a5"/></marker></defs>'];
  let i = 0;
  for (const e of edges.values()) {
    const a = pos.get(e.src), b = pos.get(e.dst);
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    const bend = (i++ % 2 ? 1 : -1) * (a.x === b.x ? 40 : 0);
    const mx = (x1 + x2) / 2 + bend, my = (y1 + y2) / 2;
    const l = e.link;
    const cls = l && l.rate ? successClass(l.success) : "idle";
    const label = l && l.rate !== null ? `${fmtRate(l.rate)} · ${fmtPct(l.success)}` : "no traffic";
    parts.push(`<a href="${linkHref(e.src, e.dst)}" class="edge ${cls}" data-link="${esc(e.src)}->${esc(e.dst)}">` +
      `<title>${esc(e.src)} → ${esc(e.dst)}: ${esc(label)}</title>` +
      `<path d="M${x1},${y1} Q${mx},${my} ${x2},${y2}" marker-end="url(#arrow)"/>` +
      `<text x="${mx}" y="${my - 6}" text-anchor="middle" class="edge-label">${esc(label)}</text></a>`);
  }
  for (const n of names) {
    const p = pos.get(n);
    const inRate = S.links.filter((l) => l.dst === n).reduce((s, l) => s + (l.rate || 0), 0);
    parts.push(`<g class="node" data-service="${esc(n)}"><rect x="${p.x}" y="${p.y}" width="${W}" height="${H}" rx="6"/>` +
      `<text class="name" x="${p.x + W / 2}" y="${p.y + 18}" text-anchor="middle">${esc(n)}</text>` +
      `<text x="${p.x + W / 2}" y="${p.y + 35}" text-anchor="middle" class="muted">` +
      `${inRate ? esc(fmtRate(inRate)) + " in" : ""}</text></g>`);
  }
  parts.push("</svg>");
  setHTML("graph", parts.join("") + (S.linksNote ? `<p class="empty">${esc(S.linksNote)}</p>` : ""));
}

function renderMatrix() {
  const byKey = new Map(S.links.map((l) => [linkKey(l.src, l.dst), l]));
  const srcs = [...new Set(S.links.map((l) => l.src))].sort();
  const dsts = [...new Set(S.links.map((l) => l.dst))].sort();
  if (!srcs.length) { setHTML("matrix", `<p class="empty">${esc(S.linksNote || "no links yet")}</p>`); return; }
  let h = "<table><thead><tr><th>caller \\ callee</th>" + dsts.map((d) => `<th>${esc(d)}</th>`).join("") +
    "</tr></thead><tbody>";
  for (const s of srcs) {
    h += `<tr><th>${esc(s)}</th>`;
    for (const d of dsts) {
      const l = byKey.get(linkKey(s, d));
      h += l ? `<td class="${successClass(l.success)}"><a class="matrix-link" href="${linkHref(s, d)}" ` +
        `data-link="${esc(s)}->${esc(d)}">${esc(fmtRate(l.rate))} · ${esc(fmtPct(l.success))}` +
        `<br><span class="muted">p99 ${esc(fmtMs(l.p99))}</span></a></td>` : '<td class="muted">·</td>';
    }
    h += "</tr>";
  }
  setHTML("matrix", h + "</tbody></table>");
}

function renderHeld() {
  const st = S.status;
  if (!st) return;
  const held = st.held || [];
  setHTML("held", held.length
    ? "<table><thead><tr><th>held change</th><th>why</th><th>since</th></tr></thead><tbody>" +
      held.map((c) => `<tr class="bad"><td>${esc(c.service)}</td><td>${esc(c.cause || c.reason || "")}</td>` +
        `<td>${esc(fmtAge(c.since_s))}</td></tr>`).join("") +
      "</tbody></table><p class=\"muted\">let one through with <code>glassmesh release SERVICE</code></p>"
    : '<p class="empty">no held changes</p>');
  const rejects = [];
  for (const h of st.hosts || []) for (const r of h.recent_rejects || []) rejects.push({host: h.name, ...r});
  rejects.sort((a, b) => (b.at || 0) - (a.at || 0));
  setHTML("rejects", rejects.length
    ? "<table><thead><tr><th>host</th><th>rejected</th><th>reason</th></tr></thead><tbody>" +
      rejects.slice(0, 10).map((r) => `<tr class="${r.past ? "muted" : "warn"}"><td>${esc(r.host)}</td>` +
        `<td>v${esc(r.version)}${r.past ? " (past)" : ""}</td><td>${esc(r.reason)}</td></tr>`).join("") +
      "</tbody></table>"
    : '<p class="empty">no rejected snapshots</p>');
}

function renderHosts() {
  const st = S.status;
  if (!st) return;
  const certs = new Map(((S.hosts && S.hosts.hosts) || []).map((h) => [h.name, h.cert_not_after]));
  const now = Date.now() / 1000;
  let h = "<table><thead><tr><th>host</th><th>running</th><th>latest</th><th>snapshot age</th><th>last seen</th>" +
    "<th>proxy</th><th>certificate expires</th><th>last reject</th></tr></thead><tbody>";
  for (const x of st.hosts || []) {
    const exp = certs.get(x.name);
    const left = exp ? exp - now : null;
    const expCls = left === null ? "muted" : left < 3600 ? "bad" : left < 4 * 3600 ? "warn" : "ok";
    const proxy = x.proxy ? `${x.proxy.build || ""}${x.proxy.wire ? " (wire " + x.proxy.wire + ")" : ""}` : "-";
    const rej = x.last_reject && !x.last_reject.past ? `v${x.last_reject.version}: ${x.last_reject.reason}` : "";
    h += `<tr data-host="${esc(x.name)}"><td>${esc(x.name)}</td>` +
      `<td class="num ${x.in_sync ? "ok" : "warn"}">${esc(x.running || "-")}</td><td class="num">${esc(x.latest)}</td>` +
      `<td>${esc(fmtAge(x.snapshot_age_s))}</td><td>${esc(fmtAge(x.last_seen_s))}</td><td>${esc(proxy)}</td>` +
      `<td class="${expCls}">${exp ? esc(new Date(exp * 1000).toISOString().replace(".000", "")) +
        " (in " + esc(fmtAge(left)) + ")" : "-"}</td><td class="warn">${esc(rej)}</td></tr>`;
  }
  h += "</tbody></table>";
  const sick = st.unhealthy || [];
  h += sick.length
    ? "<p>unhealthy instances:</p><ul>" + sick.map((i) => `<li class="warn">${esc(i.service)} ` +
      `${esc(i.host)}/${esc(i.address)}: ${esc(i.detail)}</li>`).join("") + "</ul>"
    : '<p class="empty">every instance is healthy</p>';
  if ((st.drained || []).length) h += `<p>drained on purpose: ${esc(st.drained.join(", "))}</p>`;
  setHTML("hosts", h);
}

// ------------------------------------------------------------------ a link's page

function route() {
  const m = location.hash.match(/^#\/link\/([^/]+)\/([^/]+)$/);
  return m ? {src: decodeURIComponent(m[1]), dst: decodeURIComponent(m[2])} : null;
}

function renderLink(r) {
  const l = S.links.find((x) => x.src === r.src && x.dst === r.dst);
  $("link-title").textContent = `${r.src} → ${r.dst}`;
  setHTML("link-figures", l
    ? `<p class="figures"><span>rate <b>${esc(fmtRate(l.rate))}</b></span>` +
      `<span>success <b class="${successClass(l.success)}">${esc(fmtPct(l.success))}</b></span>` +
      `<span>p50 <b>${esc(fmtMs(l.p50))}</b></span><span>p99 <b>${esc(fmtMs(l.p99))}</b></span>` +
      `<span>mTLS <b>${esc(l.mtls === true ? "yes" : l.mtls === false ? "no" : l.mtls ?? "-")}</b></span>` +
      (l.retries !== null ? `<span>retries <b>${esc(l.retries)}</b></span>` : "") + "</p>"
    : `<p class="empty">${esc(S.linksNote || "no traffic seen on this link yet")}</p>`);
  renderLatency(S.history.get(linkKey(r.src, r.dst)) || []);
  const t = S.tap;
  const errs = (l ? l.errors : []).filter((e) => e.count);
  let h = errs.length
    ? "<table><thead><tr><th>hop</th><th>error</th><th>count</th></tr></thead><tbody>" +
      errs.map((e) => `<tr><td>${esc(e.hop)}</td><td>${esc(e.reason)}</td><td class="num">${esc(e.count)}</td></tr>`)
        .join("") + "</tbody></table>"
    : "";
  const recent = t ? t.errors : [];
  h += recent.length
    ? "<table><thead><tr><th>when</th><th>request</th><th>status</th><th>hop that made it</th><th>why</th>" +
      "<th>seen at</th></tr></thead><tbody>" + recent.map((e) => `<tr class="bad error-row"><td>${esc(e.when)}</td>` +
        `<td>${esc(e.method)} ${esc(e.path)}</td><td>${esc(e.status)}</td><td>${esc(e.hop)}</td><td>${esc(e.why)}</td>` +
        `<td>${esc(e.where)}</td></tr>`).join("") + "</tbody></table>"
    : '<p class="empty">no errors seen on this link while this page was open</p>';
  setHTML("link-errors", h);
  $("tap-state").textContent = t ? t.note + (t.dropped ? ` · ${t.dropped} not shown (over the tap's rate)` : "") : "";
  setHTML("tap", t && t.events.length
    ? "<table><thead><tr><th>when</th><th>method</th><th>path</th><th>status</th><th>time</th><th>where</th></tr></thead>" +
      "<tbody id=\"tap-rows\">" + t.events.map((e) => `<tr class="tap-row ${e.status >= 500 ? "bad" : ""}" ` +
        `data-status="${esc(e.status)}"><td>${esc(e.when)}</td><td>${esc(e.method)}</td><td>${esc(e.path)}</td>` +
        `<td>${esc(e.status)}</td><td class="num">${esc(fmtMs(num(e.duration_ms)))}</td><td>${esc(e.where)}</td></tr>`)
        .join("") + "</tbody></table>"
    : '<p class="empty">waiting for requests on this link ...</p>');
}

function renderLatency(h) {
  const pts = h.filter((p) => p.p50 !== null || p.p99 !== null);
  if (pts.length < 2) { setHTML("latency", '<p class="empty">collecting points ...</p>'); return; }
  const W = 800, H = 180, L = 50, B = 20;
  const t0 = pts[0].t, t1 = pts[pts.length - 1].t;
  const top = Math.max(1, ...pts.map((p) => Math.max(p.p99 ?? 0, p.p50 ?? 0))) * 1.1;
  const x = (t) => L + (W - L - 10) * (t1 === t0 ? 1 : (t - t0) / (t1 - t0));
  const y = (v) => H - B - (H - B - 10) * (v / top);
  const line = (k) => pts.filter((p) => p[k] !== null).map((p) => `${x(p.t).toFixed(1)},${y(p[k]).toFixed(1)}`).join(" ");
  setHTML("latency", `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="100%" height="${H}">` +
    `<line class="axis" x1="${L}" y1="${H - B}" x2="${W}" y2="${H - B}"/><line class="axis" x1="${L}" y1="10" x2="${L}" y2="${H - B}"/>` +
    `<text x="${L - 6}" y="14" text-anchor="end">${esc(fmtMs(top))}</text><text x="${L - 6}" y="${H - B}" text-anchor="end">0</text>` +
    `<text x="${L}" y="${H - 4}">${esc(Math.round((t1 - t0) / 1000))} s</text>` +
    `<polyline class="p99" points="${line("p99")}"/><polyline class="p50" points="${line("p50")}"/>` +
    `<text x="${W - 120}" y="20" class="warn">— p99</text><text x="${W - 60}" y="20">— p50</text></svg>`);
}

function tapEvent(ev) {
  const at = num(pick(ev, ["ts", "at", "time", "start"]));
  const when = at ? new Date(at > 1e12 ? at : at * 1000).toISOString().slice(11, 23) : new Date().toISOString().slice(11, 23);
  const status = num(ev.status) ?? 0;
  const headers = ev.response_headers || ev.headers || {};
  const hdr = (n) => (Array.isArray(headers) ? (headers.find((x) => String(x[0]).toLowerCase() === n) || [])[1]
                                             : headers[n]);
  const why = pick(ev, ["error", "mesh_error", "reason"]) ?? hdr("glassmesh-error") ?? "";
  const hop = pick(ev, ["hop", "error_hop", "made_by"]) ??
    (why ? [ev.host, ev.side].filter(Boolean).join("/") : "") ?? "";
  return {at: at || Date.now() / 1000, when, status, method: ev.method ?? "", path: ev.path ?? "", duration_ms: ev.duration_ms, why,
          hop: hop || (status >= 500 ? "the app (no mesh error)" : ""),
          where: [ev.host, ev.side].filter(Boolean).join(" ")};
}

async function runTap(r) {
  const ctrl = new AbortController();
  const tap = S.tap = {src: r.src, dst: r.dst, ctrl, events: [], errors: [], note: "connecting ..."};
  while (S.tap === tap && !S.loggedOut) {
    try {
      const q = `from=${encodeURIComponent(r.src)}&to=${encodeURIComponent(r.dst)}`;
      const resp = await apiFetch(`/v1/tap?${q}`, {signal: ctrl.signal});
      if (resp.status === 401 || resp.status === 403) { S.loggedOut = true; render(); return; }
      if (!resp.ok) {
        let why = `HTTP ${resp.status}`;
        try { why = (await resp.json()).error || why; } catch (e) { /* not JSON */ }
        tap.note = resp.status === 404 ? "this control plane has no tap yet" : `tap: ${why}`;
        render();
        if (resp.status === 404) return;
      } else {
        tap.note = "live";
        render();  // the first line names the proxies
        const reader = resp.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          buf += dec.decode(value, {stream: true});
          let i;
          while ((i = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, i).trim();
            buf = buf.slice(i + 1);
            if (!line) continue;
            let ev;
            try { ev = JSON.parse(line); } catch (e) { continue; }
            if (ev.tap) {  // the first line: which proxies are tapped
              const missing = ev.tap.not_connected || [];
              tap.note = `live at ${(ev.tap.hosts || []).join(", ")}` +
                (missing.length ? ` (not connected: ${missing.join(", ")})` : "");
              continue;
            }
            if (ev.dropped) { tap.dropped = (tap.dropped || 0) + ev.dropped; continue; }
            if (ev.error && !ev.method) { tap.note = `tap: ${ev.error} (${ev.host || "?"})`; continue; }
            if (!ev.method) continue;
            const e = tapEvent(ev);
            tap.events.push(e);
            tap.events.sort((x, y) => y.at - x.at);  // each proxy sends in batches: newest first across them
            if (tap.events.length > TAP_ROWS) tap.events.length = TAP_ROWS;
            if (e.status >= 500 || e.why) {
              tap.errors.unshift(e);
              if (tap.errors.length > 20) tap.errors.length = 20;
            }
          }
          if (S.tap === tap) render();
        }
        tap.note = "reconnecting ...";
      }
    } catch (e) {
      if (e.name === "AbortError") return;
      tap.note = `tap interrupted (${e.message || e}): reconnecting ...`;
    }
    await new Promise((res) => setTimeout(res, 1000));
  }
}

// ------------------------------------------------------------------ the whole page

function render() {
  if (S.loggedOut) {
    const b = $("banner");
    b.hidden = false;
    b.className = "bad";
    b.textContent = "No dashboard session here, or it has ended: run `glassmesh dashboard` for a login link.";
    $("logout").hidden = true;
    return;
  }
  const st = S.status;
  if (st) {
    const behind = (st.hosts || []).filter((h) => !h.in_sync).length;
    $("summary").textContent = `config version ${st.config_version} · ${(st.hosts || []).length} hosts` +
      (behind ? ` (${behind} behind)` : "") + ` · ${S.links.length} links · replica ${st.replica}`;
  }
  $("updated").textContent = S.lastOk ? `updated ${new Date(S.lastOk).toISOString().slice(11, 19)} UTC` : "";
  const banner = $("banner");
  banner.hidden = !S.failing;
  banner.className = "";
  if (S.failing) banner.textContent = `cannot read ${S.failing} from the control plane: ${S.failReason}; trying again`;
  const r = route();
  $("overview").hidden = !!r;
  $("link-page").hidden = !r;
  if (r) { renderLink(r); return; }
  renderGraph();
  renderMatrix();
  renderHeld();
  renderHosts();
}

function onRoute() {
  const r = route();
  if (S.tap && (!r || S.tap.src !== r.src || S.tap.dst !== r.dst)) { S.tap.ctrl.abort(); S.tap = null; }
  if (r && !S.tap) runTap(r);
  render();
}

async function logOut() {
  try { await apiFetch("/dashboard/logout", {method: "POST"}); } catch (e) { /* the session is dropped here anyway */ }
  localStorage.removeItem(KEY_STORE);
  if (S.tap) { S.tap.ctrl.abort(); S.tap = null; }
  S.loggedOut = true;
  render();
}

window.addEventListener("hashchange", onRoute);
document.addEventListener("DOMContentLoaded", () => {
  every(2000, "/v1/status", async () => { S.status = await getJSON("/v1/status"); });
  every(2000, "/v1/links", pollLinks);
  every(5000, "/v1/config", async () => { S.config = await getJSON("/v1/config"); });
  every(5000, "/v1/hosts", async () => { S.hosts = await getJSON("/v1/hosts"); });
  $("logout").addEventListener("click", logOut);
  onRoute();
});
