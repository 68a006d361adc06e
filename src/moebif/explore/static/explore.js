// moebif explore: the page. It draws what the server computes and holds no theory: every
// number comes from /api/*. State lives in the URL (history: back, reset, bookmarks).
"use strict";

const POINT = ["a", "gamma", "T", "h", "balancer", "strength", "N", "k", "y0"];
const WINDOWS = ["y_range", "plane_a", "plane_h", "bif_x", "bif_u", "br_x", "br_load", "t_range"];
const SIM = ["batch", "eta", "steps", "runs", "seed"];
const COLORS = { main: "#1f5fa8", red: "#c0392b", grey: "#8a8f98", amber: "#d68910",
                 violet: "#8e44ad", green: "#2a9d4b", point: "#111" };
// showTips: false, or plotly's "double-click to zoom back out" notice covers the panel titles
// at the top right of the page (the Reset and Back buttons restore a zoom)
const PLOT_CONFIG = { displaylogo: false, responsive: true, doubleClick: false, showTips: false,
                      modeBarButtonsToRemove: ["select2d", "lasso2d", "toImage"] };

let meta = null;
const S = { point: {}, win: {}, against: "h", sim: {} };
let lastViews = null;
let traj = { job: null, result: null, polling: null };
let monitor = null;

// measurements read by the browser tests and the benchmark
const stats = window.__explore = { renders: 0, latencies: [], lastServerMs: null,
                                   errors: 0, ready: false };

// ------------------------------------------------------------------------------------------
// helpers

const $ = (id) => document.getElementById(id);

function decode(x) {
  // typed arrays sent as {"dtype": "f8", "bdata": base64} (see server._plain)
  if (Array.isArray(x)) return x.map(decode);
  if (x && typeof x === "object") {
    if (x.dtype === "f8" && typeof x.bdata === "string") {
      const bin = atob(x.bdata);
      const buf = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) buf[i] = bin.charCodeAt(i);
      return new Float64Array(buf.buffer);
    }
    const out = {};
    for (const k in x) out[k] = decode(x[k]);
    return out;
  }
  return x;
}

