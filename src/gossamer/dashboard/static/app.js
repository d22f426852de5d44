// Gossamer dashboard: reads the control plane's REST API and draws it. No framework,
// no build step; every name from the API reaches the page through textContent.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 5000;
const TOKEN_KEY = "gossamer.adminToken";

const state = { timer: null, window: "1m", groupBy: null, applied: new Map() };

// Uncaught errors are kept on the page too, where a headless browser test can read them.
function noteError(message) {
  const seen = document.body.getAttribute("data-js-errors");
  document.body.setAttribute("data-js-errors", (seen ? seen + "\n" : "") + message);
}
window.addEventListener("error", (e) => noteError(String(e.message)));
window.addEventListener("unhandledrejection", (e) => noteError(String(e.reason)));

// ---- small helpers -------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "onclick") el.addEventListener("click", v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

// The token's name and scope, from /v1/whoami: a read token reads (needed when the
// control plane runs with --auth-reads) but is not offered the buttons that change things.
const WHO_KEY = "gossamer.tokenWho";
function who() {
  try { return JSON.parse(sessionStorage.getItem(WHO_KEY) || "null"); } catch (e) { return null; }
}
function isAdmin() {
  const me = who();
  return Boolean(token()) && me !== null && me.scope === "admin";
}

async function api(path, options) {
  const headers = { Accept: "application/json", ...((options || {}).headers || {}) };
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const resp = await fetch(path, { ...(options || {}), headers });
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { raw: text }; }
  if (!resp.ok) {
    const message = body && body.error ? body.error.message : resp.status + " " + resp.statusText;
    const err = new Error(message);
    err.status = resp.status;
    err.details = (body && body.error && body.error.details) || [];
    throw err;
  }
  return body;
}

async function optional(path) {
  // Kinds that a control plane may not know yet (policies come later) read as empty.
  try { return await api(path); } catch (e) { if (e.status === 404) return { items: [] }; throw e; }
}

