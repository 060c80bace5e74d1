// hts plate browser: one script, no build step, no library. Pages are routes of the URL's #fragment:
//   #/                                   plates
//   #/plate/P?metric=M&run=R&by=role     plate heatmap
//   #/plate/P/well/W?metric=M            well: fields, numbers, dose-response, cells
//   #/plate/P/well/W/field/F?x=&y=       field viewer (pan, zoom, channels, outlines, click a cell)
//   #/query                              read-only SQL
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const main = () => $("#main");
let pageTimer = null; // the current page's polling timer (cleared on navigation)

// ---------------------------------------------------------------------------- small helpers
function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
  return el;
}
const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...kids) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v);
  }
  for (const kid of kids.flat()) if (kid) el.append(kid);
  return el;
}
const enc = encodeURIComponent;
function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(3);
    return String(Number(v.toPrecision(4)));
  }
  if (Array.isArray(v)) return v.join(", ");
  return String(v);
}
function put(el, ...kids) { el.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false)); }
function showError(msg) {
  const el = $("#error");
  el.textContent = msg;
  el.hidden = !msg;
}
async function api(path, params) {
  const q = params ? "?" + new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "")) : "";
  const r = await fetch(path + q, { credentials: "same-origin" });
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}
function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), q: new URLSearchParams(query || "") };
}
function link(parts, q) {
  const qs = q ? new URLSearchParams(Object.entries(q).filter(([, v]) => v !== undefined && v !== null && v !== "")).toString() : "";
  return "#/" + parts.map(enc).join("/") + (qs ? "?" + qs : "");
}
function crumbs(items) {
  const el = $("#crumbs");
  el.replaceChildren(...items.flatMap((it, i) => [i ? " › " : "", it[1] ? h("a", { href: it[1] }, it[0]) : it[0]]));
}
function table(columns, rows, opts = {}) {
  const head = h("tr", {}, columns.map((c) => h("th", {}, c)));
  const body = rows.map((r, i) => {
    const tr = h("tr", { class: opts.onRow ? "clickable" : null }, r.map((v) => h("td", {}, fmt(v))));
    if (opts.onRow) tr.addEventListener("click", () => opts.onRow(r, i));
    return tr;
  });
  return h("table", { class: "data", id: opts.id }, h("thead", {}, head), h("tbody", {}, body));
}
function badge(text, cls) { return h("span", { class: "badge " + (cls || text || "") }, text || "–"); }
function bar(done, total) {
  const pct = total ? Math.round((100 * done) / total) : 0;
  return h("span", {}, h("span", { class: "progress" }, h("span", { style: `width:${pct}%` })), ` ${done}/${total}`);
}
const tip = {
  show(ev, lines) {
    const el = $("#tooltip");
    el.replaceChildren(...lines.flatMap((l, i) => [i ? h("br") : "", l]));
    el.hidden = false;
    el.style.left = ev.clientX + 14 + "px";
    el.style.top = ev.clientY + 12 + "px";
  },
  hide() { $("#tooltip").hidden = true; },
};

// viridis, 9 stops
const VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"];
function viridis(t) {
  t = Math.min(1, Math.max(0, t));
  const x = t * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - i;
  const a = VIRIDIS[i], b = VIRIDIS[i + 1];
  const c = [1, 3, 5].map((k) => Math.round(parseInt(a.substr(k, 2), 16) * (1 - f) + parseInt(b.substr(k, 2), 16) * f));
  return `rgb(${c.join(",")})`;
}
const ROLE_COLORS = { negative_control: "#2166ac", positive_control: "#b2182b", sample: "#9e9e9e", empty: "#ffffff" };
function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  const p = (sorted.length - 1) * q, lo = Math.floor(p), hi = Math.ceil(p);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (p - lo);
}

// ---------------------------------------------------------------------------- router
async function route() {
  if (pageTimer) { clearTimeout(pageTimer); pageTimer = null; }
  tip.hide();
  showError("");
  const { parts, q } = parseHash();
  try {
    if (parts.length === 0) return await platesPage();
    if (parts[0] === "query") return await queryPage(q);
    if (parts[0] === "plate" && parts.length === 2) return await platePage(parts[1], q);
    if (parts[0] === "plate" && parts[2] === "well" && parts.length === 4) return await wellPage(parts[1], parts[3], q);
    if (parts[0] === "plate" && parts[4] === "field" && parts.length === 6) return await fieldPage(parts[1], parts[3], Number(parts[5]), q);
    main().replaceChildren(h("p", {}, "No such page. ", h("a", { href: "#/" }, "All plates")));
  } catch (e) {
    showError(e.message);
    if (!main().firstChild || main().textContent === "loading…") main().replaceChildren(h("p", { class: "muted" }, h("a", { href: "#/" }, "Back to the plates")));
  }
}
window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);

