// cityloop command center: polls /api/state and redraws the screen; no page reloads, no inline script.
// Every value reaches the page through textContent or an SVG attribute, never as HTML.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "cityloop-dashboard-token";
const STATUS_COLOUR = { open: "#e5484d", recent: "#f5a524", quiet: "#30a46c" };
const HEALTH_RING = { up: "#e6edf3", down: "#e5484d", unknown: "#6e7681" };
const LINE_COLOURS = ["#58a6ff", "#f778ba", "#3fb950", "#f5a524", "#a371f7", "#79c0ff"];
const images = new Map(); // event id -> its thumbnail <img>, kept across redraws (no reload, no flicker)
let pollMs = 3000;
let timer = null;

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") e.textContent = String(v); else e.setAttribute(k, String(v));
  }
  for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
  return e;
}

function sv(tag, attrs, ...kids) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") e.textContent = String(v); else e.setAttribute(k, String(v));
  }
  for (const kid of kids) if (kid) e.append(kid);
  return e;
}

function fmtInt(n) { return (n === null || n === undefined) ? "—" : Number(n).toLocaleString("en-US"); }
function fmt3(v) { return (v === null || v === undefined) ? "—" : Number(v).toFixed(3); }
function fmt2(v) { return (v === null || v === undefined) ? "—" : Number(v).toFixed(2); }

// ------------------------------------------------------------------ header
function drawHeader(s) {
  const clock = $("clock");
  clock.replaceChildren(s.replay ? el("span", { class: "replay", text: "replay as of " }) : el("span", { text: "now " }),
    el("span", { text: s.as_of_local }));
  const t = s.totals;
  $("totals").replaceChildren(
    el("div", {}, el("b", { text: fmtInt(t.open) }), " open"),
    el("div", {}, el("b", { text: fmtInt(t.last_24h) }), " in 24 h"),
    el("div", {}, el("b", { text: fmtInt(t.events) }), " events in all"));
  const d = s.discovery;
  $("discovery").replaceChildren(
    el("div", { title: `median over ${d.events} events, ${d.window}` }, "time to discovery ",
      el("b", { text: d.detect_text })),
    el("div", { title: "median from an event's start to its alert" }, "to alert ", el("b", { text: d.alert_text })));
}