function pct(rate) { return rate === null || rate === undefined ? "–" : (rate * 100).toFixed(2) + "%"; }
function num(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
function ms(v) { return v === null || v === undefined ? "–" : num(v, v < 10 ? 2 : 1) + " ms"; }
function rateClass(rate) {
  if (rate === null || rate === undefined) return "";
  return rate >= 0.99 ? "good" : rate >= 0.95 ? "warn" : "bad";
}
function rateColor(rate) {
  if (rate === null || rate === undefined) return "#adb5bd";
  return rate >= 0.99 ? "#2f9e44" : rate >= 0.95 ? "#e67700" : "#e03131";
}
function left(iso) {
  if (!iso) return { text: "–", cls: "" };
  const secs = (new Date(iso).getTime() - Date.now()) / 1000;
  if (secs <= 0) return { text: "expired", cls: "bad" };
  const d = Math.floor(secs / 86400), hr = Math.floor((secs % 86400) / 3600),
    m = Math.floor((secs % 3600) / 60);
  const text = d ? `${d}d ${hr}h` : hr ? `${hr}h ${m}m` : `${m}m`;
  return { text, cls: secs < 8 * 3600 ? "warn" : "good" };
}
function svcHref(ns, name) { return `#/service/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`; }
function staleBadge(row) { return row.stale ? h("span", { class: "badge stale", title: "a proxy of this service did not answer its last scrape" }, "stale") : null; }

function banner(message, kind) {
  const el = document.getElementById("banner");
  if (!message) { el.hidden = true; return; }
  el.hidden = false;
  el.className = "banner " + (kind || "");
  el.textContent = message;
}

function panel(title, ...body) {
  return h("section", { class: "panel" }, h("h2", {}, title), ...body);
}

// `other` is the second success rate a row has (decision 0082): for a service, what its
// callers got ("effective"); for an edge, every try ("actual"). Retries sit between them.
function metricsTable(rows, first, other) {
  const second = other === "actual" ? ["Actual", "actual_success_rate", "every try, retries included"]
    : ["Effective", "effective_success_rate", "what callers got, once per call"];
  const head = h("tr", {}, first.map((c) => h("th", {}, c.title)),
    h("th", { class: "num" }, "Success"),
    h("th", { class: "num", title: second[2] }, second[0]),
    h("th", { class: "num", title: "tries sent again by a retry policy" }, "Retries"),
    ["RPS", "P50", "P95", "P99", "Requests"].map((t) => h("th", { class: "num" }, t)), h("th", {}, ""));
  const body = rows.map((r) => h("tr", {},
    first.map((c) => h("td", { class: "name" }, c.cell(r))),
    h("td", { class: "num " + rateClass(r.success_rate) }, pct(r.success_rate)),
    h("td", { class: "num " + rateClass(r[second[1]]) }, pct(r[second[1]])),
    h("td", { class: "num" }, r.retries === null || r.retries === undefined ? "–" : String(r.retries)),
    h("td", { class: "num" }, num(r.rps, 1)),
    h("td", { class: "num" }, ms(r.p50_ms)),
    h("td", { class: "num" }, ms(r.p95_ms)),
    h("td", { class: "num" }, ms(r.p99_ms)),
    h("td", { class: "num" }, r.requests),
    h("td", {}, staleBadge(r))));
  if (!rows.length) return h("p", { class: "muted" }, "No traffic in this window.");
  return h("table", {}, h("thead", {}, head), h("tbody", {}, body));
}

// ---- topology ------------------------------------------------------------------

function layers(nodes, edges) {
  // Callers to the left of what they call: each node's column is the longest chain of
  // callers before it. A cycle is cut where a depth-first walk from the nodes nobody
  // calls closes it, so calls both ways (A ⇄ B) cost one column, not one per node.
  const out = new Map(nodes.map((n) => [n, []]));
  const called = new Set();
  for (const e of edges) {
    if (e.src === e.dst || !out.has(e.src) || !out.has(e.dst)) continue;
    out.get(e.src).push(e.dst);
    called.add(e.dst);
  }
  const seen = new Map(), order = [], closing = new Set();
  const visit = (n) => {
    seen.set(n, "open");
    for (const m of out.get(n)) {
      if (seen.get(m) === "open") closing.add(n + "\n" + m);
      else if (!seen.has(m)) visit(m);
    }
    seen.set(n, "done");
    order.push(n);
  };
  for (const n of [...nodes.filter((x) => !called.has(x)), ...nodes]) if (!seen.has(n)) visit(n);
  const depth = new Map(nodes.map((n) => [n, 0]));
  for (const n of order.reverse()) {
    for (const m of out.get(n)) {
      if (!closing.has(n + "\n" + m)) depth.set(m, Math.max(depth.get(m), depth.get(n) + 1));
    }
  }
  return depth;
}

function topology(services, edgeRows) {
  const id = (ns, name) => ns + "/" + name;
  const known = new Map(services.map((r) => [id(r.namespace, r.name), r]));
  const edges = edgeRows
    .filter((e) => e.src_name !== "unknown" && e.name !== "unknown")
    .map((e) => ({ src: id(e.src_namespace, e.src_name), dst: id(e.namespace, e.name), row: e }));
  for (const e of edges) {
    for (const n of [e.src, e.dst]) {
      if (!known.has(n)) {
        const [ns, name] = n.split("/");
        known.set(n, { namespace: ns, name, stale: false, success_rate: null, rps: 0 });
      }
    }
  }
  if (!known.size) return h("p", { class: "muted" }, "No services yet: apply a Service and start a workload.");
  const nodes = [...known.entries()].map(([n, r]) => ({
    id: n, title: r.name, sub: `${r.namespace} · ${pct(r.success_rate)} · ${num(r.rps, 1)} rps`,
    href: svcHref(r.namespace, r.name), stale: r.stale, data: { "data-service": n } }));
  return graph(nodes, edges.map((e) => ({
    src: e.src, dst: e.dst, color: rateColor(e.row.success_rate),
    title: `${e.src} → ${e.dst}: ${pct(e.row.success_rate)} success, ${num(e.row.rps, 1)} rps, p99 ${ms(e.row.p99_ms)}`,
    lines: [{ text: `${num(e.row.rps, 1)} rps · ${pct(e.row.success_rate)}` }] })), "service topology");
}

// How wide a label's lines are drawn, measured in a hidden drawing with the same styles
// (a bold control line is wider than its count of letters says).
function labelWidth(lines) {
  let ruler = document.getElementById("svg-ruler");
  if (!ruler) {
    ruler = s("svg", { id: "svg-ruler", class: "topology ruler", "aria-hidden": "true" });
    document.body.append(ruler);
  }
  const widths = lines.map((line) => {
    const text = s("text", { class: "edge-label" }, s("tspan", { class: line.cls || null }, line.text));
    ruler.append(text);
    const w = text.getComputedTextLength();
    text.remove();
    return w;
  });
  return Math.ceil(Math.max(...widths)) + 10;
}

// A directed graph in columns, callers to the left of what they call: the topology of
// services and the landscape of groups. `nodes`: {id, title, sub, href, stale, data};
// `edges`: {src, dst, title, color, dashed, data, lines: [{text, cls, data}]}, each
// edge labelled with its lines on one plate.
function graph(nodes, edges, label, size) {
  const W = (size && size.width) || 170, H = 46, GY = 34, PAD = 20, LH = 14;
  // Columns far enough apart for the widest label to sit between them, off the nodes.
  const GX = Math.min(Math.max(130, ...edges.map((e) => labelWidth(e.lines) + 24)), 280);
  const ids = nodes.map((n) => n.id).sort();
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const depth = layers(ids, edges);
  const columns = [];
  for (const n of ids) {
    const d = depth.get(n);
    (columns[d] = columns[d] || []).push(n);
  }
  const pos = new Map();
  const rows = Math.max(...columns.map((c) => (c ? c.length : 0)));
  columns.forEach((col, ci) => {
    (col || []).forEach((n, ri) => {
      const offset = ((rows - col.length) * (H + GY)) / 2;
      pos.set(n, { x: PAD + ci * (W + GX), y: PAD + offset + ri * (H + GY) });
    });
  });
  const svg = s("svg", { class: "topology", role: "img", "aria-label": label });
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
  s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#868e96" }))));
  const labels = [];
  for (const e of edges) {
    const a = pos.get(e.src), b = pos.get(e.dst);
    let d, lx, ly;
    if (e.src === e.dst) {
      d = `M ${a.x + W - 30} ${a.y} C ${a.x + W} ${a.y - 40}, ${a.x + W + 30} ${a.y}, ${a.x + W} ${a.y + 10}`;
      lx = a.x + W; ly = a.y - 22;
    } else {
      const forward = b.x > a.x;
      const x1 = forward ? a.x + W : a.x + W / 2, y1 = forward ? a.y + H / 2 : a.y + H;
      const x2 = forward ? b.x : b.x + W / 2, y2 = forward ? b.y + H / 2 : b.y;
      const mx = (x1 + x2) / 2;
      d = forward ? `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2 - 2} ${y2}` :
        `M ${x1} ${y1} C ${x1 + 60} ${y1 + 40}, ${x2 + 60} ${y2 - 40}, ${x2} ${y2 - 2}`;
      lx = mx; ly = (y1 + y2) / 2 - 6;
    }
    const group = s("g", { class: "edge-group", ...(e.data || {}) }, s("title", {}, e.title),
      s("path", { class: "edge" + (e.dashed ? " dashed" : ""), d, stroke: e.color, "marker-end": "url(#arrow)" }));
    svg.append(group);
    labels.push({ group, x: lx, y: ly, lines: e.lines, data: e.data, title: e.title });
  }
  // Labels go on top of every curve, on a plate of the background colour, and step
  // out of each other's way (and off the nodes) where edges converge: up and down
  // from the curve's middle, then sideways; where a dense graph leaves no room near
  // the curve, below the drawing (the plate's tooltip names the edge).
  const boxes = [...pos.values()].map((p) => ({ x: p.x, y: p.y, w: W, h: H }));
  const hits = (b) => boxes.some((o) => b.x < o.x + o.w && o.x < b.x + b.w && b.y < o.y + o.h && o.y < b.y + b.h);
  for (const l of labels) {
    const w = labelWidth(l.lines), bh = LH * l.lines.length + 3; // + the last line's descent
    let box = null;
    for (let k = 0; k < 60 && !box; k++) {
      const dy = (k % 2 ? -1 : 1) * Math.ceil(k / 2) * (LH / 2);
      for (const dx of [0, -w / 2, w / 2]) {
        const b = { x: l.x - w / 2 + dx, y: l.y - LH + 3 + dy, w, h: bh };
        if (!hits(b)) { box = b; break; }
      }
    }
    if (!box) box = { x: l.x - w / 2, y: Math.max(...boxes.map((o) => o.y + o.h)) + 4, w, h: bh };
    boxes.push(box);
    // The label leaves its edge's group (see below): it carries the edge's data too.
    const text = s("text", { class: "edge-label", x: box.x + box.w / 2, y: box.y + LH - 2, "text-anchor": "middle",
      ...(l.data || {}) });
    l.lines.forEach((line, i) => text.append(s("tspan", { x: box.x + box.w / 2, dy: i ? LH : 0,
      class: line.cls || null, ...(line.data || {}) }, line.text)));
    l.group.append(s("rect", { class: "edge-plate", x: box.x, y: box.y, width: box.w, height: box.h, rx: 3 },
      s("title", {}, l.title)), text);
  }
  // Plates and labels above the curves drawn after them.
  for (const l of labels) svg.append(l.group.querySelector(".edge-plate"), l.group.querySelector(".edge-label"));
  for (const n of ids) {
    const p = pos.get(n), node = byId.get(n);
    const link = s("a", { href: node.href || null });
    link.append(s("g", { class: "node" + (node.stale ? " stale" : ""), ...(node.data || {}) },
      s("rect", { x: p.x, y: p.y, width: W, height: H, rx: 6 }),
      s("text", { x: p.x + 10, y: p.y + 19 }, node.title),
      s("text", { class: "sub", x: p.x + 10, y: p.y + 36 }, node.sub)));
    svg.append(link);
  }
  // The drawing holds every node and every label, wherever a label had to step to.
  const x0 = Math.min(0, ...boxes.map((b) => b.x - PAD / 2)), y0 = Math.min(0, ...boxes.map((b) => b.y - PAD / 2));
  const x1 = Math.max(...boxes.map((b) => b.x + b.w + PAD)), y1 = Math.max(...boxes.map((b) => b.y + b.h + PAD));
  svg.setAttribute("viewBox", `${x0} ${y0} ${x1 - x0} ${y1 - y0}`);
  svg.setAttribute("width", String(x1 - x0));
  svg.setAttribute("height", String(y1 - y0));
  return svg;
}

// ---- charts --------------------------------------------------------------------

function chart(title, points, field, format, color) {
  const W = 320, H = 120, L = 44, R = 8, T = 8, B = 18;
  const values = points.map((p) => p[field]).filter((v) => v !== null && v !== undefined);
  const svg = s("svg", { class: "chart-svg", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none",
    role: "img", "aria-label": title });
  let max = values.length ? Math.max(...values) : 1;
  let min = field === "success_rate" ? Math.min(0.9, ...values) : 0;
  if (field === "success_rate") max = 1;
  if (max <= min) max = min + 1;
  const x = (i) => L + (i * (W - L - R)) / Math.max(points.length - 1, 1);
  const y = (v) => T + (1 - (v - min) / (max - min)) * (H - T - B);
  svg.append(s("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(s("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  svg.append(s("text", { class: "tick", x: L - 4, y: T + 8, "text-anchor": "end" }, format(max)));
  svg.append(s("text", { class: "tick", x: L - 4, y: H - B, "text-anchor": "end" }, format(min)));
  if (points.length) {
    svg.append(s("text", { class: "tick", x: L, y: H - 4 }, `-${state.window}`));
    svg.append(s("text", { class: "tick", x: W - R, y: H - 4, "text-anchor": "end" }, "now"));
  }
  // Where the data begins: a service younger than the window starts with a gap.
  svg.setAttribute("data-first-point", String(points.findIndex((p) => p[field] !== null && p[field] !== undefined)));
  svg.setAttribute("data-points", String(points.length));
  let d = "", pen = false;
  points.forEach((p, i) => {
    const v = p[field];
    if (v === null || v === undefined) { pen = false; return; }
    d += `${pen ? "L" : "M"} ${x(i).toFixed(1)} ${y(v).toFixed(1)} `;
    pen = true;
  });
  points.forEach((p, i) => {
    // A point with no neighbour draws no line: show it as a dot.
    const v = p[field], before = points[i - 1], after = points[i + 1];
    const alone = (q) => !q || q[field] === null || q[field] === undefined;
    if (v !== null && v !== undefined && alone(before) && alone(after)) {
      svg.append(s("circle", { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.5, fill: color }));
    }
  });
  if (d) svg.append(s("path", { d, fill: "none", stroke: color, "stroke-width": 1.8 }));
  else svg.append(s("text", { class: "tick", x: W / 2, y: H / 2, "text-anchor": "middle" }, "no traffic"));
  return h("div", { class: "chart" }, h("h3", {}, title), svg);
}

// A route row's requests per second over the last 15 minutes, small enough for a cell.
function sparkline(points, label) {
  const W = 120, H = 28, P = 2;
  const values = points.map((p) => p.rps);
  const max = Math.max(0.001, ...values.filter((v) => v !== null && v !== undefined));
  const svg = s("svg", { class: "spark", viewBox: `0 0 ${W} ${H}`, width: W, height: H,
    role: "img", "aria-label": label, "data-spark": String(points.filter((p) => p.rps).length) });
  let d = "", pen = false;
  points.forEach((p, i) => {
    const v = p.rps;
    if (v === null || v === undefined) { pen = false; return; }
    const x = P + (i * (W - 2 * P)) / Math.max(points.length - 1, 1);
    const y = H - P - (v / max) * (H - 2 * P);
    d += `${pen ? "L" : "M"} ${x.toFixed(1)} ${y.toFixed(1)} `;
    pen = true;
  });
  if (d) svg.append(s("path", { d, fill: "none", stroke: "#3b5bdb", "stroke-width": 1.5 }));
  return svg;
}

// The window selector drives every chart: about 12-60 points whatever the window, no
// finer than the control plane's scrapes.
const SERIES_STEP = { "1m": "5s", "5m": "10s", "15m": "15s" };

function seriesQuery() {
  return new URLSearchParams({ window: state.window, step: SERIES_STEP[state.window] || "15s" }).toString();
}

function routeSeries(rs) {
  const q = new URLSearchParams({ view: "route", namespace: rs.service_namespace, name: rs.service,
    route_namespace: rs.namespace, route_name: rs.name });
  return api(`/v1/stats/series?${q}&${seriesQuery()}`).then((r) => r.points, () => []);
}

// ---- pages ---------------------------------------------------------------------

async function overview() {
  const w = encodeURIComponent(state.window);
  const [services, edges, targets] = await Promise.all([
    api(`/v1/stats/services?window=${w}`),
    api(`/v1/stats/edges?window=${w}`),
    api("/v1/stats/targets"),
  ]);
  const stale = targets.items.filter((t) => t.stale);
  return [
    stale.length ? h("div", { class: "banner" }, `${stale.length} proxy(ies) did not answer their last scrape: `,
      stale.map((t) => `${t.namespace}/${t.workload} (${t.error || "no recent scrape"})`).join(", ")) : null,
    panel(`Topology (last ${state.window})`, topology(services.items, edges.items)),
    panel(`Services (last ${state.window}, as their own proxies served them)`, metricsTable(services.items, [
      { title: "Service", cell: (r) => h("a", { href: svcHref(r.namespace, r.name), "data-service-link": `${r.namespace}/${r.name}` }, r.name) },
      { title: "Namespace", cell: (r) => r.namespace },
    ], "effective")),
    panel(`Edges (last ${state.window}, as the callers counted)`, metricsTable(edges.items, [
      { title: "From", cell: (r) => h("a", { href: svcHref(r.src_namespace, r.src_name) }, `${r.src_name}.${r.src_namespace}`) },
      { title: "To", cell: (r) => h("a", { href: svcHref(r.namespace, r.name) }, `${r.name}.${r.namespace}`) },
    ], "actual")),
  ];
}

function selects(selector, labels) {
  const keys = Object.keys(selector || {});
  return keys.length > 0 && keys.every((k) => (labels || {})[k] === selector[k]);
}

function parentsName(route, ns, name) {
  const routeNs = route.metadata.namespace;
  return ((route.spec || {}).parentRefs || []).some((p) =>
    p.name === name && (p.namespace || routeNs) === ns && (!p.kind || p.kind === "Service"));
}

// The kinds that attach to a Service: routes by parentRefs, policies by targetRefs.
const ROUTE_KINDS = { HTTPRoute: "httproutes", GRPCRoute: "grpcroutes", TCPRoute: "tcproutes" };
const POLICY_KINDS = ["retrypolicies", "outlierpolicies", "circuitbreakerpolicies", "faultpolicies"];

async function listAll(plurals, query) {
  const lists = await Promise.all(plurals.map((p) => optional(`/v1/resources/${p}${query || ""}`)));
  return { items: lists.flatMap((l) => l.items) };
}

// A policy's target and settings on one line, as `gossamer get` prints them.
function policyTargets(policy) {
  const spec = policy.spec || {};
  const refs = spec.targetRefs || (spec.targetRef ? [spec.targetRef] : []);
  if (refs.length) return refs.map((r) => `${r.kind || "Service"}/${r.name}`).join(", ");
  const labels = (spec.selector || {}).matchLabels || {};
  const keys = Object.keys(labels).sort();
  return keys.length ? keys.map((k) => `${k}=${labels[k]}`).join(",") : "the namespace";
}

function policySettings(policy) {
  const flat = (v, prefix) => {
    if (v && typeof v === "object" && !Array.isArray(v)) {
      return Object.entries(v).flatMap(([k, x]) => flat(x, prefix ? `${prefix}.${k}` : k));
    }
    if (Array.isArray(v) && v.every((x) => typeof x !== "object")) return [`${prefix}=${v.join("|")}`];
    if (Array.isArray(v)) return v.flatMap((x, i) => flat(x, `${prefix}[${i}]`));
    return [`${prefix}=${v}`];
  };
  const spec = { ...(policy.spec || {}) };
  delete spec.targetRefs; delete spec.targetRef; delete spec.selector;
  return flat(spec, "").join(", ") || "–";
}

function targetsName(policy, ns, name) {
  return policy.metadata.namespace === ns && ((policy.spec || {}).targetRefs || []).some((t) =>
    t.name === name && (!t.kind || t.kind === "Service"));
}

async function deleteRoute(route) {
  const m = route.metadata;
  if (!confirm(`Delete ${route.kind} ${m.namespace}/${m.name}?`)) return;
  try {
    await api(`/v1/resources/${ROUTE_KINDS[route.kind]}/${encodeURIComponent(m.namespace)}/${encodeURIComponent(m.name)}`, { method: "DELETE" });
    banner(`Deleted ${route.kind} ${m.namespace}/${m.name}.`);
    refresh();
  } catch (e) {
    banner(`Could not delete ${route.kind} ${m.namespace}/${m.name}: ${e.message}`, "error");
  }
}

async function servicePage(ns, name) {
  const w = encodeURIComponent(state.window);
  const q = `namespace=${encodeURIComponent(ns)}&name=${encodeURIComponent(name)}`;
  const nsQuery = `?namespace=${encodeURIComponent(ns)}`;
  const [stat, edges, routeStats, series, routes, authz, traffic, svcs, workloads, proxies] = await Promise.all([
    api(`/v1/stats/services?window=${w}&${q}`),
    api(`/v1/stats/edges?window=${w}&${q}`),
    api(`/v1/stats/routes?window=${w}`),
    api(`/v1/stats/series?view=service&${q}&${seriesQuery()}`),
    listAll(Object.values(ROUTE_KINDS)),
    optional(`/v1/resources/authorizationpolicies${nsQuery}`),
    listAll(POLICY_KINDS, nsQuery),
    optional(`/v1/resources/services?namespace=${encodeURIComponent(ns)}`),
    optional(`/v1/resources/workloads?namespace=${encodeURIComponent(ns)}`),
    api("/v1/proxies"),
  ]);
  const row = stat.items[0] || { requests: 0, success_rate: null, rps: 0, p50_ms: null, p95_ms: null, p99_ms: null };
  const svc = svcs.items.find((x) => x.metadata.name === name);
  const members = svc ? workloads.items.filter((wl) => selects(svc.spec.selector, wl.metadata.labels)) : [];
  const proxyOf = new Map(proxies.items.map((p) => [p.namespace + "/" + p.workload, p]));
  const attached = routes.items.filter((r) => parentsName(r, ns, name));
  const policies = [...authz.items, ...traffic.items.filter((p) => targetsName(p, ns, name))];
  const shownRows = routeStats.items.filter((x) => attached.some((r) =>
    r.metadata.name === x.name && r.metadata.namespace === x.namespace));
  const sparks = new Map(await Promise.all(shownRows.map(async (rs) =>
    [rs, await routeSeries(rs)])));
  const admin = isAdmin();
  const card = (label, value, cls) => h("div", { class: "card" }, h("div", { class: "label" }, label),
    h("div", { class: "value " + (cls || "") }, value));
  const callers = edges.items.filter((e) => e.namespace === ns && e.name === name);
  const callees = edges.items.filter((e) => e.src_namespace === ns && e.src_name === name);
  const points = series.points;
  return [
    h("h1", { "data-page": "service" }, name, " ", h("small", {}, `service in ${ns}`), " ", staleBadge(row)),
    h("div", { class: "cards" },
      card("Success", pct(row.success_rate), rateClass(row.success_rate)),
      card("RPS", num(row.rps, 1)),
      card("P50", ms(row.p50_ms)), card("P95", ms(row.p95_ms)), card("P99", ms(row.p99_ms)),
      card("Requests", row.requests)),
    panel(`Last ${state.window}`, h("div", { class: "charts", "data-window": state.window },
      chart("Success rate", points, "success_rate", (v) => (v * 100).toFixed(0) + "%", "#2f9e44"),
      chart("Requests per second", points, "rps", (v) => v.toFixed(1), "#3b5bdb"),
      chart("P99 latency", points, "p99_ms", (v) => v.toFixed(0) + "ms", "#e67700"))),
    panel(`Callers (last ${state.window})`, metricsTable(callers, [{ title: "From", cell: (r) => h("a", { href: svcHref(r.src_namespace, r.src_name) }, `${r.src_name}.${r.src_namespace}`) }], "actual")),
    panel(`Calls (last ${state.window})`, metricsTable(callees, [{ title: "To", cell: (r) => h("a", { href: svcHref(r.namespace, r.name) }, `${r.name}.${r.namespace}`) }], "actual")),
    panel("Routes and policies",
      attached.length ? h("table", {},
        h("thead", {}, h("tr", {}, ["Kind", "Name", "Namespace", "To", "Success", "RPS", "P99", "Requests", `Last ${state.window}`, ""].map((t) => h("th", {}, t)))),
        // A route has a stats row per service its calls went to (decision 0031): a line each.
        h("tbody", {}, attached.flatMap((r) => {
          const m = r.metadata;
          const rows = routeStats.items.filter((x) => x.name === m.name && x.namespace === m.namespace);
          return (rows.length ? rows : [null]).map((rs, i) => h("tr", { "data-route": `${m.namespace}/${m.name}` },
            h("td", {}, r.kind), h("td", {}, m.name), h("td", {}, m.namespace),
            h("td", {}, rs ? `${rs.service}.${rs.service_namespace}` : "–"),
            h("td", { class: rs ? rateClass(rs.success_rate) : "" }, rs ? pct(rs.success_rate) : "–"),
            h("td", {}, rs ? num(rs.rps, 1) : "–"), h("td", {}, rs ? ms(rs.p99_ms) : "–"),
            h("td", {}, rs ? String(rs.requests) : "–"),
            h("td", {}, rs && sparks.has(rs) ? sparkline(sparks.get(rs), `${m.name} to ${rs.service}: requests per second`) : null),
            h("td", {}, admin && i === 0 ? h("button", { class: "danger", type: "button", onclick: () => deleteRoute(r) }, "Delete") : null)));
        }))) : h("p", { class: "muted" }, "No HTTPRoute, GRPCRoute or TCPRoute names this service in its parentRefs."),
      policies.length ? h("ul", {}, policies.map((p) => h("li", { "data-policy": `${p.kind}/${p.metadata.name}` },
        `${p.kind} ${p.metadata.namespace}/${p.metadata.name} → ${policyTargets(p)}: `,
        h("code", { class: "settings" }, policySettings(p))))) : null),
    panel("Workloads and certificates",
      members.length ? h("table", {},
        h("thead", {}, h("tr", {}, ["Workload", "Address", "Ready", "Identity", "Certificate expires in", "Snapshot"].map((t) => h("th", {}, t)))),
        h("tbody", {}, members.map((wl) => {
          const p = proxyOf.get(wl.metadata.namespace + "/" + wl.metadata.name);
          const exp = left(p && p.certificateNotAfter);
          const ready = ((wl.status || {}).conditions || []).some((c) => c.type === "Ready" && c.status === "True");
          return h("tr", {}, h("td", {}, wl.metadata.name), h("td", {}, `${wl.spec.address}:${wl.spec.inboundPort}`),
            h("td", {}, h("span", { class: "badge " + (ready ? "good" : "warn") }, ready ? "ready" : "not ready")),
            h("td", {}, h("code", {}, p ? p.identity : "–")),
            h("td", { class: exp.cls }, exp.text),
            h("td", {}, p ? (p.upToDate ? "up to date" : "behind") : "not connected"));
        }))) : h("p", { class: "muted" }, "No workloads selected by this service.")),
    tapPanel(ns, name),
  ];
}

// ---- landscape -----------------------------------------------------------------
// Groups of services by a workload label (tier, team, …), the calls between groups,
// the TrafficControls at work on those edges and the findings with their remedy.

const NO_GROUP = "(none)";
// The findings' window follows the window selector, never shorter than the rules'
// default (gossamer findings: 5m in 15s steps), so an incident stays listed a while.
const FINDINGS_WINDOW = { "1m": ["5m", "15s"], "5m": ["5m", "15s"], "15m": ["15m", "30s"] };

function splitDotted(dotted) { // "web-1.shop" → ["shop", "web-1"]
  const i = dotted.lastIndexOf(".");
  return i < 0 ? ["", dotted] : [dotted.slice(i + 1), dotted.slice(0, i)];
}

function groupKeys(workloads) {
  const keys = new Set();
  for (const wl of workloads) for (const k of Object.keys(wl.metadata.labels || {})) keys.add(k);
  return ["namespace", ...[...keys].sort()];
}

function defaultGroupKey(keys) {
  if (keys.includes(state.groupBy)) return state.groupBy;
  return ["tier", "team"].find((k) => keys.includes(k)) || "namespace";
}

// Which group a name from the metrics is in. A Service's group is the most common value
// among the workloads it selects; a caller that no Service selects is named by its
// workload, and a control's edges name the source workload: their own label.
function grouper(key, services, workloads) {
  const valueOf = (wl) => (key === "namespace" ? wl.metadata.namespace : (wl.metadata.labels || {})[key]);
  const memo = new Map();
  return (ns, name, kind) => {
    if (key === "namespace") return ns;
    const id = `${kind || ""}/${ns}/${name}`;
    if (memo.has(id)) return memo.get(id);
    const svc = kind === "workload" ? null
      : services.find((x) => x.metadata.namespace === ns && x.metadata.name === name);
    const members = workloads.filter((wl) => wl.metadata.namespace === ns &&
      (svc ? selects(svc.spec.selector, wl.metadata.labels) : wl.metadata.name === name));
    const counts = new Map();
    for (const wl of members) {
      const v = valueOf(wl);
      if (v) counts.set(v, (counts.get(v) || 0) + 1);
    }
    const best = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0];
    const group = best ? best[0] : NO_GROUP;
    memo.set(id, group);
    return group;
  };
}

// The callers' edges summed per pair of groups: calls, requests/s and the success
// rate weighted by calls, as the callers counted them.
function groupEdges(edgeRows, groupOf) {
  const out = new Map();
  for (const e of edgeRows) {
    if (e.src_name === "unknown" || e.name === "unknown") continue;
    const src = groupOf(e.src_namespace, e.src_name), dst = groupOf(e.namespace, e.name);
    const key = src + "\n" + dst;
    const g = out.get(key) || { src, dst, requests: 0, rps: 0, ok: 0, judged: 0, edges: [], controls: new Map() };
    g.requests += e.requests || 0;
    g.rps += e.rps || 0;
    if (e.success_rate !== null && e.success_rate !== undefined) {
      g.ok += e.success_rate * e.requests;
      g.judged += e.requests;
    }
    g.edges.push(`${e.src_name}.${e.src_namespace} → ${e.name}.${e.namespace}`);
    out.set(key, g);
  }
  for (const g of out.values()) g.success_rate = g.judged ? g.ok / g.judged : null;
  return out;
}

function seconds(duration) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(String(duration || ""));
  return m ? Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2]] : null;
}