// ---------------------------------------------------------------------------- plates
async function platesPage() {
  crumbs([["Plates"]]);
  const data = await api("/api/plates");
  $("#catalog").textContent = data.catalog;
  if (!data.plates.length) {
    main().replaceChildren(h("h1", {}, "Plates"), h("p", {}, "No plates in this catalog yet: run ", h("code", {}, "hts ingest SOURCE"), "."));
    return;
  }
  const rows = data.plates.map((p) => [
    h("a", { href: link(["plate", p.name]) }, p.name), p.plate_type, p.wells, `${p.fields_complete}/${p.fields}`, p.cells, p.runs,
    p.qc ? h("span", {}, badge(p.qc.quality), ` Z′ ${fmt(p.qc.z_prime)}`) : "no run yet",
    p.qc ? `${p.qc.flagged_fields} fields, ${p.qc.flagged_wells} wells` : "–",
    p.running ? badge("running") : badge(p.status === "complete" ? "complete" : p.status),
    p.channels,
  ]);
  const t = h("table", { class: "data", id: "plates-table" },
    h("thead", {}, h("tr", {}, ["plate", "format", "wells", "fields", "cells", "runs", "QC (cell count)", "flagged", "status", "channels"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((v) => h("td", {}, v instanceof Node ? v : fmt(v)))))));
  main().replaceChildren(h("h1", {}, "Plates"), h("div", { class: "scroll" }, t),
    h("p", { class: "muted" }, "QC: Z′ of the cell count between the platemap's control wells in the newest finished run; a plate page shows it for any metric."));
}

// ---------------------------------------------------------------------------- plate page
async function platePage(plate, q) {
  const metric = q.get("metric") || "cell_count", run = q.get("run") || "", by = q.get("by") || "metric";
  crumbs([["Plates", "#/"], [plate]]);
  const [data, metrics] = await Promise.all([
    api(`/api/plates/${enc(plate)}`, { metric, run }),
    api(`/api/plates/${enc(plate)}/metrics`, { run }),
  ]);
  const go = (changes) => { location.hash = link(["plate", plate], Object.assign({ metric, run, by }, changes)); };
  const input = h("input", { type: "search", id: "metric", class: "wide", list: "metric-list", value: metric, placeholder: "type to search metrics…" });
  input.addEventListener("change", () => { if (metrics.metrics.includes(input.value)) go({ metric: input.value }); else showError(`no per-well metric ${input.value}`); });
  const runSel = h("select", { id: "run", onchange: (e) => go({ run: e.target.value }) },
    data.runs.map((r) => h("option", { value: r.run_id, selected: data.run && r.run_id === data.run.run_id ? true : null }, `${r.engine} ${r.run_id.slice(0, 8)} (${r.state})`)));
  const bySel = h("select", { id: "color-by", onchange: (e) => go({ by: e.target.value }) },
    h("option", { value: "metric", selected: by === "metric" || null }, "metric"), h("option", { value: "role", selected: by === "role" || null }, "platemap role"));
  const controls = h("div", { class: "controls" },
    h("label", {}, "Metric ", input, h("datalist", { id: "metric-list" }, metrics.metrics.map((m) => h("option", { value: m })))),
    data.runs.length ? h("label", {}, "Run ", runSel) : null, h("label", {}, "Colour by ", bySel));
  const heat = h("div", { id: "heatmap" });
  const side = h("div", { class: "side" }, h("div", { class: "panel", id: "qc" }), h("div", { id: "activity" }), h("h2", {}, "Runs"), h("div", { id: "runs" }));
  put(main(), h("h1", {}, `Plate ${data.plate}`, h("span", { class: "muted" }, ` · ${data.plate_type} wells`)), controls, h("div", { class: "row" }, heat, side));
  const draw = (d) => { drawHeatmap(heat, d, by, plate, metric); drawQC($("#qc"), d); drawActivity($("#activity"), d, plate); drawRuns($("#runs"), d.runs); };
  draw(data);
  // live: while ingest or a run is going, poll its progress and redraw when fields complete
  // (every 2 s while something runs, every 5 s otherwise, so a run started later is picked up too)
  let version = null;
  const here = location.hash;
  const poll = async () => {
    let active = false;
    try {
      const p = await api(`/api/plates/${enc(plate)}/progress`);
      if (location.hash !== here) return;
      if (version !== null && p.version !== version) draw(await api(`/api/plates/${enc(plate)}`, { metric, run }));
      else drawRuns($("#runs"), p.runs);
      version = p.version;
      active = p.active;
      $("#runs").dataset.version = p.version;
    } catch (e) { showError(e.message); }
    if (location.hash === here) pageTimer = setTimeout(poll, active ? 2000 : 5000);
  };
  await poll();
}

function drawRuns(el, runs) {
  if (!runs.length) { el.replaceChildren(h("p", { class: "muted" }, "No segmentation run yet: run ", h("code", {}, "hts segment"), ".")); return; }
  el.replaceChildren(...runs.map((r) => h("div", { class: "panel run", dataset: { run: r.run_id, state: r.state } },
    h("div", {}, h("b", {}, r.engine), " ", h("span", { class: "muted" }, r.run_id.slice(0, 8)), " ", badge(r.state)),
    h("div", {}, bar(r.fields_done, r.fields), ` fields · ${r.cells} cells`),
    r.error ? h("div", { class: "muted" }, r.error) : null)));
}