// ------------------------------------------------------------------ the map
function drawMap(s) {
  const box = $("map");
  const W = 620, H = Math.max(300, box.clientHeight || 560);
  const byDistrict = new Map(s.districts.map((d) => [d, []]));
  for (const c of s.cameras) byDistrict.get(c.district || "unassigned").push(c);
  const n = Math.max(1, byDistrict.size);
  const cols = Math.ceil(Math.sqrt(n)), rows = Math.ceil(n / cols);
  const legendH = 22, gap = 8;
  const tw = (W - gap * (cols + 1)) / cols, th = (H - legendH - gap * (rows + 1)) / rows;
  const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, id: "map-svg", role: "img" });
  let i = 0;
  for (const [district, cams] of byDistrict) {
    const x0 = gap + (i % cols) * (tw + gap), y0 = gap + Math.floor(i / cols) * (th + gap);
    i++;
    const g = sv("g", { class: "district", "data-district": district });
    g.append(sv("rect", { class: "tile", x: x0, y: y0, width: tw, height: th, rx: 8 }));
    g.append(sv("text", { class: "tile-label", x: x0 + 10, y: y0 + 18, text: `${district} · ${cams.length} cameras` }));
    const k = Math.max(1, cams.length), cc = Math.ceil(Math.sqrt(k * tw / Math.max(th - 26, 1)));
    const cr = Math.ceil(k / cc);
    const cw = tw / cc, ch = (th - 26) / cr;
    cams.forEach((c, j) => {
      const cx = x0 + cw * (j % cc + 0.5), cy = y0 + 26 + ch * (Math.floor(j / cc) + 0.4);
      const r = Math.max(6, Math.min(14, Math.min(cw, ch) / 5));
      const dot = sv("circle", {
        class: `camera-dot status-${c.status} health-${c.health}`, "data-camera": c.camera_id, cx, cy, r,
        fill: STATUS_COLOUR[c.status] || "#6e7681", stroke: HEALTH_RING[c.health] || HEALTH_RING.unknown,
        "stroke-width": c.health === "down" ? 4 : 2, "stroke-dasharray": c.health === "down" ? "3 2" : null,
      });
      dot.append(sv("title", { text: `${c.camera_id} (${district}): ${c.open} open, ${c.last_24h} in 24 h; ` +
        `node ${c.node || "none"} ${c.health}; model ${c.model_version || "—"}` }));
      g.append(dot);
      if (c.open) g.append(sv("text", { class: "cam-label", x: cx, y: cy + 4, "text-anchor": "middle", text: c.open }));
      g.append(sv("text", { class: "cam-label", x: cx, y: cy + r + 12, "text-anchor": "middle", text: c.camera_id }));
    });
    svg.append(g);
  }
  const ly = H - 7;
  const legend = [["open event", STATUS_COLOUR.open], [`events in 24 h`, STATUS_COLOUR.recent],
    ["quiet", STATUS_COLOUR.quiet]];
  let lx = 10;
  for (const [label, colour] of legend) {
    svg.append(sv("circle", { cx: lx + 5, cy: ly - 4, r: 5, fill: colour }));
    svg.append(sv("text", { class: "legend", x: lx + 14, y: ly, text: label }));
    lx += 24 + label.length * 6.5;
  }
  for (const [label, colour, dash] of [["node up", HEALTH_RING.up, null], ["node down", HEALTH_RING.down, "3 2"],
    ["no node", HEALTH_RING.unknown, null]]) {
    svg.append(sv("circle", { cx: lx + 5, cy: ly - 4, r: 5, fill: "none", stroke: colour, "stroke-width": 2,
      "stroke-dasharray": dash }));
    svg.append(sv("text", { class: "legend", x: lx + 14, y: ly, text: label }));
    lx += 24 + label.length * 6.5;
  }
  box.replaceChildren(svg);
  $("map-legend").textContent = `open: ended within ${s.open_min} min of the clock`;
}

// ------------------------------------------------------------------ cameras
function drawCameras(s) {
  if (!s.cameras.length) { $("cameras").replaceChildren(el("p", { class: "empty", text: "no camera yet" })); return; }
  const head = el("tr", {}, ...["camera", "district", "model version", "edge node", "health", "24 h", "zone"]
    .map((h, i) => el("th", { class: i === 5 ? "num" : null, text: h })));
  const rows = s.cameras.map((c) => el("tr", { "data-camera": c.camera_id },
    el("td", { text: c.camera_id }), el("td", { text: c.district || "—" }), el("td", { text: c.model_version || "—" }),
    el("td", { text: c.node || "—" }), el("td", { class: `health-${c.health}`, text: c.health }),
    el("td", { class: "num", text: fmtInt(c.last_24h) }), el("td", { text: c.timezone })));
  $("cameras").replaceChildren(el("table", {}, head, ...rows));
}