function expired(control) {
  const ttl = seconds((control.spec || {}).ttl), born = Date.parse(control.metadata.creationTimestamp || "");
  return ttl !== null && !Number.isNaN(born) && born + ttl * 1000 <= Date.now();
}

function sum(counts) { return Object.values(counts || {}).reduce((a, b) => a + b, 0); }
function byReason(counts) {
  const parts = Object.entries(counts || {}).filter(([, n]) => n).map(([r, n]) => `${r} ${n}`);
  return parts.length ? ` (${parts.join(", ")})` : "";
}

// Each stored control with the edges its proxies say it governs (GET /v1/controls/status),
// put on the group edges; a governed pair with no calls in the window gets an edge too.
function placeControls(controls, status, groupOf, edges) {
  const rows = [];
  for (const c of controls) {
    const key = `${c.metadata.namespace}/${c.metadata.name}`;
    const mode = (c.spec || {}).mode || "Enforce", gone = expired(c);
    const governed = ((status[key] || {}).edges || []);
    if (!governed.length) rows.push({ key, mode, gone, edge: null });
    for (const e of governed) {
      const [sns, sname] = splitDotted(e.source), [dns, dname] = splitDotted(e.service);
      const src = groupOf(sns, sname, "workload"), dst = groupOf(dns, dname);
      rows.push({ key, mode, gone, edge: e, src, dst });
      if (gone) continue;
      const id = src + "\n" + dst;
      if (!edges.has(id)) edges.set(id, { src, dst, requests: 0, rps: 0, success_rate: null, edges: [], controls: new Map() });
      const on = edges.get(id).controls;
      const seen = on.get(key) || { key, mode, count: 0 };
      seen.count += sum(mode === "DryRun" ? e.wouldRefuse : e.refused);
      on.set(key, seen);
    }
  }
  return rows;
}