// Phenotypic activity (hts profile + hts activity) of the run shown: hits first; a row opens the treatment's first well.
function drawActivity(el, d, plate) {
  const a = d.activity;
  if (!a) { el.replaceChildren(); return; }
  const rows = a.treatments.slice(0, 15).map((t) => {
    const tr = h("tr", { class: t.hit ? "hit" : "", dataset: { compound: t.compound, hit: String(t.hit) } },
      h("td", {}, t.compound), h("td", { class: "num" }, `${fmt(t.concentration)} ${t.unit || ""}`),
      h("td", { class: "num" }, fmt(t.map)), h("td", { class: "num" }, fmt(t.q)), h("td", {}, t.hit ? badge("hit") : ""));
    if (t.wells.length) { tr.style.cursor = "pointer"; tr.addEventListener("click", () => { location.hash = link(["plate", plate, "well", t.wells[0]]); }); }
    return tr;
  });
  el.replaceChildren(h("div", { class: "panel" },
    h("b", {}, "Phenotypic activity"), " ", h("span", { id: "activity-hits" }, `${a.n_hits} of ${a.n_treatments} treatments active`),
    h("span", { class: "muted" }, ` (q < ${fmt(a.q_threshold)}, profile set ${a.profile_set_id.slice(0, 8)})`),
    h("table", { id: "activity-table" }, h("thead", {}, h("tr", {}, ["treatment", "conc.", "mAP", "q", ""].map((c) => h("th", {}, c)))), h("tbody", {}, rows)),
    a.treatments.length > 15 ? h("div", { class: "muted" }, `… ${a.treatments.length - 15} more: hts query --preset hits`) : null));
}

function drawQC(el, d) {
  if (!d.qc) { el.replaceChildren(h("b", {}, "QC"), h("p", { class: "muted" }, "no segmentation run yet")); return; }
  const q = d.qc;
  const n = (g) => (g && g.wells) || 0;
  el.replaceChildren(
    h("b", {}, `QC of ${d.metric}`),
    n(q.positive) && n(q.negative)
      ? h("div", {}, h("span", { id: "zprime" }, `Z′ ${fmt(q.z_prime)}`), " ", badge(q.quality), h("br"), `SSMD ${fmt(q.ssmd)}`, h("br"),
        h("span", { class: "muted" }, `${n(q.positive)} positive vs ${n(q.negative)} negative control wells`))
      : h("div", { class: "muted" }, "no control wells in the platemap (annotate it: hts annotate PLATE --platemap FILE)"),
    h("div", {}, `${q.flagged_fields} fields flagged`, q.flagged_wells.length ? ` · wells outlined in red: ${q.flagged_wells.map((w) => w.well).join(", ")}` : ""));
}

function drawHeatmap(el, d, by, plate, metric) {
  const nr = d.rows.length, nc = d.columns.length;
  const cell = nc <= 12 ? 44 : nc <= 24 ? 26 : 15, pad = 30, gap = nc <= 24 ? 2 : 1;
  const W = pad + nc * cell + 10, H = pad + nr * cell + 70;
  const vals = d.wells.map((w) => w.value).filter((v) => v !== null && v !== undefined && Number.isFinite(v)).sort((a, b) => a - b);
  let lo = quantile(vals, 0.02), hi = quantile(vals, 0.98);
  if (!(hi > lo)) { lo = vals[0]; hi = vals[vals.length - 1]; }
  const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-metric": metric });
  const small = nc > 24;
  d.columns.forEach((c, j) => { if (!small || j % 2 === 0) svg.append(s("text", { x: pad + j * cell + cell / 2, y: pad - 8, "text-anchor": "middle", "font-size": small ? 9 : 11, fill: "#555", text: String(Number(c)) })); });
  d.rows.forEach((r, i) => { if (!small || i % 2 === 0) svg.append(s("text", { x: pad - 8, y: pad + i * cell + cell / 2 + 4, "text-anchor": "end", "font-size": small ? 9 : 11, fill: "#555", text: r })); });
  // empty plate positions first (not imaged)
  for (let i = 0; i < nr; i++) for (let j = 0; j < nc; j++)
    svg.append(s("rect", { x: pad + j * cell + gap / 2, y: pad + i * cell + gap / 2, width: cell - gap, height: cell - gap, rx: small ? 1 : 3, fill: "#f2f2f2", stroke: "#e3e3e3" }));
  for (const w of d.wells) {
    const v = w.value;
    let fill;
    if (by === "role") fill = ROLE_COLORS[w.role] || "#dddddd";
    else fill = v === null || v === undefined ? "#cfcfcf" : viridis(hi > lo ? (v - lo) / (hi - lo) : 0.5);
    const flagged = (w.flags && w.flags.length) || w.flag;
    const rect = s("rect", {
      class: "well" + (flagged ? " flagged" : ""), "data-well": w.well, "data-value": v === null ? "" : v,
      x: pad + w.column_index * cell + gap / 2, y: pad + w.row_index * cell + gap / 2, width: cell - gap, height: cell - gap, rx: small ? 1 : 3, fill,
    });
    rect.addEventListener("mousemove", (ev) => tip.show(ev, [
      `${w.well}${w.role ? " · " + w.role.replace("_", " ") : ""}`,
      w.compound ? `${w.compound}${w.concentration !== null ? " " + fmt(w.concentration) + " " + (w.unit || "") : ""}` : "no platemap entry",
      `${metric}: ${fmt(v)}`,
      `${w.fields_complete}/${w.n_fields} fields`,
      ...(w.flags && w.flags.length ? [`flags: ${w.flags.join(", ")}`] : []),
      ...(w.flag ? [w.flag] : []),
    ]));
    rect.addEventListener("mouseleave", tip.hide);
    rect.addEventListener("click", () => { tip.hide(); location.hash = link(["plate", plate, "well", w.well], { metric, run: d.run ? d.run.run_id : "" }); });
    svg.append(rect);
  }
  // legend
  const ly = pad + nr * cell + 18, lw = Math.min(260, nc * cell);
  if (by === "role") {
    let x = pad;
    for (const [role, c] of Object.entries(ROLE_COLORS)) {
      svg.append(s("rect", { x, y: ly, width: 12, height: 12, fill: c, stroke: "#999" }));
      svg.append(s("text", { x: x + 16, y: ly + 10, "font-size": 11, text: role.replace("_", " ") }));
      x += 16 + role.length * 6.5 + 14;
    }
  } else if (vals.length) {
    const grad = s("linearGradient", { id: "lg" }, ...VIRIDIS.map((c, i) => s("stop", { offset: `${(100 * i) / (VIRIDIS.length - 1)}%`, "stop-color": c })));
    svg.append(s("defs", {}, grad), s("rect", { x: pad, y: ly, width: lw, height: 10, fill: "url(#lg)" }),
      s("text", { x: pad, y: ly + 24, "font-size": 11, text: fmt(lo), id: "legend-lo" }),
      s("text", { x: pad + lw, y: ly + 24, "font-size": 11, "text-anchor": "end", text: fmt(hi), id: "legend-hi" }),
      s("text", { x: pad, y: ly + 40, "font-size": 11, fill: "#555", text: `${metric.length > 60 ? metric.slice(0, 58) + "…" : metric}: 2nd–98th percentile; grey: no value` }));
  } else {
    svg.append(s("text", { x: pad, y: ly + 10, "font-size": 12, fill: "#555", text: d.run ? `no values of ${metric}` : "not segmented yet: wells imaged shown in grey" }));
  }
  el.replaceChildren(svg);
}