async function api(path, opts = {}) {
  const res = await fetch(path, opts);
  let body = null;
  try { body = await res.json(); } catch (e) { body = { error: `${res.status} ${res.statusText}` }; }
  if (!res.ok) {
    const err = new Error(body && body.error ? body.error : `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return decode(body);
}

function showError(msg) {
  const el = $("error");
  if (msg) { el.textContent = msg; el.hidden = false; document.body.classList.add("stale"); }
  else { el.hidden = true; el.textContent = ""; document.body.classList.remove("stale"); }
}

function fmt(x, d = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Number(x).toPrecision(d).replace(/\.?0+(e|$)/, "$1");
}

function queryOf(extra = {}) {
  const q = new URLSearchParams();
  for (const k of POINT) if (S.point[k] !== undefined) q.set(k, S.point[k]);
  for (const k of WINDOWS) if (S.win[k]) q.set(k, S.win[k].join(","));
  q.set("bif_against", S.against);
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  return q;
}

function urlQuery() {
  const q = queryOf();
  for (const k of SIM) if (S.sim[k] !== undefined) q.set(k, S.sim[k]);
  return q.toString();
}

// ------------------------------------------------------------------------------------------
// state <-> URL <-> controls

function readURL() {
  const q = new URLSearchParams(location.search);
  const d = meta.defaults;
  for (const k of POINT) S.point[k] = q.has(k) ? q.get(k) : d[k];
  for (const k of SIM) S.sim[k] = q.has(k) ? q.get(k) : d[k];
  S.win = {};
  for (const k of WINDOWS) if (q.has(k)) S.win[k] = q.get(k).split(",").map(Number);
  S.against = q.get("bif_against") === "a" ? "a" : "h";
  if (!q.has("N") && !q.has("k") && meta.monitor && meta.monitor.layers.length) {
    S.point.N = meta.monitor.layers[0].N;
    S.point.k = meta.monitor.layers[0].k;
  }
}

// URL updates are grouped: a burst of changes (a slider drag, a benchmark) makes one history
// entry, written after the burst; Chromium also rate-limits history calls
let commitTimer = null;
let commitPush = false;

function commit(push) {
  commitPush = commitPush || push;
  clearTimeout(commitTimer);
  commitTimer = setTimeout(flushCommit, 250);
}

function flushCommit() {
  commitTimer = null;
  const url = "?" + urlQuery();
  const depth = (history.state && history.state.depth) || 0;
  if (commitPush && url !== location.search) history.pushState({ depth: depth + 1 }, "", url);
  else history.replaceState({ depth }, "", url);
  commitPush = false;
  $("back").disabled = !((history.state && history.state.depth) > 0);
  document.dispatchEvent(new CustomEvent("explore:committed"));
}

function sliderKeys() { return ["a", "gamma", "T", "h", "strength", "N", "k"]; }

function snap(value, step) {
  // a slider value to its step's decimals: min + k step in binary floating point is not
  // always the decimal the thumb stands for (0.41300000000000003)
  const digits = Math.max(0, -Math.floor(Math.log10(Number(step) || 1)));
  return String(+Number(value).toFixed(digits));
}

function setupSliders() {
  for (const key of sliderKeys()) {
    const s = $("s-" + key), n = $("n-" + key);
    const range = key === "strength" ? [0, balancer().strength_max, 0.01] : meta.sliders[key];
    [s.min, s.max, s.step] = range;
    s.addEventListener("input", () => {
      S.point[key] = n.value = snap(s.value, s.step); constrain(key);
      changed(performance.now(), false);
    });
    s.addEventListener("change", () => commit(true));
    n.addEventListener("change", () => {
      S.point[key] = n.value; s.value = n.value; constrain(key);
      commit(true); changed(performance.now(), false);
    });
  }
  $("n-y0").addEventListener("change", () => { S.point.y0 = $("n-y0").value; commit(true); changed(); });
  const sel = $("balancer");
  for (const b of meta.balancers) sel.add(new Option(b.label, b.name));
  sel.addEventListener("change", () => {
    S.point.balancer = sel.value; syncControls(); commit(true); changed();
  });
  for (const r of document.querySelectorAll("input[name=against]")) {
    r.addEventListener("change", () => {
      S.against = r.value; delete S.win.bif_x; commit(true); changed();
    });
  }
  for (const k of SIM) {
    $("sim-" + k).addEventListener("change", () => {
      S.sim[k] = $("sim-" + k).value;
      if (k === "steps" || k === "eta") delete S.win.t_range;
      commit(true); changed();
    });
  }
}

function balancer() {
  return meta.balancers.find((b) => b.name === S.point.balancer) || meta.balancers[0];
}

function constrain(key) {
  // k < N: the k slider follows N (the server checks it too)
  if (key === "N") {
    const N = parseInt(S.point.N, 10);
    if (!(N >= 2)) return;
    $("s-k").max = Math.max(1, Math.min(8, N - 1));
    if (parseInt(S.point.k, 10) > N - 1) {  // moving N below k + 1 takes k along
      S.point.k = N - 1;
      $("s-k").value = S.point.k;
      $("n-k").value = S.point.k;
    }
  }
}

function syncControls() {
  for (const key of sliderKeys()) {
    $("s-" + key).value = S.point[key];
    $("n-" + key).value = S.point[key];
  }
  constrain("N");
  $("n-y0").value = S.point.y0;
  $("balancer").value = S.point.balancer;
  const b = balancer();
  $("strength-label").textContent = b.strength_label;
  $("s-strength").max = b.strength_max;
  for (const r of document.querySelectorAll("input[name=against]")) r.checked = r.value === S.against;
  for (const k of SIM) $("sim-" + k).value = S.sim[k];
}

// ------------------------------------------------------------------------------------------
// requests: one in flight, the latest change wins

let inflight = false;
let pendingSince = null;

function changed(t0 = performance.now(), push = false) {
  commit(push);
  if (pendingSince === null) pendingSince = t0;
  if (!inflight) fire();
}

function tRange() {
  if (S.win.t_range) return S.win.t_range;
  const T = Number(S.sim.steps) * Number(S.sim.eta);
  // the server draws the mean field up to t (gamma + |a|/2T) <= limits.meanfield_work
  const p = S.point;
  const rate = Number(p.gamma) + Math.abs(Number(p.a)) / (2 * Number(p.T));
  const work = meta.limits ? meta.limits.meanfield_work : Infinity;
  const tMax = rate > 0 && Number.isFinite(rate) ? work / rate : Infinity;
  return [0, Math.min(Number.isFinite(T) && T > 0 ? T : 10, tMax)];
}

async function fire() {
  const t0 = pendingSince;
  pendingSince = null;
  inflight = true;
  const q = queryOf({ encoding: "binary", t_range: tRange().join(",") });
  // a slow answer (the first visit of a top-k diagram computes its branches) says so
  const slow = setTimeout(() => {
    $("status").textContent = "computing… (a top-k diagram takes a few seconds the first time)";
  }, 400);
  try {
    const data = await api("/api/views?" + q.toString());
    lastViews = data;
    showError(null);
    await render(data);
    await new Promise((r) => requestAnimationFrame(() => r()));
    stats.latencies.push(performance.now() - t0);
    stats.lastServerMs = data.server_ms;
    stats.renders += 1;
    $("status").textContent = `redrawn in ${fmt(performance.now() - t0, 3)} ms ` +
      `(server ${fmt(data.server_ms, 2)} ms)`;
    document.dispatchEvent(new CustomEvent("explore:rendered", { detail: stats.renders }));
  } catch (e) {
    stats.errors += 1;
    $("status").textContent = "";
    showError(e.message);
    document.dispatchEvent(new CustomEvent("explore:error", { detail: e.message }));
  } finally {
    clearTimeout(slow);
    inflight = false;
    if (pendingSince !== null) fire();
  }
}

// ------------------------------------------------------------------------------------------
// drawing

// Each plot is a plotly "frame" (axes, zoom, the traces that change rarely: fold curve,
// branches, trajectories) and an overlay of SVG drawn by the page over the frame's plot area
// (the curves and markers that move with every slider step). A plotly redraw costs 15-20 ms a
// plot; an overlay well under 1 ms. A frame is redrawn only when its key (the server's digest of
// its traces, or its axis ranges) changed.

function baseLayout(xt, yt, extra = {}) {
  return {
    margin: { l: 52, r: 12, t: 8, b: 40 }, showlegend: false, hovermode: "closest",
    uirevision: "keep", dragmode: "zoom",
    xaxis: { title: { text: xt, standoff: 4 }, zeroline: false },
    yaxis: { title: { text: yt, standoff: 4 }, zeroline: false },
    font: { size: 11 }, ...extra,
  };
}

function axes(xt, xr, yt, yr) {
  return {
    xaxis: { title: { text: xt, standoff: 4 }, range: xr, zeroline: false, autorange: false },
    yaxis: { title: { text: yt, standoff: 4 }, range: yr, zeroline: false, autorange: false },
  };
}

function vline(x, color, dash = "dot", width = 1.2) {
  return { type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1,
           line: { color, dash, width } };
}

function hline(y, color, dash = "dot", width = 1) {
  return { type: "line", xref: "paper", yref: "y", x0: 0, x1: 1, y0: y, y1: y,
           line: { color, dash, width } };
}

const NS = "http://www.w3.org/2000/svg";
const drawnKey = {};

function frame(id, key, traces, layout) {
  // returns the redraw's promise, or null when the frame is unchanged
  if (drawnKey[id] === key) return null;
  drawnKey[id] = key;
  return Plotly.react(id, traces, layout, PLOT_CONFIG);
}

function svgEl(tag, attrs, parent) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  parent.appendChild(el);
  return el;
}

const DASH = { solid: "", dash: "6,4", dot: "2,3", dashdot: "6,3,2,3" };

function pathD(xs, ys, xa, ya) {
  let d = "";
  let pen = false;
  for (let i = 0; i < xs.length; i++) {
    const x = xs[i], y = ys[i];
    if (!Number.isFinite(x) || !Number.isFinite(y)) { pen = false; continue; }
    d += `${pen ? "L" : "M"}${xa.l2p(x).toFixed(1)},${ya.l2p(y).toFixed(1)}`;
    pen = true;
  }
  return d;
}

function drawOverlay(id) {
  const gd = $(id);
  const items = gd.__overlay || [];
  const fl = gd._fullLayout;
  if (!fl || !fl.xaxis || !fl.xaxis.l2p || !fl.yaxis) return;
  let svg = gd.querySelector(":scope > svg.overlay");
  if (!svg) {
    svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "overlay");
    gd.appendChild(svg);
  }
  const xa = fl.xaxis, ya = fl.yaxis, W = xa._length, H = ya._length;
  svg.style.left = `${xa._offset}px`;
  svg.style.top = `${ya._offset}px`;
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.textContent = "";
  const clip = svgEl("g", { class: "ov-clip" }, svg);
  const inX = (px) => px >= -1 && px <= W + 1;
  const inY = (py) => py >= -1 && py <= H + 1;
  for (const it of items) {
    if (it.kind === "path") {
      svgEl("path", { d: pathD(it.x, it.y, xa, ya) + (it.fill ? "Z" : ""), fill: it.fill || "none",
                      stroke: it.color,
                      "stroke-width": it.width || 2, "stroke-dasharray": DASH[it.dash || "solid"],
                      class: `ov-path ${it.cls || ""}` }, clip);
      continue;
    }
    if (it.kind === "hline") {
      const py = ya.l2p(it.y);
      if (!inY(py)) continue;
      svgEl("line", { x1: 0, x2: W, y1: py, y2: py, stroke: it.color, "stroke-width": 1,
                      "stroke-dasharray": DASH[it.dash || "dot"], class: "ov-hline" }, svg);
      if (it.label) {
        const t = svgEl("text", { x: 4, y: py - 3, fill: it.color, "font-size": 10 }, svg);
        t.textContent = it.label;
      }
      continue;
    }
    if (it.kind === "rect") {
      const p0 = Math.max(0, Math.min(W, xa.l2p(it.x0))), p1 = Math.max(0, Math.min(W, xa.l2p(it.x1)));
      if (p1 > p0) {
        svgEl("rect", { x: p0, y: 0, width: p1 - p0, height: H, fill: it.fill,
                        class: `ov-rect ${it.cls || ""}` }, clip);
      }
      continue;
    }
    const px = xa.l2p(it.x);
    if (!inX(px)) continue;
    if (it.kind === "vline") {
      svgEl("line", { x1: px, x2: px, y1: 0, y2: H, stroke: it.color, "stroke-width": 1.3,
                      "stroke-dasharray": DASH[it.dash || "dot"], class: "ov-line" }, svg);
      if (it.label) {
        const t = svgEl("text", { x: px + 3, y: 10, fill: it.color, "font-size": 10 }, svg);
        t.textContent = it.label;
      }
      continue;
    }
    const py = ya.l2p(it.y);
    if (!inY(py)) continue;
    if (it.kind === "cross") {
      const r = 7;
      for (const dy of [r, -r]) {
        svgEl("line", { x1: px - r, x2: px + r, y1: py - dy, y2: py + dy, stroke: COLORS.point,
                        "stroke-width": 3, class: "ov-cross" }, svg);
      }
      const hit = svgEl("circle", { cx: px, cy: py, r: 8, fill: "transparent", class: "ov-hit" }, svg);
      hit.dataset.tip = it.tip || "";
      continue;
    }
    const col = it.color || COLORS.red;
    const c = svgEl("circle", { cx: px, cy: py, r: 5.5, "stroke-width": 2, stroke: col,
                                fill: it.stable ? col : "#fff",
                                class: it.cls || (it.stable ? "ov-marker stable" : "ov-marker unstable") }, svg);
    c.dataset.tip = it.tip || "";
    c.dataset.x = it.x;  // data coordinates, for scripts and tests
    c.dataset.y = it.y;
  }
}

function showTip(e) {
  const t = e.target;
  const tip = $("tip");
  if (!t.dataset || !t.dataset.tip) return;
  tip.innerHTML = t.dataset.tip;
  tip.style.left = `${e.clientX + 12}px`;
  tip.style.top = `${e.clientY + 12}px`;
  tip.hidden = false;
}

function setOverlay(id, items, job) {
  $(id).__overlay = items;
  if (job === null) { drawOverlay(id); return null; }
  return job.then(() => drawOverlay(id));  // on the redrawn axes
}

function eqTip(e) {
  return `y = ${fmt(e.y, 5)}<br>u = ${fmt(e.u, 5)}<br>eigenvalue F<sub>y</sub> = ${fmt(e.eigenvalue, 5)}` +
    `<br>${e.stable ? "stable" : "unstable"}`;
}

function eqMarkers(eqs, xk, yk) {
  return eqs.map((e) => ({ kind: "marker", x: xk === null ? 0 : e[xk], y: yk === null ? 0 : e[yk],
                           stable: e.stable, tip: eqTip(e) }));
}

function draw(id, key, traces, layout, items) {
  const job = setOverlay(id, items, frame(id, key, traces, layout));
  return job || Promise.resolve();
}

function render(d) {
  const v = d.views;
  $("regime-two").textContent = d.regime.two;
  $("eq-count").textContent = `${d.n_equilibria} equilibri${d.n_equilibria === 1 ? "um" : "a"}`;
  $("regime-n").textContent = d.regime.n;
  $("n-label").textContent = `N = ${d.point.N}, top-${d.point.k}`;
  $("a-eff-label").textContent = d.point.strength > 0 ? `a_eff = ${fmt(d.point.a_eff, 5)}` : "";
  // the h slider spans the bistable window at this point (the server's h_slider); its thumb
  // shows S.point.h, which a typed or clicked h outside the slider keeps
  if (d.sliders && d.sliders.h) {
    const s = $("s-h");
    [s.min, s.max, s.step] = d.sliders.h;
    s.value = S.point.h;
  }
  // the time view is the two-expert router: say so when the page is set to N experts
  const N = Number(d.point.N);
  $("time-note").textContent = N !== 2
    ? `two experts (N = 2), not the N = ${N} of the branches view: this simulator and its ` +
      "mean field are the two-expert router of eq. (6)"
    : "";
  $("time-note").hidden = N === 2;
  $("command").textContent = d.command;
  const jobs = [];
  const y0 = Number(d.point.y0);

  // F(y) and V(y): the frame is the window; curves, equilibria and y0 are overlays
  const st = v.state;
  const y0line = { kind: "vline", x: y0, color: COLORS.green, dash: "dash", label: "y₀" };
  jobs.push(draw("plot-state", JSON.stringify([st.range, st.F_range]), [],
    baseLayout("", "", { ...axes("y = r₁ − r₂", st.range, "F(y) = y′", st.F_range),
                         shapes: [hline(0, COLORS.grey, "solid", 0.8)] }),
    [{ kind: "path", x: st.y, y: st.F, color: COLORS.main, cls: "F" }, y0line,
     ...eqMarkers(st.equilibria, "y", null)]));
  jobs.push(draw("plot-potential", JSON.stringify([st.range, st.V_range]), [],
    baseLayout("", "", axes("y = r₁ − r₂", st.range, "V(y)", st.V_range)),
    [{ kind: "path", x: st.y, y: st.V, color: COLORS.main, cls: "V" }, y0line,
     ...eqMarkers(st.equilibria, "y", "V")]));

  // (a, h) plane: the window is the frame; band, fold curve, cusp and point are overlays
  const pl = v.plane;
  const band = pl.bistable_band;
  const bandX = [...band.a, ...Array.from(band.a).reverse()];
  const bandY = [...band.H, ...Array.from(band.H).reverse().map((x) => -x)];
  jobs.push(draw("plot-plane", JSON.stringify(pl.range), [],
    baseLayout("", "", {
      ...axes("a (feedback)", pl.range.a, "h (skew)", pl.range.h),
      annotations: [{ x: 0.02, y: 0.98, xref: "paper", yref: "paper", showarrow: false,
                      xanchor: "left", yanchor: "top", text: "shaded: bistable (3 equilibria)",
                      font: { size: 10, color: COLORS.amber } }],
    }), [
      { kind: "path", x: bandX, y: bandY, color: "none", fill: "rgba(214,137,16,0.16)", cls: "band" },
      ...pl.fold.map((f) => ({ kind: "path", x: f.a, y: f.h, color: COLORS.amber, cls: "fold" })),
      { kind: "marker", x: pl.cusp.a, y: pl.cusp.h, stable: true, color: COLORS.amber, cls: "cusp",
        tip: `cusp: a = 2γT = ${fmt(pl.cusp.a, 5)}, h = 0` },
      { kind: "cross", x: pl.point.a, y: pl.point.h,
        tip: `current point: ${pl.point.regime}<br>a = ${fmt(pl.point.a, 5)}, h = ${fmt(pl.point.h, 5)}` +
             `<br>H(a) = ${fmt(pl.point.halfwidth, 5)}` },
    ]));

  // bifurcation diagram: branches and the current equilibria are overlays
  const bf = v.bifurcation;
  const bx = bf.against === "h" ? "h (skew)" : "a (feedback)";
  jobs.push(draw("plot-bifurcation", JSON.stringify([bf.against, bf.range]), [],
    baseLayout("", "", axes(bx, bf.range.x, "u = p₁ − p₂", bf.range.u)), [
      ...bf.segments.map((sg) => ({ kind: "path", x: sg.x, y: sg.u, color: COLORS.main,
                                    width: sg.stable ? 2 : 1.6, dash: sg.stable ? "solid" : "dash",
                                    cls: sg.stable ? "stable" : "unstable" })),
      ...bf.folds.map((f) => ({ kind: "marker", x: f.x, y: f.u, stable: true, color: COLORS.amber,
                                cls: "fold",
                                tip: `fold at h = ${fmt(f.x, 5)}` })),
      { kind: "vline", x: bf.current.x, color: COLORS.point },
      ...bf.current.equilibria.map((e) => ({ kind: "marker", x: bf.current.x, y: e.u,
                                            stable: e.stable, tip: eqTip(e) })),
    ]));

  // N-expert branches: plotly traces (they move with N, k, gamma, T, the balancer)
  const br = v.branches;
  $("branches-title").innerHTML = `N-expert branches <small>N = ${br.n_experts}, top-${br.top_k}` +
    `${br.omitted_winners ? `, m ≤ 16 drawn` : ""}: red one winner, grey m ≥ 2; shaded: metastable ` +
    `window; click to move</small>`;
  const segPaths = (segs, color, width) => segs.map((sg) => ({
    kind: "path", x: sg.x, y: sg.u, color, width: sg.stable ? width : 0.8 * width,
    dash: sg.stable ? "solid" : "dash", cls: sg.stable ? "stable" : "unstable" }));
  const brItems = [];
  if (br.metastable_window) {
    brItems.push({ kind: "rect", x0: br.metastable_window[0], x1: br.metastable_window[1],
                   fill: "rgba(142,68,173,0.12)", cls: "metastable" });
    brItems.push({ kind: "vline", x: br.collapse_threshold, color: COLORS.violet, label: "a_SN" });
  }
  brItems.push({ kind: "vline", x: br.linear_threshold, color: COLORS.main, dash: "dash", label: "a_lin" });
  brItems.push(...segPaths(br.uniform, COLORS.main, 2));
  for (const b of br.branches) {
    brItems.push(...segPaths(b.segments, b.winners === 1 ? COLORS.red : COLORS.grey, b.winners === 1 ? 2 : 1));
  }
  const bc = br.current;
  const brX = S.win.br_x || [0, br.x_max];
  jobs.push(draw("plot-branches", JSON.stringify([brX, S.win.br_load, br.top_k]), [],
    baseLayout("", "", axes("a / (γT)", brX,
      br.top_k === 1 ? "largest load" : "largest load (count / kB)", S.win.br_load || [0, 1.02])), [
      ...brItems,
      { kind: "vline", x: bc.x, color: COLORS.point },
      ...bc.equilibria.map((e) => ({
        kind: "marker", x: e.x, y: e.max_load, stable: e.stable,
        tip: `m = ${e.winners} winner(s), gap d = ${fmt(e.gap, 4)}<br>largest load ${fmt(e.max_load, 4)}` +
             `<br>largest eigenvalue ${e.eigenvalue === null ? "n/a (top-k: interpolated)" : fmt(e.eigenvalue, 5)}` +
             `<br>${e.stable ? "stable" : "unstable"}` })),
    ]));

  jobs.push(drawTime());
  if (monitor) jobs.push(drawMonitor());
  return Promise.all(jobs);
}

function drawTime() {
  const d = lastViews && lastViews.views.meanfield;
  if (!d) return Promise.resolve();
  const traces = [];
  const r = traj.result;
  if (r) {
    const up = r.u_mean.map((m, i) => m + r.u_std[i]);
    const lo = r.u_mean.map((m, i) => m - r.u_std[i]);
    traces.push({ type: "scatter", mode: "lines", x: r.t, y: lo, line: { width: 0 }, hoverinfo: "skip" });
    traces.push({ type: "scatter", mode: "lines", x: r.t, y: up, line: { width: 0 }, fill: "tonexty",
                  fillcolor: "rgba(31,95,168,0.15)", hoverinfo: "skip", name: "mean ± sd" });
    for (const run of r.u_runs) {
      traces.push({ type: "scatter", mode: "lines", x: r.t, y: run, hoverinfo: "skip",
                    line: { color: "rgba(31,95,168,0.25)", width: 0.8 } });
    }
    traces.push({ type: "scatter", mode: "lines", x: r.t, y: r.u_mean, name: "simulated mean",
                  line: { color: COLORS.main, width: 2 },
                  hovertemplate: "t = %{x:.4g}<br>mean u = %{y:.4g}<extra></extra>" });
    traces.push({ type: "scatter", mode: "lines", x: r.t, y: r.u_meanfield, name: "mean field (run)",
                  line: { color: COLORS.point, width: 1.5, dash: "dash" },
                  hovertemplate: "t = %{x:.4g}<br>mean field u = %{y:.4g}<extra></extra>" });
  }
  return draw("plot-time", JSON.stringify([traj.job, !!r, d.range]), traces,
    baseLayout("", "", axes("t = n η (ODE time)", d.range, "u = p₁ − p₂ (N = 2)", [-1.05, 1.05])), [
      ...d.equilibria.filter((e) => e.stable).map((e) => ({ kind: "hline", y: e.u, color: COLORS.grey })),
      { kind: "path", x: d.t, y: d.u, color: COLORS.red, cls: "meanfield" },
    ]);
}

// ------------------------------------------------------------------------------------------
// clicks and zoom

function plotXY(gd, evt) {
  const fl = gd._fullLayout;
  const drag = gd.querySelector(".nsewdrag");
  if (!fl || !drag) return null;
  const rect = drag.getBoundingClientRect();
  const px = evt.clientX - rect.left, py = evt.clientY - rect.top;
  if (px < 0 || py < 0 || px > rect.width || py > rect.height) return null;
  return [fl.xaxis.p2l(px), fl.yaxis.p2l(py)];
}

function onPlotClick(id, handler) {
  const gd = $(id);
  let down = null;
  gd.addEventListener("mousedown", (e) => { down = [e.clientX, e.clientY]; }, true);
  gd.addEventListener("click", (e) => {
    if (!down || Math.hypot(e.clientX - down[0], e.clientY - down[1]) > 4) return;
    if (e.target.closest && e.target.closest(".modebar")) return;
    const xy = plotXY(gd, e);
    if (xy) handler(xy[0], xy[1]);
  });
}

function onZoom(id, keys) {
  const gd = $(id);
  gd.on("plotly_relayout", (ev) => {
    let touched = false;
    const axes = [["xaxis", keys[0]], ["yaxis", keys[1]]];
    for (const [ax, key] of axes) {
      if (!key) continue;
      if (ev[`${ax}.autorange`]) { delete S.win[key]; touched = true; }
      const lo = ev[`${ax}.range[0]`], hi = ev[`${ax}.range[1]`];
      const rng = ev[`${ax}.range`];
      if (lo !== undefined && hi !== undefined) { S.win[key] = [lo, hi]; touched = true; }
      else if (Array.isArray(rng)) { S.win[key] = [rng[0], rng[1]]; touched = true; }
    }
    if (touched) { commit(true); changed(); }
  });
}

function setupPlots() {
  const empty = baseLayout("", "");
  for (const id of ["plot-state", "plot-potential", "plot-plane", "plot-bifurcation",
                    "plot-branches", "plot-time", "plot-monitor"]) {
    Plotly.newPlot(id, [], empty, PLOT_CONFIG);
    $(id).on("plotly_afterplot", () => drawOverlay(id));
    $(id).addEventListener("mouseover", showTip);
    $(id).addEventListener("mouseout", () => { $("tip").hidden = true; });
  }
  const setY0 = (x) => { S.point.y0 = +x.toPrecision(6); $("n-y0").value = S.point.y0; changed(performance.now(), true); };
  onPlotClick("plot-state", setY0);
  onPlotClick("plot-potential", setY0);
  onPlotClick("plot-plane", (a, h) => {
    S.point.a = +Math.max(a, 0).toPrecision(6); S.point.h = +h.toPrecision(6);
    syncControls(); changed(performance.now(), true);
  });
  onPlotClick("plot-bifurcation", (x) => {
    if (S.against === "h") S.point.h = +x.toPrecision(6); else S.point.a = +Math.max(x, 0).toPrecision(6);
    syncControls(); changed(performance.now(), true);
  });
  onPlotClick("plot-branches", (x) => {
    S.point.a = +(Math.max(x, 0) * Number(S.point.gamma) * Number(S.point.T)).toPrecision(6);
    syncControls(); changed(performance.now(), true);
  });
  // F and V share the state window: zooming either recomputes both
  onZoom("plot-state", ["y_range", null]);
  onZoom("plot-potential", ["y_range", null]);
  onZoom("plot-plane", ["plane_a", "plane_h"]);
  onZoom("plot-bifurcation", ["bif_x", "bif_u"]);
  onZoom("plot-branches", ["br_x", "br_load"]);
  onZoom("plot-time", ["t_range", null]);
}

// ------------------------------------------------------------------------------------------
// buttons, export

function setupButtons() {
  $("back").addEventListener("click", () => history.back());
  $("reset").addEventListener("click", () => {
    const d = meta.defaults;
    for (const k of POINT) S.point[k] = d[k];
    for (const k of SIM) S.sim[k] = d[k];
    S.win = {}; S.against = "h";
    syncControls(); commit(true); changed();
  });
  $("copy").addEventListener("click", async () => {
    const text = $("command").textContent;
    try { await navigator.clipboard.writeText(text); }
    catch (e) {
      const ta = document.createElement("textarea");
      ta.value = text; document.body.appendChild(ta); ta.select();
      try { document.execCommand("copy"); } catch (e2) { /* selection stays for the user */ }
      ta.remove();
    }
    $("copy").textContent = "Copied";
    setTimeout(() => { $("copy").textContent = "Copy as command"; }, 1200);
  });
  window.addEventListener("popstate", () => {
    clearTimeout(commitTimer); commitTimer = null; commitPush = false;
    readURL(); syncControls();
    $("back").disabled = !((history.state && history.state.depth) > 0);
    if (pendingSince === null) pendingSince = performance.now();
    if (!inflight) fire();
  });
  for (const el of document.querySelectorAll(".export")) {
    for (const f of ["csv", "json"]) {
      const a = document.createElement("a");
      a.textContent = f.toUpperCase(); a.href = "#"; a.className = "export-" + f;
      a.addEventListener("click", (e) => {
        e.preventDefault();
        download(el.dataset.view, f);
      });
      el.appendChild(a);
    }
  }
  $("run").addEventListener("click", runTrajectories);
  $("cancel").addEventListener("click", cancelTrajectories);
  $("log-file").addEventListener("change", uploadLog);
  $("layer").addEventListener("change", drawMonitor);
  $("use-log-nk").addEventListener("click", () => {
    const L = currentLayer();
    if (!L) return;
    S.point.N = L.n_experts; S.point.k = L.top_k;
    syncControls(); changed(performance.now(), true);
  });
}

function exportURL(view, f) {
  if (view === "meanfield" && traj.result && traj.job) {
    return `/api/export?view=trajectory&format=${f}&job=${traj.job}`;
  }
  if (view === "monitor") return `/api/export?view=monitor&format=${f}`;
  const q = queryOf({ view, format: f });
  if (view === "meanfield") q.set("t_range", tRange().join(","));
  return "/api/export?" + q.toString();
}

async function download(view, f) {
  const url = exportURL(view, f);
  const res = await fetch(url);
  if (!res.ok) {
    let msg = `export failed (${res.status})`;
    try { msg = (await res.json()).error; } catch (e) { /* keep the status */ }
    showError(msg);
    return;
  }
  const blob = await res.blob();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `moebif-explore-${view === "meanfield" && traj.result ? "trajectory" : view}.${f}`;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// ------------------------------------------------------------------------------------------
// trajectories

async function runTrajectories() {
  const q = queryOf();
  for (const k of WINDOWS) q.delete(k);
  q.delete("bif_against");
  for (const k of SIM) q.set(k, S.sim[k]);
  $("sim-status").textContent = "starting…";
  $("progress").value = 0;
  try {
    const job = await api("/api/trajectories?" + q.toString(),
                          { method: "POST", headers: { "X-Moebif": "1" } });
    traj.job = job.id; traj.result = null;
    $("run").disabled = true; $("cancel").disabled = false;
    $("progress").value = 0;
    poll();
  } catch (e) {
    $("sim-status").textContent = "";
    showError(e.message);
  }
}

async function poll() {
  clearTimeout(traj.polling);
  const id = traj.job;
  let s;
  try { s = await api(`/api/trajectories/${id}?encoding=binary`); }
  catch (e) { showError(e.message); finish(); return; }
  if (id !== traj.job) return;
  $("progress").value = s.steps ? s.done_steps / s.steps : 0;
  if (s.state === "queued" || s.state === "running") {
    $("sim-status").textContent = `${s.state}: ${s.done_steps} / ${s.steps} steps`;
    traj.polling = setTimeout(poll, 100);
    return;
  }
  finish();
  if (s.state === "done") {
    traj.result = s.result;
    const r = s.result;
    $("sim-status").textContent = `done in ${fmt(r.seconds, 3)} s: final u = ${fmt(r.final_u_mean)} ` +
      `± ${fmt(r.final_u_std, 3)}, sup |mean − mean field| = ${fmt(r.sup_error, 3)}`;
    await drawTime();
    document.dispatchEvent(new CustomEvent("explore:trajectory", { detail: id }));
  } else if (s.state === "cancelled") {
    $("sim-status").textContent = `cancelled at ${s.done_steps} / ${s.steps} steps`;
  } else {
    $("sim-status").textContent = "";
    showError(`trajectories: ${s.error}`);
  }
}

function finish() {
  $("run").disabled = false; $("cancel").disabled = true;
}

async function cancelTrajectories() {
  if (!traj.job) return;
  try {
    await api(`/api/trajectories/${traj.job}/cancel`, { method: "POST", headers: { "X-Moebif": "1" } });
    $("sim-status").textContent = "cancelling…";
  } catch (e) { showError(e.message); }
}

// ------------------------------------------------------------------------------------------
// monitor log

function currentLayer() {
  if (!monitor) return null;
  return monitor.layers.find((l) => l.name === $("layer").value) || monitor.layers[0];
}

function setMonitor(m) {
  monitor = m;
  delete drawnKey["plot-monitor"];
  $("card-monitor").hidden = false;
  Plotly.Plots.resize("plot-monitor");  // it was created hidden, at zero width
  const sel = $("layer");
  sel.innerHTML = "";
  for (const l of m.layers) sel.add(new Option(`${l.name} (N = ${l.n_experts}, top-${l.top_k})`, l.name));
  $("log-status").textContent = `${m.source}: ${m.layers.length} layer(s)`;
  drawMonitor();
}

async function loadMonitor() {
  try { setMonitor(await api("/api/monitor")); }
  catch (e) { showError(e.message); }
}

async function uploadLog() {
  const file = $("log-file").files[0];
  if (!file) return;
  $("log-status").textContent = `reading ${file.name}…`;
  try {
    const m = await api(`/api/monitor?name=${encodeURIComponent(file.name)}`,
                        { method: "POST", headers: { "X-Moebif": "1" }, body: file });
    showError(null);
    setMonitor(m);
  } catch (e) {
    $("log-status").textContent = "";
    showError(e.message);
  }
}

function drawMonitor() {
  const L = currentLayer();
  if (!L) return Promise.resolve();
  $("monitor-title").innerHTML = `Training: κ̂ on the regime diagram <small>layer ${L.name}, ` +
    `N = ${L.n_experts}, top-${L.top_k}</small>`;
  $("monitor-note").textContent = L.note || "";
  const used = L.fits.filter((f) => f.used && f.kappa !== null);
  const unused = L.fits.filter((f) => !f.used && f.kappa !== null);
  const steps = L.fits.map((f) => f.step);
  const x0 = steps.length ? Math.min(...steps) : 0;
  const x1 = Math.max(steps.length ? Math.max(...steps) : 1, ...L.alarms.map((a) => a.step), x0 + 1);
  const lo = used.map((f) => (f.kappa_lo === null ? Math.max(f.kappa - 1, -0.2) : f.kappa_lo));
  const hi = used.map((f) => (f.kappa_hi === null ? f.kappa : f.kappa_hi));
  const traces = [
    { type: "scatter", mode: "lines", x: used.map((f) => f.step), y: lo, line: { width: 0 }, hoverinfo: "skip" },
    { type: "scatter", mode: "lines", x: used.map((f) => f.step), y: hi, line: { width: 0 }, fill: "tonexty",
      fillcolor: "rgba(31,95,168,0.18)", hoverinfo: "skip", name: "95% interval" },
    { type: "scatter", mode: "lines+markers", x: used.map((f) => f.step), y: used.map((f) => f.kappa),
      name: "κ̂", line: { color: COLORS.main, width: 1.6 }, marker: { size: 4 },
      customdata: used.map((f) => f.regime),
      hovertemplate: "step %{x}<br>κ̂ = %{y:.3f}<br>%{customdata}<extra></extra>" },
    { type: "scatter", mode: "markers", x: unused.map((f) => f.step), y: unused.map((f) => f.kappa),
      name: "κ̂ not used", marker: { symbol: "x", size: 6, color: COLORS.grey },
      customdata: unused.map((f) => f.regime),
      hovertemplate: "step %{x}<br>κ̂ = %{y:.3f}<br>not used: %{customdata}<extra></extra>" },
  ];
  const alarmColor = { "approaching-threshold": COLORS.amber, metastable: COLORS.violet,
                       "collapse-in-progress": COLORS.red, collapsed: "#7b1010", recovered: COLORS.green };
  traces.push({ type: "scatter", mode: "markers", name: "alarms",
                x: L.alarms.map((a) => a.step), y: L.alarms.map(() => 1.12),
                marker: { symbol: "triangle-down", size: 11, color: L.alarms.map((a) => alarmColor[a.kind] || "#000") },
                customdata: L.alarms.map((a) => [a.kind, a.message]),
                hovertemplate: "step %{x}: %{customdata[0]}<br>%{customdata[1]}<extra></extra>" });
  const ksn = L.kappa_sn;
  const band = (y0, y1, color) => ({ type: "rect", xref: "paper", yref: "y", x0: 0, x1: 1, y0, y1,
                                    line: { width: 0 }, fillcolor: color, layer: "below" });
  const shapes = [band(-0.5, ksn, "rgba(42,157,75,0.08)"), band(1, 2, "rgba(192,57,43,0.08)"),
                  hline(1, COLORS.main, "dash"), ...L.alarms.map((a) => vline(a.step, alarmColor[a.kind] || "#000", "dot", 1))];
  const ann = [{ x: 1, y: 1, xref: "paper", yref: "y", text: "linear threshold κ = 1", showarrow: false,
                 xanchor: "right", yanchor: "bottom", font: { size: 10, color: COLORS.main } }];
  if (ksn < 1) {
    shapes.push(band(ksn, 1, "rgba(142,68,173,0.10)"), hline(ksn, COLORS.violet, "dot"));
    ann.push({ x: 1, y: ksn, xref: "paper", yref: "y", text: `κ_SN = ${fmt(ksn, 3)} (metastable above)`,
               showarrow: false, xanchor: "right", yanchor: "bottom", font: { size: 10, color: COLORS.violet } });
  }
  // the explorer's own point on the same scale (an overlay), when the layer's N and k are the
  // page's
  const bv = lastViews && lastViews.views.branches;
  const items = [];
  if (bv && bv.n_experts === L.n_experts && bv.top_k === L.top_k) {
    items.push({ kind: "hline", y: bv.current.kappa, color: COLORS.point, dash: "dashdot",
                 label: `explorer point κ = ${fmt(bv.current.kappa, 3)}` });
  }
  // (zooming it is plotly's own: the frame is not redrawn while the layer stays the same)
  return draw("plot-monitor", JSON.stringify([monitor.source, L.name]), traces,
    baseLayout("", "", { ...axes("training step", [x0, x1], "κ̂ = a_eff / a_lin", [-0.05, 1.2]),
                         shapes, annotations: ann }),
    items);
}

// ------------------------------------------------------------------------------------------

async function init() {
  try { meta = await api("/api/meta"); }
  catch (e) { showError(`cannot reach the server: ${e.message}`); return; }
  readURL();
  setupPlots();
  setupSliders();
  setupButtons();
  syncControls();
  flushCommit();
  if (meta.monitor) await loadMonitor();
  stats.ready = true;
  changed(performance.now(), false);
}

init();