function landscapeGraph(groups, edges, key) {
  if (!groups.size) return h("p", { class: "muted" }, "No services yet: apply a Service and start a workload.");
  const into = new Map();
  for (const g of edges.values()) {
    const t = into.get(g.dst) || { rps: 0, ok: 0, judged: 0 };
    t.rps += g.rps; t.ok += g.ok || 0; t.judged += g.judged || 0;
    into.set(g.dst, t);
  }
  const nodes = [...groups.entries()].map(([name, members]) => {
    const t = into.get(name) || { rps: 0, judged: 0 };
    return { id: name, title: key === "namespace" ? name : `${key}=${name}`,
      sub: `${members.size} service(s) · ${num(t.rps, 1)} rps in · ${pct(t.judged ? t.ok / t.judged : null)}`,
      data: { "data-group": name } };
  });
  const drawn = [...edges.values()].map((g) => ({
    src: g.src, dst: g.dst, dashed: !g.requests, color: g.requests ? rateColor(g.success_rate) : "#adb5bd",
    data: { "data-group-edge": `${g.src} → ${g.dst}` },
    title: `${g.src} → ${g.dst}: ${g.requests} call(s), ${pct(g.success_rate)} success\n${g.edges.join("\n")}`,
    lines: [
      { text: g.requests ? `${num(g.rps, 1)} rps · ${pct(g.success_rate)}` : `no calls in ${state.window}` },
      ...[...g.controls.values()].map((c) => ({
        text: c.mode === "DryRun" ? `${c.key} (DryRun): would refuse ${c.count}` : `${c.key}: refused ${c.count}`,
        cls: "control " + (c.mode === "DryRun" ? "dry" : "enforce"),
        data: { "data-control": c.key, "data-count": c.count, "data-mode": c.mode } })),
    ] }));
  return graph(nodes, drawn, "groups of services and the calls between them", { width: 200 });
}