// ---------------------------------------------------------------------------- well page
async function wellPage(plate, well, q) {
  const metric = q.get("metric") || "cell_count", run = q.get("run") || "";
  crumbs([["Plates", "#/"], [plate, link(["plate", plate], { metric, run })], [well]]);
  const d = await api(`/api/plates/${enc(plate)}/wells/${enc(well)}`, { metric, run });
  const pm = d.platemap;
  const title = h("h1", { id: "well-title" }, `Well ${d.well}`, h("span", { class: "muted" },
    pm ? ` · ${pm.compound || "no compound"}${pm.concentration !== null ? " " + fmt(pm.concentration) + " " + (pm.unit || "") : ""}${pm.role ? " · " + pm.role.replace("_", " ") : ""}` : " · not in the platemap"));
  const thumbs = h("div", { class: "thumbs" }, d.fields.map((f) => {
    const flagged = f.flags && f.flags.length;
    const el = h("div", { class: "thumb" + (flagged ? " flagged" : ""), dataset: { field: f.field_index } },
      f.status === "complete" ? h("img", { src: `/api/plates/${enc(plate)}/wells/${enc(d.well)}/fields/${f.field_index}/thumb.jpg`, alt: `field ${f.field_index}` }) : h("div", { class: "muted" }, "not written yet"),
      h("div", {}, `field ${f.field_index}` + (f.cell_count !== undefined && f.cell_count !== null ? ` · ${f.cell_count} cells` : "")),
      flagged ? h("div", { class: "muted" }, f.flags.join(", ")) : null);
    el.addEventListener("click", () => { location.hash = link(["plate", plate, "well", d.well, "field", String(f.field_index)], { metric, run }); });
    return el;
  }));
  const statsBox = h("div", { id: "stats" });
  const statFilter = h("input", { type: "search", placeholder: "filter numbers…", id: "stats-filter" });
  const drawStats = () => {
    const f = statFilter.value.toLowerCase();
    const entries = Object.entries(d.stats).filter(([k]) => !f || k.toLowerCase().includes(f));
    entries.sort((a, b) => (b[0] === metric) - (a[0] === metric));
    statsBox.replaceChildren(h("div", { class: "scroll", style: "max-height:300px" }, table(["metric", "value"], entries.slice(0, 400), { id: "stats-table" })));
  };
  statFilter.addEventListener("input", drawStats);
  drawStats();
  const left = h("div", {}, h("h2", {}, "Fields"), thumbs, h("h2", {}, "Dose response"), h("div", { class: "chart", id: "dose" }, doseChart(d.dose, metric)));
  const right = h("div", { class: "side wide" }, h("h2", {}, "Numbers"), statFilter, statsBox);
  put(main(), title, d.run ? null : h("p", { class: "muted" }, "Not segmented yet."), h("div", { class: "row" }, left, right), cellsSection(plate, d.well, d.run, metric, run));
}