// ------------------------------------------------------------------ scenarios
function spark(bins, cls, title) {
  const W = 150, H = 30, max = Math.max(1, ...bins), w = W / bins.length;
  const svg = sv("svg", { class: `spark ${cls}`, viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  svg.append(sv("title", { text: title }));
  svg.append(sv("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5 }));
  bins.forEach((v, i) => {
    if (!v) return;
    const h = Math.max(1.5, (H - 2) * v / max);
    svg.append(sv("rect", { x: i * w + 0.5, y: H - h, width: Math.max(1, w - 1), height: h }));
  });
  return svg;
}

function drawScenarios(s) {
  const head = el("div", { class: "scen scen-head" }, el("div", { text: "scenario · agency" }),
    el("div", { text: "24 h" }), el("div", { text: "open" }), el("div", { text: "hourly, last 24 h" }),
    el("div", { text: "4 weeks" }), el("div", { text: "daily, last 4 weeks" }));
  const rows = s.scenarios.map((r) => el("div", { class: "scen", "data-scenario": r.id },
    el("div", { class: "name" }, el("b", { text: r.title }),
      el("small", { text: `${r.agency || "—"} · last ${r.last_event ? r.last_event.slice(5, 16) : "never"}` })),
    el("div", { class: "count", text: fmtInt(r.last_24h) }),
    el("div", { class: r.open ? "open" : "open none", text: fmtInt(r.open) }),
    spark(r.spark_24h, "h", `${r.title}: ${r.last_24h} events in the last 24 h`),
    el("div", { class: "count4w", text: fmtInt(r.last_4w) }),
    spark(r.spark_4w, "w", `${r.title}: ${r.last_4w} events in the last 4 weeks`)));
  $("scenarios").replaceChildren(head, ...rows);
}

// ------------------------------------------------------------------ accuracy
function drawAccuracy(s) {
  const box = $("accuracy");
  const lines = s.lineages.map((l) => ({ ...l, points: l.points.filter((p) => p.mAP50 !== null) }))
    .filter((l) => l.points.length);
  if (!lines.length) { box.replaceChildren(el("p", { class: "empty", text: "no evaluated model version yet" })); return; }
  const W = 640, H = Math.max(200, box.clientHeight || 240), L = 44, R = 24, T = 12, B = 24;
  const vals = lines.flatMap((l) => l.points.map((p) => p.mAP50));
  let lo = Math.min(...vals), hi = Math.max(...vals);
  const pad = Math.max(0.02, (hi - lo) * 0.15);
  lo = Math.max(0, lo - pad); hi = Math.min(1, hi + pad);
  const maxN = Math.max(2, ...lines.flatMap((l) => l.points.map((p) => p.n)));
  const x = (n) => L + (W - L - R) * (n - 1) / (maxN - 1), y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo || 1));
  const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, id: "accuracy-svg" });
  svg.append(sv("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(sv("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  for (let k = 0; k <= 4; k++) {
    const v = lo + (hi - lo) * k / 4;
    svg.append(sv("text", { class: "axis-label", x: L - 4, y: y(v) + 4, "text-anchor": "end", text: v.toFixed(2) }));
  }
  for (let n = 1; n <= maxN; n++) svg.append(sv("text", { class: "axis-label", x: x(n), y: H - 8, "text-anchor": "middle", text: `v${n}` }));
  lines.forEach((l, i) => {
    const colour = LINE_COLOURS[i % LINE_COLOURS.length];
    const g = sv("g", { class: "lineage", "data-lineage": l.name });
    g.append(sv("polyline", { class: "lineage-line", points: l.points.map((p) => `${x(p.n).toFixed(1)},${y(p.mAP50).toFixed(1)}`).join(" "),
      fill: "none", stroke: colour, "stroke-width": 2.5 }));
    for (const p of l.points) {
      const dot = sv("circle", { cx: x(p.n), cy: y(p.mAP50), r: 3.5, fill: colour });
      dot.append(sv("title", { text: `${p.id} (${p.stage || "—"}): mAP50 ${fmt3(p.mAP50)}` }));
      g.append(dot, sv("text", { class: "pt-label", x: x(p.n), y: y(p.mAP50) - 7, "text-anchor": "middle", text: fmt3(p.mAP50) }));
    }
    const last = l.points[l.points.length - 1];
    g.append(sv("text", { class: "legend-label", x: L + 10, y: T + 12 + i * 16, fill: colour,
      text: `${l.name} ${last.version}: ${fmt3(last.mAP50)}` }));
    svg.append(g);
  });
  box.replaceChildren(svg);
}

// ------------------------------------------------------------------ alerts and reviews
function thumbnail(a) {
  if (!a.snapshot) return el("div", { class: "noimg", text: "no snapshot" });
  let img = images.get(a.id);
  if (!img) {
    img = el("img", { src: a.snapshot, alt: `snapshot of ${a.scenario_title} on ${a.camera_id}`, loading: "eager" });
    images.set(a.id, img);
  }
  return img;
}

function drawAlerts(s) {
  if (!s.events.length) { $("alerts").replaceChildren(el("p", { class: "empty", text: "no alert yet" })); return; }
  const keep = new Set(s.events.map((a) => a.id));
  for (const id of images.keys()) if (!keep.has(id)) images.delete(id);
  $("alerts").replaceChildren(...s.events.map((a) => {
    const v = a.review && a.review.verdict;
    const state = el("span", { class: `verdict-${v || "none"}`,
      text: v ? `${v} by ${a.review.by}${a.review.at ? " " + a.review.at.slice(11, 16) : ""}` : "to review" });
    const confirm = el("button", { type: "button", class: "confirm", text: "Confirm" });
    const dismiss = el("button", { type: "button", class: "dismiss", text: "Dismiss" });
    confirm.addEventListener("click", () => review(a.id, "confirmed"));
    dismiss.addEventListener("click", () => review(a.id, "dismissed"));
    return el("div", { class: a.open ? "alert open" : "alert", "data-event": a.id },
      thumbnail(a),
      el("div", {}, el("b", { text: a.scenario_title }),
        el("div", { class: "meta", text: `${a.camera_id} · ${a.district || "—"} · score ${fmt2(a.score)}` }),
        el("div", { class: "meta", text: a.start_local }),
        el("div", { class: "actions" }, state, confirm, dismiss)));
  }));
}

function askToken(message) {
  return new Promise((resolve) => {
    const box = $("token-box"), input = $("token-input");
    if (message) setStatus(message, true);
    box.hidden = false;
    input.value = "";
    input.focus();
    const done = (value) => { box.hidden = true; $("token-ok").onclick = null; $("token-cancel").onclick = null; resolve(value); };
    $("token-ok").onclick = () => done(input.value.trim() || null);
    $("token-cancel").onclick = () => done(null);
    input.onkeydown = (ev) => { if (ev.key === "Enter") done(input.value.trim() || null); };
  });
}

async function review(id, verdict) {
  let token = sessionStorage.getItem(TOKEN_KEY) || await askToken();
  if (!token) return;
  for (let attempt = 0; attempt < 2; attempt++) {
    const r = await fetch(`/api/events/${encodeURIComponent(id)}/review`, {
      method: "POST", headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ verdict, note: "" }),
    });
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      token = await askToken("that token was refused");
      if (!token) return;
      continue;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      setStatus(`review refused: ${body.error || r.status}`, true);
    }
    break;
  }
  poll();
}

// ------------------------------------------------------------------ polling
function setStatus(text, bad) { const s = $("status"); s.textContent = text; s.className = bad ? "bad" : ""; }

async function poll() {
  clearTimeout(timer);
  try {
    const asOf = new URLSearchParams(location.search).get("as_of");
    const r = await fetch("/api/state" + (asOf ? `?as_of=${encodeURIComponent(asOf)}` : ""), { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const s = await r.json();
    pollMs = (s.poll_s || 3) * 1000;
    drawHeader(s); drawMap(s); drawCameras(s); drawScenarios(s); drawAccuracy(s); drawAlerts(s);
    document.body.dataset.generated = s.generated;
    setStatus(`live · updated ${new Date().toLocaleTimeString("en-GB")}`, false);
  } catch (err) {
    setStatus(`offline: ${err.message} (retrying)`, true);
  } finally {
    timer = setTimeout(poll, pollMs);
  }
}

document.addEventListener("DOMContentLoaded", poll);