function controlsTable(rows) {
  if (!rows.length) return h("p", { class: "muted" }, "No TrafficControl: `gossamer control apply`, or apply a finding's suggestion below.");
  return h("table", {},
    h("thead", {}, h("tr", {}, ["Control", "Mode", "Source → service", "Groups", "Rate /s", "Limit", "In flight", "Waiting", "Refused", "Would refuse"]
      .map((t) => h("th", { class: ["Rate /s", "Limit", "In flight", "Waiting"].includes(t) ? "num" : "" }, t)))),
    h("tbody", {}, rows.map((r) => {
      const e = r.edge;
      return h("tr", { "data-control-row": r.key },
        h("td", { class: "name" }, r.key),
        h("td", {}, h("span", { class: "badge " + (r.gone ? "bad" : r.mode === "DryRun" ? "warn" : "good") }, r.gone ? "expired" : r.mode)),
        h("td", { class: "name" }, e ? `${e.source} → ${e.service}` : "no call governed yet"),
        h("td", { class: "name" }, e ? `${r.src} → ${r.dst}` : "–"),
        h("td", { class: "num" }, e && e.rate !== undefined ? num(e.rate, 2) : "–"),
        h("td", { class: "num" }, e && e.limit !== undefined ? String(e.limit) : "–"),
        h("td", { class: "num" }, e && e.inFlight !== undefined ? String(e.inFlight) : "–"),
        h("td", { class: "num" }, e && e.waiting !== undefined ? String(e.waiting) : "–"),
        h("td", { class: e && sum(e.refused) ? "bad" : "" }, e ? String(sum(e.refused)) + byReason(e.refused) : "–"),
        h("td", { class: e && sum(e.wouldRefuse) ? "warn" : "" }, e ? String(sum(e.wouldRefuse)) + byReason(e.wouldRefuse) : "–"));
    })));
}