function doseChart(dose, metric) {
  if (!dose) return h("p", { class: "muted" }, "No dose series for this well (not a sample well with a compound and concentration).");
  const pts = dose.points.filter((p) => p.value !== null);
  const W = 460, H = 300, L = 62, R = 14, T = 28, B = 44;
  const pos = pts.filter((p) => p.concentration > 0).map((p) => Math.log10(p.concentration));
  const xmin = Math.min(...pos) - 0.8, xmax = Math.max(...pos) + 0.3;
  const ys = pts.map((p) => p.value).concat(dose.curve.map((c) => c[1]));
  let ymin = Math.min(...ys), ymax = Math.max(...ys);
  const padY = (ymax - ymin) * 0.08 || 1; ymin -= padY; ymax += padY;
  const X = (lc) => L + ((lc - xmin) / (xmax - xmin)) * (W - L - R);
  const Y = (v) => T + (1 - (v - ymin) / (ymax - ymin)) * (H - T - B);
  const zeroX = X(xmin + 0.25);
  const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  svg.append(s("text", { x: L, y: 16, "font-size": 12, "font-weight": 600, text: `${dose.compound}: ${metric}` }));
  svg.append(s("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#888" }), s("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#888" }));
  for (let e = Math.ceil(xmin + 0.6); e <= Math.floor(xmax); e++) {
    svg.append(s("line", { x1: X(e), y1: H - B, x2: X(e), y2: H - B + 4, stroke: "#888" }), s("text", { x: X(e), y: H - B + 16, "font-size": 10, "text-anchor": "middle", text: fmt(10 ** e) }));
  }
  svg.append(s("text", { x: zeroX, y: H - B + 16, "font-size": 10, "text-anchor": "middle", text: "0" }));
  svg.append(s("text", { x: (L + W - R) / 2, y: H - 8, "font-size": 11, "text-anchor": "middle", text: `concentration (${dose.unit}, log scale; 0 = vehicle)` }));
  for (let k = 0; k <= 4; k++) { const v = ymin + ((ymax - ymin) * k) / 4; svg.append(s("text", { x: L - 6, y: Y(v) + 3, "font-size": 10, "text-anchor": "end", text: fmt(v) })); }
  if (dose.curve.length) svg.append(s("polyline", { points: dose.curve.map(([c, v]) => `${X(Math.log10(c))},${Y(v)}`).join(" "), fill: "none", stroke: "#0b63c5", "stroke-width": 2 }));
  for (const p of pts) {
    const cx = p.concentration > 0 ? X(Math.log10(p.concentration)) : zeroX + (Math.random() - 0.5) * 10;
    const me = p.well === dose.well;
    svg.append(s("circle", { cx, cy: Y(p.value), r: me ? 7 : 3.5, fill: me ? "#c62828" : p.vehicle ? "#999" : "#333", stroke: me ? "#fff" : null, "stroke-width": me ? 2 : null, class: me ? "this-well" : null }, s("title", { text: `${p.well}: ${fmt(p.value)}` })));
  }
  const f = dose.fit;
  const caption = f.ok ? `4PL fit: EC50 ${fmt(f.ec50)} ${dose.unit}, Hill ${fmt(f.hill)}, R² ${fmt(f.r2)}` : `no usable 4PL fit (${f.reason || "?"})`;
  return h("div", {}, svg, h("div", { class: "muted", id: "dose-fit" }, caption, " · red: this well; grey: vehicle wells"));
}

function cellsSection(plate, well, runRow, metric, run) {
  const box = h("div", { id: "cells" });
  if (!runRow) return box;
  const where = h("input", { type: "search", id: "cells-where", class: "wide", placeholder: "SQL condition, e.g. Nuclei_AreaShape_Area > 300" });
  const cols = h("input", { type: "search", id: "cells-columns", placeholder: "columns containing…", value: "Area" });
  const count = h("span", { id: "cells-count", class: "muted" });
  const csv = h("a", { id: "cells-csv", href: "#" }, "CSV"), pq = h("a", { id: "cells-parquet", href: "#" }, "Parquet");
  const out = h("div", { class: "scroll", id: "cells-out" });
  const base = `/api/plates/${enc(plate)}/wells/${enc(well)}/cells`;
  const load = async () => {
    showError("");
    const params = { where: where.value, run };
    const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v)).toString();
    csv.href = `${base}.csv${qs ? "?" + qs : ""}`; pq.href = `${base}.parquet${qs ? "?" + qs : ""}`;
    try {
      const d = await api(base, params);
      const key = ["field_index", "object_id", "Location_Center_X", "Location_Center_Y"];
      const f = cols.value.toLowerCase();
      const extra = d.columns.filter((c) => !key.includes(c) && !["plate_id", "run_id", "well", "t", "nucleus_id"].includes(c) && (!f || c.toLowerCase().includes(f))).slice(0, 24);
      const show = key.concat(extra).filter((c) => d.columns.includes(c));
      const idx = show.map((c) => d.columns.indexOf(c));
      count.textContent = `${d.total} cells match` + (d.total > d.rows.length ? ` (first ${d.rows.length} shown; downloads have all)` : "");
      out.replaceChildren(table(show, d.rows.map((r) => idx.map((i) => r[i])), {
        id: "cells-table",
        onRow: (r) => { location.hash = link(["plate", plate, "well", well, "field", String(r[0])], { x: fmt(r[2]), y: fmt(r[3]), metric, run }); },
      }));
    } catch (e) { count.textContent = ""; showError(e.message); }
  };
  where.addEventListener("keydown", (e) => { if (e.key === "Enter") load(); });
  cols.addEventListener("keydown", (e) => { if (e.key === "Enter") load(); });
  box.append(h("h2", {}, "Cells"), h("div", { class: "controls" }, h("label", {}, "WHERE ", where), h("button", { id: "cells-apply", onclick: load }, "Filter"), h("label", {}, "show ", cols), count, h("span", {}, "download: ", csv, " · ", pq)), out,
    h("p", { class: "muted" }, "Click a row to open its field centred on the cell."));
  load();
  return box;
}

