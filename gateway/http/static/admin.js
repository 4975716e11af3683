"use strict";
// The admin dashboard. The page itself holds no data: everything comes from the admin JSON
// routes, called with the key the operator typed (kept in this tab's sessionStorage, because a
// browser cannot send a bearer header when it navigates to a page). Every value shown is put in
// the page as text or as SVG attributes, never as markup.
(() => {
  const KEY = "segue.adminKey";
  const SVG = "http://www.w3.org/2000/svg";
  const POLL_MS = 5000;
  const BUSY_POLL_MS = 2000; // while an index build or a projection rebuild is under way
  const SERIES_MS = 60000;
  // Okabe-Ito: told apart by most colour-blind readers too.
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00",
    "#F0E442", "#000000", "#999999"];

  // What the page last read and drew: the tests (and the curious, from the console) read it.
  const state = {
    dashboard: null,
    series: null,
    refused: null,
    charts: { rewards: [], outcomes: [] },
    published: null, // an index version this page saw published after asking for a build
  };
  window.segueAdmin = state;

  const $ = (id) => document.getElementById(id);
  let pollTimer = null;
  let seriesTimer = null;
  let askedIndexFrom; // the version served when this page asked for a build (undefined: not asked)

  class Refused extends Error {
    constructor(status, problem) {
      super((problem && problem.detail) || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY);
    if (key) headers.Authorization = `Bearer ${key}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const reply = await fetch(path, init);
    const data = await reply.json().catch(() => null);
    if (!reply.ok) throw new Refused(reply.status, data);
    return data;
  }

  // --- small helpers -----------------------------------------------------------------------

  function el(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // What the last action led to (kept until the next one), and when the data was last read.
  function note(text, error = false) {
    $("message").textContent = text;
    $("message").classList.toggle("error", error);
  }

  function updated(text, error = false) {
    $("updated").textContent = text;
    $("updated").classList.toggle("error", error);
  }

  const num = (x, digits = 0) =>
    x === null || x === undefined ? "–" : Number(x).toLocaleString("en", {
      minimumFractionDigits: digits, maximumFractionDigits: digits });

  function ms(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const v = seconds * 1000;
    return v < 10 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    if (seconds < 129600) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} days`;
  }

  function days(first, last) {
    const out = [];
    for (let d = new Date(`${first}T00:00:00Z`); d <= new Date(`${last}T00:00:00Z`);
      d.setUTCDate(d.getUTCDate() + 1)) out.push(d.toISOString().slice(0, 10));
    return out;
  }

  const dayLabel = (day) => new Date(`${day}T00:00:00Z`).toLocaleDateString("en", {
    month: "short", day: "numeric", timeZone: "UTC" });

  // Round ticks (steps of 1, 2 or 5 × 10^k) covering [low, high], which include 0.
  function ticks(low, high, count = 4) {
    const span = high - low;
    if (!(span > 0)) return [0, 1];
    const raw = span / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw * 0.999);
    const out = [];
    for (let i = Math.floor(low / step + 1e-9); i <= Math.ceil(high / step - 1e-9); i++) {
      out.push(Number((i * step).toPrecision(12)));
    }
    return out;
  }

  // --- the key -----------------------------------------------------------------------------

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("key").value = "";
    refresh(true);
  });

  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    refresh(true);
  });

  function refuse(error) {
    state.refused = { status: error.status, problem: error.problem };
    state.dashboard = state.series = null;
    clearTimeout(pollTimer);
    clearTimeout(seriesTimer);
    $("board").hidden = true;
    $("refusal").hidden = false;
    const title = (error.problem && error.problem.title) || "Refused";
    $("refusal-title").textContent = `${error.status} ${title}: `;
    $("refusal-detail").textContent = error.message;
    updated("");
    note(sessionStorage.getItem(KEY) ? "The key was refused." : "Enter an admin key to see the data.");
  }

  // --- reading -----------------------------------------------------------------------------

  // A refresh started while another is waiting for its answer supersedes it: only the latest
  // one draws and schedules the next, so clicks never add polling loops.
  let reading = 0;
  let readingSeries = 0;

  async function refresh(withSeries = false) {
    clearTimeout(pollTimer);
    const mine = ++reading;
    try {
      const dashboard = await call("GET", "/v1/admin/dashboard");
      if (mine !== reading) return;
      if (state.refused) note(""); // what the refusal said is over
      state.refused = null;
      state.dashboard = dashboard;
      $("refusal").hidden = true;
      $("board").hidden = false;
      drawDashboard(dashboard);
      if (withSeries) await refreshSeries();
      if (state.refused) return;
      updated(`Updated ${new Date().toLocaleTimeString()}.`);
    } catch (error) {
      if (mine !== reading) return;
      if (error instanceof Refused && (error.status === 401 || error.status === 403)) {
        refuse(error);
        return;
      }
      updated(`Could not read the dashboard (${error.message}); retrying.`, true);
    }
    pollTimer = setTimeout(refresh, busy() ? BUSY_POLL_MS : POLL_MS);
  }

  async function refreshSeries() {
    clearTimeout(seriesTimer);
    const mine = ++readingSeries;
    try {
      const series = await call("GET", `/v1/admin/dashboard/series?days=${$("days").value}`);
      if (mine !== readingSeries) return;
      state.series = series;
      drawRewards(series);
      drawOutcomes(series);
      $("series-note").textContent =
        `Days are UTC days on which slates were served (${series.since} to ${series.until}); ` +
        "an outcome counts on its slate's day. Reward under definition " +
        `${series.definition_version || "–"}; organic outcomes (no slate) are not charted.`;
    } catch (error) {
      if (mine !== readingSeries) return;
      if (error instanceof Refused && (error.status === 401 || error.status === 403)) {
        refuse(error);
        return;
      }
      updated(`Could not read the charts' data (${error.message}); retrying.`, true);
    }
    seriesTimer = setTimeout(refreshSeries, SERIES_MS);
  }

  $("days").addEventListener("change", () => refreshSeries());

  function busy() {
    const d = state.dashboard;
    if (!d) return false;
    return d.index.building || askedIndexFrom !== undefined ||
      d.rebuilds.some((r) => r.state === "running") ||
      d.projections.some((p) => p.status === "building");
  }

  // --- the status cards --------------------------------------------------------------------

  function drawDashboard(d) {
    drawProjections(d);
    drawIndex(d);
    drawRequests(d.requests);
  }

  function statusBadge(p) {
    const text = p.status === "live" ? "ok" : p.status;
    return el("span", { class: `badge ${text}` }, text);
  }

  function drawProjections(d) {
    const body = $("projections").tBodies[0];
    body.replaceChildren();
    const running = new Set(d.rebuilds.filter((r) => r.state === "running").map((r) => r.projection));
    for (const p of d.projections) {
      const row = el("tr", { "data-projection": p.name, "data-status": p.status });
      row.append(el("td", {}, `${p.name} v${p.version}`));
      const status = el("td");
      status.append(statusBadge(p));
      if (p.status === "building" && p.events_applied + p.lag_events > 0) {
        const share = p.events_applied / (p.events_applied + p.lag_events);
        status.append(` ${Math.floor(share * 100)}%`);
      }
      row.append(status);
      row.append(el("td", { class: "n" }, num(p.lag_events)));
      row.append(el("td", { class: "n" }, num(p.lag_seconds, 1)));
      row.append(el("td", { class: "n" }, num(p.position)));
      const action = el("td", { class: "n" });
      if (p.status !== "building") {
        const button = el("button", { type: "button", "data-rebuild": p.name }, "Rebuild");
        button.disabled = running.has(p.name);
        button.addEventListener("click", () => rebuildProjection(p.name));
        action.append(button);
      }
      row.append(action);
      body.append(row);
      if (p.error) {
        const why = el("tr");
        why.append(el("td", { colspan: "6", class: "error-text" },
          `stopped at event ${p.failed_position}: ${p.error} (retrying; never skipped)`));
        body.append(why);
      }
    }
    if (!d.projections.length) {
      const row = el("tr");
      row.append(el("td", { colspan: "6" }, "No projections yet."));
      body.append(row);
    }
    const jobs = $("rebuilds");
    jobs.replaceChildren();
    for (const r of d.rebuilds) {
      let text = `Rebuild of ${r.projection}`;
      if (r.version !== null) text += ` (v${r.version})`;
      if (r.state === "running") text += `: running, ${num(r.position)} of ${num(r.target)} events`;
      else if (r.state === "done") text += `: done, live since ${new Date(r.finished_at).toLocaleTimeString()}`;
      else text += `: failed: ${r.error}`;
      jobs.append(el("li", { "data-job": r.projection, "data-state": r.state }, text));
    }
  }

  function drawIndex(d) {
    const index = d.index;
    $("index-version").textContent = index.version || "none yet";
    $("index-age").textContent = index.age_seconds === null ? "–" : `${duration(index.age_seconds)} ago`;
    $("index-recall").textContent = index.recall_at_10 === null ? "–" : num(index.recall_at_10, 3);
    $("index-items").textContent = num(index.items);
    $("index-state").textContent = index.building ? "building…" : index.error ? `error: ${index.error}` : "serving";
    $("rebuild-index").disabled = index.building;
    if (askedIndexFrom !== undefined && !index.building && index.version !== askedIndexFrom) {
      state.published = index.version;
      askedIndexFrom = undefined;
      note(`New index version ${index.version} published.`);
    } else if (askedIndexFrom !== undefined && !index.building && index.error) {
      askedIndexFrom = undefined;
      note(`The index build failed: ${index.error}`, true);
    }
  }

  function drawRequests(r) {
    const t = r.total;
    $("requests-summary").textContent = r.routes.length
      ? `${num(t.rate_per_second, 2)} req/s · p50 ${ms(t.p50_seconds)} · p95 ${ms(t.p95_seconds)} · ` +
        `${num(t.errors, 0)} 5xx, over the last ${duration(r.window_seconds)} (process ${r.process_id})`
      : `No requests in the last ${duration(r.window_seconds)} (process ${r.process_id}).`;
    const body = $("requests").tBodies[0];
    body.replaceChildren();
    const top = Math.max(...r.routes.map((x) => x.rate_per_second), 0);
    for (const x of r.routes) {
      const row = el("tr", { "data-route": `${x.method} ${x.route}` });
      const route = el("td", { class: "route" });
      route.append(el("small", {}, `${x.method} `), x.route);
      row.append(route);
      const rate = el("td", { class: "n" });
      const bar = el("span", { class: "bar" });
      bar.style.width = `${top ? Math.max(2, (40 * x.rate_per_second) / top) : 0}px`;
      rate.append(bar, num(x.rate_per_second, 2));
      row.append(rate);
      row.append(el("td", { class: "n" }, num(x.client_errors)));
      row.append(el("td", { class: "n" }, num(x.errors)));
      row.append(el("td", { class: "n" }, ms(x.p50_seconds)));
      row.append(el("td", { class: "n" }, ms(x.p95_seconds)));
      row.append(el("td", { class: "n" }, ms(x.p99_seconds)));
      body.append(row);
    }
  }

  // --- the charts --------------------------------------------------------------------------

  const W = 960, H = 260, M = { top: 12, right: 16, bottom: 28, left: 52 };

  // Axes for values from `low` to `high` (0 included) over every day of the window.
  function frame(chart, axisDays, low, high, format) {
    chart.replaceChildren();
    chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const scale = ticks(Math.min(0, low), Math.max(0, high));
    const bottom = scale[0], top = scale[scale.length - 1];
    const plotW = W - M.left - M.right, plotH = H - M.top - M.bottom;
    const step = plotW / axisDays.length;
    const x = (i) => M.left + step * (i + 0.5);
    const y = (v) => M.top + (plotH * (top - v)) / (top - bottom);
    for (const t of scale) {
      chart.append(svg("line", { class: t === 0 ? "axis" : "grid", "data-tick": t,
        x1: M.left, x2: W - M.right, y1: y(t), y2: y(t) }));
      chart.append(svg("text", { x: M.left - 6, y: y(t) + 4, "text-anchor": "end" }, format(t)));
    }
    const every = Math.ceil(axisDays.length / 14);
    axisDays.forEach((day, i) => {
      if (i % every === 0) {
        chart.append(svg("text", { x: x(i), y: H - 8, "text-anchor": "middle" }, dayLabel(day)));
      }
    });
    return { x, y, step };
  }

  function empty(chart, text) {
    chart.replaceChildren();
    chart.setAttribute("viewBox", `0 0 ${W} 60`);
    chart.append(svg("text", { class: "empty", x: W / 2, y: 34, "text-anchor": "middle" }, text));
  }

  function legend(box, names, colour) {
    box.replaceChildren();
    for (const name of names) {
      const swatch = el("i");
      swatch.style.background = colour(name);
      const item = el("span", { "data-name": name });
      item.append(swatch, name);
      box.append(item);
    }
  }

  function drawRewards(series) {
    const chart = $("rewards-chart");
    const axisDays = days(series.since, series.until);
    const surfaces = [...new Set(series.rewards.map((r) => r.surface))].sort();
    const colour = (s) => PALETTE[surfaces.indexOf(s) % PALETTE.length];
    state.charts.rewards = surfaces.map((surface) => ({
      surface,
      points: series.rewards.filter((r) => r.surface === surface)
        .map((r) => ({ day: r.day, value: r.reward_per_slate, slates: r.slates })),
    }));
    legend($("rewards-legend"), surfaces, colour);
    if (!series.rewards.length) {
      empty(chart, "No slates were served in these days.");
      return;
    }
    // Skips weigh less than nothing, so a day's reward per slate can be negative.
    const values = series.rewards.map((r) => r.reward_per_slate);
    const { x, y } = frame(chart, axisDays, Math.min(...values), Math.max(...values),
      (t) => num(t, 1));
    for (const line of state.charts.rewards) {
      const g = svg("g", { class: "series", "data-surface": line.surface });
      // A day without slates has no reward per slate: the line breaks there.
      let path = "";
      let previous = -2;
      for (const p of line.points) {
        const i = axisDays.indexOf(p.day);
        path += `${i === previous + 1 ? "L" : "M"}${x(i).toFixed(1)},${y(p.value).toFixed(1)} `;
        previous = i;
      }
      g.append(svg("path", { class: "line", d: path.trim(), stroke: colour(line.surface) }));
      for (const p of line.points) {
        const dot = svg("circle", {
          class: "point", r: 4, fill: colour(line.surface),
          cx: x(axisDays.indexOf(p.day)).toFixed(1), cy: y(p.value).toFixed(1),
          "data-day": p.day, "data-value": p.value, "data-slates": p.slates,
        });
        dot.append(svg("title", {}, `${line.surface}, ${p.day}: ${num(p.value, 3)} per slate ` +
          `(${p.slates} slates)`));
        g.append(dot);
      }
      chart.append(g);
    }
  }

  function drawOutcomes(series) {
    const chart = $("outcomes-chart");
    const axisDays = days(series.since, series.until);
    const kinds = [...new Set(series.outcomes.map((o) => o.kind))].sort();
    const colour = (k) => PALETTE[kinds.indexOf(k) % PALETTE.length];
    state.charts.outcomes = series.outcomes.map((o) => ({ day: o.day, kind: o.kind, count: o.count }));
    legend($("outcomes-legend"), kinds, colour);
    if (!series.outcomes.length) {
      empty(chart, "No outcomes were attributed to slates served in these days.");
      return;
    }
    const totals = new Map();
    for (const o of series.outcomes) totals.set(o.day, (totals.get(o.day) || 0) + o.count);
    const { x, y, step } = frame(chart, axisDays, 0, Math.max(...totals.values()), (t) => num(t));
    const width = Math.min(step * 0.7, 48);
    const stacked = new Map();
    for (const kind of kinds) {
      for (const o of series.outcomes.filter((e) => e.kind === kind)) {
        const i = axisDays.indexOf(o.day);
        const below = stacked.get(o.day) || 0;
        stacked.set(o.day, below + o.count);
        const bar = svg("rect", {
          class: "bar-segment", fill: colour(kind),
          x: (x(i) - width / 2).toFixed(1), width: width.toFixed(1),
          y: y(below + o.count).toFixed(1), height: (y(below) - y(below + o.count)).toFixed(1),
          "data-day": o.day, "data-kind": kind, "data-value": o.count,
        });
        bar.append(svg("title", {}, `${o.day}: ${o.count} ${kind}`));
        chart.append(bar);
      }
    }
  }

  // --- the buttons -------------------------------------------------------------------------

  $("rebuild-index").addEventListener("click", async () => {
    if (!confirm("Build a new index now and publish it to every gateway?")) return;
    const before = state.dashboard ? state.dashboard.index.version : null;
    try {
      await call("POST", "/v1/admin/index/rebuild");
      askedIndexFrom = before;
      note("Index build started; this page shows the new version once it is published.");
    } catch (error) {
      note(`The index build was refused: ${error.message}`, true);
    }
    refresh();
  });

  async function rebuildProjection(name) {
    const question = `Rebuild the ${name} projection from the whole log? The live version ` +
      "keeps serving until the new one has caught up, then they are swapped.";
    if (!confirm(question)) return;
    try {
      await call("POST", "/v1/admin/projections/rebuild", { projection: name });
      note(`Rebuild of ${name} started.`);
    } catch (error) {
      note(`The rebuild was refused: ${error.message}`, true);
    }
    refresh();
  }

  refresh(true);
})();