// The numbers of a finding's evidence that are one value each (the thresholds and
// the per-step lists stay in `gossamer findings ID`).
function evidenceSummary(evidence) {
  const skip = new Set(["window", "thresholds", "worstStep", "stepSeconds", "failingSince"]);
  return Object.entries(evidence || {})
    .filter(([k, v]) => !skip.has(k) && (typeof v === "number" || typeof v === "string"))
    .map(([k, v]) => `${k} ${/SuccessRate$|^share/.test(k) && typeof v === "number" ? pct(v) : v}`)
    .join(" · ");
}

function applyCommand(f, window, step) {
  const flags = window === "5m" && step === "15s" ? "" : ` --window ${window} --step ${step}`;
  return `gossamer findings --apply ${f.id}${flags}`;
}

async function applyFinding(f) {
  const names = f.suggestions.map((c) => `${c.kind} ${c.metadata.namespace}/${c.metadata.name}`).join(", ");
  if (!confirm(`Apply ${names}?`)) return;
  state.applied.set(f.id, { cls: "muted", text: "Applying…" });
  refresh();
  try {
    const result = await api("/v1/apply", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ kind: "List", items: f.suggestions }) });
    state.applied.set(f.id, { cls: "good", text: "Applied: " + result.items.map((i) =>
      `${i.kind.toLowerCase()}/${i.name} (${i.namespace}) ${i.action}`).join(", ") });
  } catch (e) {
    const why = e.details.length ? e.details.map((d) => `${d.object ? d.object + ": " : ""}${d.path ? d.path + ": " : ""}${d.reason}`).join("; ") : e.message;
    state.applied.set(f.id, { cls: "bad", text: `Not applied: ${why}` });
  }
  refresh();
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch (e) {
    // No clipboard for this page (not a secure context, or denied): select it instead.
    const code = button.parentElement.querySelector("code");
    getSelection().selectAllChildren(code);
    button.textContent = document.execCommand("copy") ? "Copied" : "Selected: press Ctrl+C";
  }
}