// ---------------------------------------------------------------------------- field viewer
async function fieldPage(plate, well, field, q) {
  const metric = q.get("metric") || "", run = q.get("run") || "";
  crumbs([["Plates", "#/"], [plate, link(["plate", plate], { metric, run })], [well, link(["plate", plate, "well", well], { metric, run })], [`field ${field}`]]);
  const m = await api(`/api/plates/${enc(plate)}/wells/${enc(well)}/fields/${field}`);
  const base = `/api/plates/${enc(plate)}/wells/${enc(m.well)}/fields/${field}`;
  const canvas = h("canvas", { id: "viewer" });
  const status = h("div", { id: "viewer-status" });
  const cellPanel = h("div", { id: "cell-panel", class: "panel" }, h("span", { class: "muted" }, "Click a cell to see its features."));
  const chanBox = h("div", {}, h("b", {}, "Channels"));
  const labBox = h("div", {}, h("b", {}, "Outlines"));
  const v = new Viewer(canvas, m, base, status);
  for (const c of m.channels) {
    const cb = h("input", { type: "checkbox", checked: c.active || null, dataset: { channel: c.index } });
    const slider = h("input", { type: "range", min: 0, max: 100, value: 50, title: "brightness", dataset: { channelContrast: c.index } });
    cb.addEventListener("change", () => v.setChannel(c.index, cb.checked));
    slider.addEventListener("change", () => v.setContrast(c.index, Number(slider.value)));
    chanBox.append(h("div", {}, h("label", {}, cb, h("span", { class: "swatch", style: `background:#${c.color.replace("#", "")}` }), c.label), " ", slider));
  }
  if (!m.labels.length) labBox.append(h("div", { class: "muted" }, "none (not segmented yet)"));
  for (const name of m.labels) {
    const cb = h("input", { type: "checkbox", checked: true, dataset: { label: name } });
    cb.addEventListener("change", () => v.setLabel(name, cb.checked));
    labBox.append(h("div", {}, h("label", {}, cb, h("span", { class: "swatch", style: `background:${m.label_colors[name]}` }), name)));
  }
  const info = h("div", { class: "muted" }, `${m.shape[4]} × ${m.shape[3]} px` + (m.pixel_size_um ? ` · ${fmt(m.pixel_size_um)} µm/px` : "") + ` · ${m.levels} pyramid level${m.levels > 1 ? "s" : ""}` + (m.shape[2] > 1 ? ` · ${m.shape[2]} z planes (max projection)` : ""));
  main().replaceChildren(h("h1", {}, `${m.plate} ${m.well} · field ${m.field_index}`), info,
    h("div", { class: "row" }, h("div", { id: "viewer-wrap" }, canvas, status), h("div", { class: "side" }, h("div", { class: "panel" }, chanBox, h("br"), labBox), h("h2", {}, "Cell"), cellPanel)));
  v.onCell = async (x, y) => {
    try {
      const r = await api(`${base}/cell`, { x, y });
      showCell(cellPanel, r.hit);
      v.mark = r.hit ? { x: r.hit.cell ? r.hit.cell.Location_Center_X : x, y: r.hit.cell ? r.hit.cell.Location_Center_Y : y } : null;
      v.draw();
    } catch (e) { showError(e.message); }
  };
  v.start();
  if (q.get("x") && q.get("y")) {
    const x = Number(q.get("x")), y = Number(q.get("y"));
    v.centerOn(x, y, 1);
    v.onCell(x, y);
  }
}