function findingsList(items, window, step) {
  if (!items.length) return h("p", { class: "muted", "data-findings-empty": "" }, `No findings in the last ${window}.`);
  const admin = isAdmin();
  return h("div", { class: "findings" }, items.map((f) => {
    const result = state.applied.get(f.id);
    let action;
    if (!f.suggestions.length) action = h("p", { class: "muted" }, f.unsuggested || "No control suggested.");
    else if (admin) {
      action = h("button", { type: "button", class: "apply", "data-apply": f.id, disabled: result && result.text === "Applying…",
        onclick: () => applyFinding(f) }, f.suggestions.length > 1 ? "Apply the suggested controls" : "Apply the suggested control");
    } else {
      const command = applyCommand(f, window, step);
      const copy = h("button", { type: "button", class: "copy", "data-copy": f.id }, "Copy");
      copy.addEventListener("click", () => copyText(command, copy));
      action = h("div", { class: "apply-command" },
        h("span", { class: "muted" }, "Applying needs an admin API token (“API token…” above), or run: "),
        h("code", { "data-apply-command": f.id }, command), " ", copy);
    }
    return h("div", { class: "finding", "data-finding": f.id },
      h("div", { class: "finding-head" }, h("span", { class: "badge bad" }, f.kind), " ", h("code", {}, f.id), " ",
        h("span", { class: "name" }, f.services.join(", "))),
      h("p", {}, f.summary),
      h("p", { class: "muted evidence" }, evidenceSummary(f.evidence)),
      f.suggestions.map((c) => h("p", { class: "suggestion" }, `Suggests ${c.kind} ${c.metadata.namespace}/${c.metadata.name}: `,
        h("code", { class: "settings" }, policySettings(c)))),
      action,
      result ? h("p", { class: "apply-result " + result.cls, "data-apply-result": f.id }, result.text) : null);
  }));
}

async function landscapePage() {
  const w = encodeURIComponent(state.window);
  const [fw, fs] = FINDINGS_WINDOW[state.window] || ["5m", "15s"];
  const [edges, services, workloads, controls, status, findings] = await Promise.all([
    api(`/v1/stats/edges?window=${w}`),
    optional("/v1/resources/services"),
    optional("/v1/resources/workloads"),
    optional("/v1/resources/trafficcontrols"),
    api("/v1/controls/status").catch((e) => { if (e.status === 404) return { items: {} }; throw e; }),
    api(`/v1/findings?window=${fw}&step=${fs}`).catch((e) => { if (e.status === 404) return { items: [] }; throw e; }),
  ]);
  const keys = groupKeys(workloads.items);
  const key = defaultGroupKey(keys);
  const groupOf = grouper(key, services.items, workloads.items);
  const groups = new Map();
  const member = (group, name) => { if (!groups.has(group)) groups.set(group, new Set()); groups.get(group).add(name); };
  for (const svc of services.items) member(groupOf(svc.metadata.namespace, svc.metadata.name), `${svc.metadata.name}.${svc.metadata.namespace}`);
  // A workload no Service selects calls by its own name: it is a member as itself.
  for (const wl of workloads.items) {
    const m = wl.metadata;
    if (!services.items.some((svc) => svc.metadata.namespace === m.namespace && selects(svc.spec.selector, m.labels))) {
      member(groupOf(m.namespace, m.name, "workload"), `${m.name}.${m.namespace}`);
    }
  }
  for (const e of edges.items) {
    if (e.src_name !== "unknown") member(groupOf(e.src_namespace, e.src_name), `${e.src_name}.${e.src_namespace}`);
    if (e.name !== "unknown") member(groupOf(e.namespace, e.name), `${e.name}.${e.namespace}`);
  }
  const between = groupEdges(edges.items, groupOf);
  const controlRows = placeControls(controls.items, status.items || {}, groupOf, between);
  for (const g of between.values()) { member(g.src, null); member(g.dst, null); }
  for (const m of groups.values()) m.delete(null);
  const select = h("select", { id: "group-by", "aria-label": "group services by" },
    keys.map((k) => h("option", { value: k }, k)));
  select.value = key;
  select.addEventListener("change", () => { state.groupBy = select.value; refresh(); });
  return [
    h("h1", { "data-page": "landscape" }, "Landscape ", h("small", {}, "groups of services by "), select),
    panel(`Groups and the calls between them (last ${state.window}; TrafficControls on the edges they govern)`,
      landscapeGraph(groups, between, key)),
    panel("TrafficControls at work (as their proxies counted at the last scrape)", controlsTable(controlRows)),
    panel(`Findings (last ${fw}, in ${fs} steps)`, findingsList(findings.items, fw, fs)),
    panel(`Groups by ${key}`, h("table", {},
      h("thead", {}, h("tr", {}, ["Group", "Services", "Calls to other groups", "Calls from other groups"].map((t) => h("th", {}, t)))),
      h("tbody", {}, [...groups.entries()].sort().map(([g, m]) => {
        const out = [...between.values()].filter((x) => x.src === g && x.dst !== g).reduce((a, x) => a + x.requests, 0);
        const inn = [...between.values()].filter((x) => x.dst === g && x.src !== g).reduce((a, x) => a + x.requests, 0);
        return h("tr", { "data-group-row": g }, h("td", {}, g), h("td", { class: "name" }, [...m].sort().join(", ") || "–"),
          h("td", { class: "num" }, String(out)), h("td", { class: "num" }, String(inn)));
      })))),
  ];
}

// ---- live tap ------------------------------------------------------------------
// Streams GET /v1/tap (JSON lines) with fetch and a ReadableStream. The panel is one
// element kept across the page's 5-second redraws, so a running tap is not cut off.

const TAP_ROWS = 100;

function tapText(ev, side) {
  const p = ev[side] || {};
  const who = p.workload || p.service || "unknown";
  return p.namespace ? `${who}.${p.namespace}` : who;
}

function tapTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso || "–");
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function stopTap() {
  const t = state.tap;
  if (t && t.controller) t.controller.abort();
}