function showCell(panel, hit) {
  if (!hit) { panel.replaceChildren(h("span", { class: "muted" }, "background (no object here)")); return; }
  if (!hit.cell) { panel.replaceChildren(h("div", {}, `${hit.label} ${hit.value}: not measured (run hts measure)`)); return; }
  const c = hit.cell;
  const filter = h("input", { type: "search", placeholder: "filter features…" });
  const box = h("div", { class: "scroll", style: "max-height:52vh" });
  const keys = Object.keys(c).filter((k) => !["plate_id", "run_id"].includes(k));
  const draw = () => { const f = filter.value.toLowerCase(); box.replaceChildren(table(["feature", "value"], keys.filter((k) => !f || k.toLowerCase().includes(f)).map((k) => [k, c[k]]), { id: "cell-table" })); };
  filter.addEventListener("input", draw);
  draw();
  panel.replaceChildren(h("div", { id: "cell-title", dataset: { objectId: c.object_id } }, h("b", {}, `${hit.label} ${hit.value}`), ` · object ${c.object_id}`), filter, box);
}

// A tiled pan-and-zoom viewer on a canvas: tiles of the pyramid level nearest the zoom, outlines on top.
class Viewer {
  constructor(canvas, meta, base, status) {
    Object.assign(this, { canvas, meta, base, status });
    this.ctx = canvas.getContext("2d");
    this.channels = new Set(meta.channels.filter((c) => c.active).map((c) => c.index));
    this.contrast = {};
    this.labels = new Set(meta.labels);
    this.cache = new Map();
    this.scale = 1; this.ox = 0; this.oy = 0; // screen px per level-0 px; level-0 coordinate at the canvas origin
    this.mark = null;
    this.loaded = 0;
  }
  start() {
    const resize = () => { const r = this.canvas.getBoundingClientRect(); this.canvas.width = Math.max(100, Math.round(r.width)); this.canvas.height = Math.max(100, Math.round(r.height)); };
    resize();
    this.fit();
    new ResizeObserver(() => { resize(); this.draw(); }).observe(this.canvas);
    let drag = null;
    this.canvas.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, ox: this.ox, oy: this.oy, moved: false }; this.canvas.classList.add("dragging"); });
    window.addEventListener("mouseup", (e) => {
      if (!drag) return;
      this.canvas.classList.remove("dragging");
      if (!drag.moved && this.onCell) { const p = this.toImage(e); this.onCell(p.x, p.y); }
      drag = null;
    });
    this.canvas.addEventListener("mousemove", (e) => {
      const p = this.toImage(e);
      this.status.textContent = `x ${Math.floor(p.x)}, y ${Math.floor(p.y)} · zoom ${fmt(this.scale)}× · level ${this.level()}`;
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      this.ox = drag.ox - dx / this.scale; this.oy = drag.oy - dy / this.scale;
      this.draw();
    });
    this.canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const p = this.toImage(e), k = Math.exp(-e.deltaY * 0.0015);
      this.scale = Math.min(16, Math.max(this.fitScale() / 2, this.scale * k));
      const r = this.canvas.getBoundingClientRect();
      this.ox = p.x - (e.clientX - r.left) * (this.canvas.width / r.width) / this.scale;
      this.oy = p.y - (e.clientY - r.top) * (this.canvas.height / r.height) / this.scale;
      this.draw();
    }, { passive: false });
    this.draw();
  }
  toImage(e) {
    const r = this.canvas.getBoundingClientRect();
    return { x: this.ox + ((e.clientX - r.left) * (this.canvas.width / r.width)) / this.scale, y: this.oy + ((e.clientY - r.top) * (this.canvas.height / r.height)) / this.scale };
  }
  fitScale() { return Math.min(this.canvas.width / this.meta.shape[4], this.canvas.height / this.meta.shape[3]); }
  fit() {
    this.scale = this.fitScale();
    this.ox = -(this.canvas.width / this.scale - this.meta.shape[4]) / 2;
    this.oy = -(this.canvas.height / this.scale - this.meta.shape[3]) / 2;
  }
  centerOn(x, y, scale) {
    this.scale = scale;
    this.ox = x - this.canvas.width / 2 / scale; this.oy = y - this.canvas.height / 2 / scale;
    this.mark = { x, y };
    this.draw();
  }
  level() { return Math.max(0, Math.min(this.meta.levels - 1, Math.floor(Math.log2(1 / this.scale) + 1e-9))); }
  setChannel(i, on) { on ? this.channels.add(i) : this.channels.delete(i); this.draw(); }
  setLabel(n, on) { on ? this.labels.add(n) : this.labels.delete(n); this.draw(); }
  setContrast(i, v) {
    const c = this.meta.channels[i], [lo, hi] = c.window;
    this.contrast[i] = [lo, lo + (hi - lo) * Math.pow(2, (50 - v) / 25)];
    this.draw();
  }
  imageQuery() {
    const ch = [...this.channels].sort((a, b) => a - b);
    const win = ch.filter((c) => this.contrast[c]).map((c) => `${c}:${this.contrast[c][0]}:${this.contrast[c][1]}`).join(",");
    return `c=${ch.join(",")}` + (win ? `&win=${win}` : "");
  }
  tile(url) {
    let img = this.cache.get(url);
    if (!img) {
      img = new Image();
      img.onload = () => { this.loaded++; this.canvas.dataset.tilesLoaded = this.loaded; this.draw(); };
      img.onerror = () => { img.failed = true; };
      img.src = url;
      this.cache.set(url, img);
      if (this.cache.size > 600) this.cache.delete(this.cache.keys().next().value);
    }
    return img.complete && img.naturalWidth && !img.failed ? img : null;
  }
  draw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.paint(); });
  }
  paint() {
    const { ctx, canvas, meta } = this, L = this.level(), f = 2 ** L, T = meta.tile;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = this.scale < 1 / f;
    const lw = Math.ceil(meta.shape[4] / f), lh = Math.ceil(meta.shape[3] / f);
    const c0 = Math.max(0, Math.floor(this.ox / f / T)), c1 = Math.min(Math.ceil(lw / T) - 1, Math.floor((this.ox + canvas.width / this.scale) / f / T));
    const r0 = Math.max(0, Math.floor(this.oy / f / T)), r1 = Math.min(Math.ceil(lh / T) - 1, Math.floor((this.oy + canvas.height / this.scale) / f / T));
    const layers = [];
    if (this.channels.size) layers.push((r, c) => `${this.base}/tiles/${L}/${r}/${c}.jpg?${this.imageQuery()}`);
    for (const n of meta.labels) if (this.labels.has(n)) layers.push((r, c) => `${this.base}/labels/${encodeURIComponent(n)}/${L}/${r}/${c}.png`);
    for (const url of layers) {
      for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) {
        const img = this.tile(url(r, c));
        if (!img) continue;
        const x = (c * T * f - this.ox) * this.scale, y = (r * T * f - this.oy) * this.scale;
        ctx.drawImage(img, Math.round(x), Math.round(y), Math.round(img.naturalWidth * f * this.scale), Math.round(img.naturalHeight * f * this.scale));
      }
    }
    if (this.mark) {
      const x = (this.mark.x - this.ox) * this.scale, y = (this.mark.y - this.oy) * this.scale;
      ctx.strokeStyle = "#ff3d3d"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(x, y, 14, 0, 2 * Math.PI); ctx.moveTo(x - 22, y); ctx.lineTo(x - 8, y); ctx.moveTo(x + 8, y); ctx.lineTo(x + 22, y); ctx.stroke();
    }
    if (meta.pixel_size_um) this.scaleBar();
  }
  scaleBar() {
    const { ctx, canvas } = this, umPerScreenPx = this.meta.pixel_size_um / this.scale;
    const target = 120 * umPerScreenPx, p = 10 ** Math.floor(Math.log10(target));
    const len = [1, 2, 5, 10].map((k) => k * p).filter((v) => v <= target).pop() || p;
    const px = len / umPerScreenPx, x = 16, y = canvas.height - 18;
    ctx.fillStyle = "rgba(0,0,0,0.5)"; ctx.fillRect(x - 6, y - 18, px + 12, 28);
    ctx.fillStyle = "#fff"; ctx.fillRect(x, y, px, 4);
    ctx.font = "12px system-ui, sans-serif"; ctx.fillText(`${fmt(len)} µm`, x, y - 5);
  }
}

// ---------------------------------------------------------------------------- query
async function queryPage(q) {
  crumbs([["Query"]]);
  const { presets } = await api("/api/presets");
  const ta = h("textarea", { id: "sql", spellcheck: "false" }, q.get("sql") || "SELECT plate, well, compound, concentration, cell_count\nFROM well_stats\nORDER BY plate, well");
  const sel = h("select", { id: "preset" }, h("option", { value: "" }, "presets…"), presets.map((p) => h("option", { value: p.name, title: p.about }, p.name)));
  sel.addEventListener("change", () => { const p = presets.find((x) => x.name === sel.value); if (p) ta.value = p.sql; });
  const out = h("div", { id: "query-out" });
  const meta = h("span", { class: "muted", id: "query-meta" });
  const csv = h("a", { id: "query-csv", href: "#" }, "CSV"), pq = h("a", { id: "query-parquet", href: "#" }, "Parquet");
  const run = async () => {
    showError("");
    const qs = new URLSearchParams({ sql: ta.value }).toString();
    csv.href = `/api/query.csv?${qs}`; pq.href = `/api/query.parquet?${qs}`;
    try {
      const body = new URLSearchParams({ sql: ta.value, limit: "1000" });
      const r = await fetch("/api/query", { method: "POST", body, credentials: "same-origin" });
      const d = await r.json();
      if (!r.ok) throw new Error(d.error);
      meta.textContent = `${d.rows.length} rows` + (d.rows.length >= 1000 ? " (first 1000; downloads have all)" : "");
      out.replaceChildren(h("div", { class: "scroll" }, table(d.columns, d.rows, { id: "query-table" })));
    } catch (e) { meta.textContent = ""; out.replaceChildren(); showError(e.message); }
  };
  ta.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
  main().replaceChildren(h("h1", {}, "Query the catalog"),
    h("p", { class: "muted" }, "Read-only SQL (DuckDB) over the catalog: tables plates, wells, fields, runs, cells; views well_stats, plate_stats, field_qc, cell_profiles. Ctrl+Enter runs."),
    h("div", { class: "controls" }, sel), ta, h("div", { class: "controls" }, h("button", { id: "query-run", onclick: run }, "Run"), meta, h("span", {}, "download: ", csv, " · ", pq)), out);
}