function tapPanel(ns, name) {
  const key = ns + "/" + name;
  if (state.tap && state.tap.key === key) return state.tap.node;
  stopTap();
  const status = h("span", { class: "muted tap-status", "data-tap-status": "" }, "Not tapping.");
  const duration = h("select", { "aria-label": "tap duration" },
    ["1m", "5m", "15m", "60m"].map((d) => h("option", { value: d }, d)));
  duration.value = "5m";
  const button = h("button", { type: "button", class: "tap-toggle", "data-tap-toggle": "" }, "Start");
  const rows = h("tbody", {});
  const table = h("table", { class: "tap-table" },
    h("thead", {}, h("tr", {}, ["Time", "Direction", "Source", "Destination", "Method", "Path", "Status", "Latency ms", "Identity"]
      .map((t) => h("th", { class: t === "Status" || t === "Latency ms" ? "num" : "" }, t)))),
    rows);
  const empty = h("p", { class: "muted" }, "Start a tap to see this service's requests as they happen.");
  const node = panel("Live tap",
    h("div", { class: "tap-controls" }, button, h("label", {}, "for ", duration), status),
    empty, table);
  table.hidden = true;
  const tap = { key, node, controller: null };
  const say = (message, cls) => { status.className = "tap-status " + (cls || "muted"); status.textContent = message; };
  const addRow = (ev) => {
    const peer = ev.direction === "inbound" ? ev.source : ev.destination;
    const tr = h("tr", { "data-tap-row": "" },
      h("td", {}, tapTime(ev.time)), h("td", {}, ev.direction),
      h("td", {}, tapText(ev, "source")), h("td", {}, tapText(ev, "destination")),
      h("td", {}, ev.method), h("td", { class: "tap-path", title: ev.path }, ev.path),
      h("td", { class: "num " + (ev.status >= 500 || ev.status === 0 ? "bad" : ev.status >= 400 ? "warn" : "") }, ev.status),
      h("td", { class: "num" }, num(ev.latency_ms, 2)),
      h("td", {}, h("code", {}, (peer && peer.identity) || "–")));
    rows.prepend(tr);
    while (rows.childElementCount > TAP_ROWS) rows.lastElementChild.remove();
    table.hidden = false;
    empty.hidden = true;
  };
  const run = async () => {
    const t = token();
    if (!t) {
      say("Live tap needs an API token (read or admin): paths may hold secrets. Enter one with “API token…” above.", "bad");
      return;
    }
    const controller = new AbortController();
    tap.controller = controller;
    button.textContent = "Stop";
    say("Starting…");
    const q = `namespace=${encodeURIComponent(ns)}&name=${encodeURIComponent(name)}&max=0` +
      `&duration=${encodeURIComponent(duration.value)}`;
    let seen = 0, failed = false;
    const problems = [];
    try {
      const resp = await fetch(`/v1/tap?${q}`, {
        headers: { Accept: "application/x-ndjson", Authorization: "Bearer " + t }, signal: controller.signal });
      if (!resp.ok || !resp.body) {
        let message = resp.status + " " + resp.statusText;
        try { const body = await resp.json(); if (body && body.error) message = body.error.message; } catch (e) { /* not JSON */ }
        say(`Tap failed: ${message}`, "bad");
        return;
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl).trim();
          buffered = buffered.slice(nl + 1);
          if (!line) continue;
          let ev;
          try { ev = JSON.parse(line); } catch (e) { continue; }
          if (ev.type === "request") { seen++; addRow(ev); }
          else if (ev.type === "error") problems.push(`${ev.workload}: ${ev.message}`);
          else if (ev.type === "started") {
            const n = (ev.workloads || []).length;
            if (!n) { failed = true; say(`Tap failed: no proxy could be tapped. ${problems.join("; ")}`, "bad"); continue; }
            say(`Tapping ${n} proxy(ies): ${ev.workloads.join(", ")}` +
              (problems.length ? ` · could not tap ${problems.join("; ")}` : ""), problems.length ? "warn" : "good");
          }
        }
      }
      if (!controller.signal.aborted && !failed) say(`Tap ended after ${duration.value} (${seen} request(s)).`);
    } catch (e) {
      if (controller.signal.aborted) say(`Stopped (${seen} request(s)).`);
      else say(`Tap failed: ${e.message}`, "bad");
    } finally {
      if (tap.controller === controller) tap.controller = null;
      button.textContent = "Start";
    }
  };
  button.addEventListener("click", () => { if (tap.controller) tap.controller.abort(); else run(); });
  state.tap = tap;
  return node;
}

async function certificatesPage() {
  const [ca, proxies] = await Promise.all([api("/v1/ca"), api("/v1/proxies")]);
  const root = left(ca.rootExpiresAt), inter = left(ca.intermediateExpiresAt);
  return [
    panel("Certificate authority", h("table", {}, h("tbody", {},
      h("tr", {}, h("th", {}, "Trust domain"), h("td", {}, ca.trustDomain)),
      h("tr", {}, h("th", {}, "Root expires"), h("td", { class: root.cls }, `${ca.rootExpiresAt} (${root.text})`)),
      h("tr", {}, h("th", {}, "Intermediate expires"), h("td", { class: inter.cls }, `${ca.intermediateExpiresAt} (${inter.text})`)),
      h("tr", {}, h("th", {}, "Root fingerprint"), h("td", {}, h("code", {}, ca.rootFingerprint)))))),
    panel("Proxy certificates", proxies.items.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["Workload", "Namespace", "Identity", "Not after", "Left"].map((t) => h("th", {}, t)))),
      h("tbody", {}, proxies.items.map((p) => {
        const l = left(p.certificateNotAfter);
        return h("tr", {}, h("td", {}, p.workload), h("td", {}, p.namespace), h("td", {}, h("code", {}, p.identity)),
          h("td", {}, p.certificateNotAfter || "–"), h("td", { class: l.cls }, l.text));
      }))) : h("p", { class: "muted" }, "No proxy is connected.")),
  ];
}

// ---- routing and refresh -------------------------------------------------------

async function render() {
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").map(decodeURIComponent);
  if (parts[0] === "service" && parts.length >= 3) return servicePage(parts[1], parts[2]);
  stopTap();
  state.tap = null;
  if (parts[0] === "certificates") return certificatesPage();
  if (parts[0] === "landscape") return landscapePage();
  return overview();
}

async function refresh() {
  clearTimeout(state.timer);
  try {
    const content = await render();
    document.getElementById("main").replaceChildren(...content.filter(Boolean));
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    if (document.getElementById("banner").className.includes("error")) banner(null);
  } catch (e) {
    banner(`Cannot read the control plane: ${e.message}`, "error");
  }
  state.timer = setTimeout(refresh, REFRESH_MS);
}

function showAuth() {
  const button = document.getElementById("auth");
  const me = token() ? who() : null;
  button.textContent = me ? `${me.name} (${me.scope}) · sign out` : "API token…";
  button.className = isAdmin() ? "admin" : "";
}

async function header() {
  try {
    const v = await api("/version");
    document.getElementById("cluster").textContent = `${v.trustDomain} · v${v.version}`;
  } catch (e) { /* refresh() reports an unreachable control plane */ }
}

document.getElementById("auth").addEventListener("click", async () => {
  if (token()) {
    stopTap();
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(WHO_KEY);
  } else {
    const t = prompt("API token: read or admin (DATA_DIR/admin.token is admin). Kept in this tab only.");
    if (t && t.trim()) {
      sessionStorage.setItem(TOKEN_KEY, t.trim());
      try {
        const me = await api("/v1/whoami");
        sessionStorage.setItem(WHO_KEY, JSON.stringify({ name: me.name, scope: me.scope }));
      } catch (e) {
        sessionStorage.removeItem(TOKEN_KEY);
        banner(`Token refused: ${e.message}`, "error");
      }
    }
  }
  showAuth();
  refresh();
});
const windowSelect = document.getElementById("window");
windowSelect.addEventListener("change", () => { state.window = windowSelect.value; refresh(); });
window.addEventListener("hashchange", refresh);
showAuth();
header();
refresh();
