// durable_tq dashboard: reads and changes the broker through the public /v1 API only.
// Plain JavaScript, no build step. Pages are hash routes (#/, #/queues/NAME, #/tasks/ID,
// #/workers); the page on screen polls its few routes every POLL_MS while the tab is visible.
"use strict";
(function () {
  const POLL_MS = 2000;
  const READY_EVERY_MS = 5000;
  const SLOW_EVERY_MS = 10000; // queue limits and schedules: they change rarely
  const PAGE_SIZE = 50;
  const FOLD_CHARS = 1500;
  const FOLD_LINES = 30;
  const STATES = ["waiting", "scheduled", "queued", "leased", "succeeded", "dead", "cancelled"];
  const FINISHED = new Set(["succeeded", "dead", "cancelled"]);
  const PURGEABLE = STATES.filter((s) => s !== "leased");
  const isAdmin = document.body.dataset.role === "admin";
  const NOT_ADMIN = "Needs an admin token";
  const number = new Intl.NumberFormat();
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  const banner = document.getElementById("banner");
  const toastBox = document.getElementById("toast");

  // --- DOM -------------------------------------------------------------------------------

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    setProps(el, props);
    append(el, children);
    return el;
  }

  function svg(tag, props) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    setProps(el, props);
    return el;
  }

  function setProps(el, props) {
    for (const [name, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
  }

  // Replace a box's content, keeping keyboard focus on the element with the same data-key.
  function swap(box, ...children) {
    const active = document.activeElement;
    const key = active && box.contains(active) ? active.dataset.key : undefined;
    box.replaceChildren();
    append(box, children);
    if (key) {
      const again = box.querySelector(`[data-key="${CSS.escape(key)}"]`);
      if (again) again.focus();
    }
  }

  // Re-render a box only when what it shows changed (keeps open <details>, scroll, focus).
  function render(box, data, build) {
    const text = JSON.stringify(data);
    if (box.dataset.shown === text) return;
    box.dataset.shown = text;
    swap(box, build(data));
  }

  // --- numbers and times -------------------------------------------------------------------

  let skew = 0; // broker clock minus browser clock, seconds (from the Date header)

  function now() {
    return Date.now() / 1000 + skew;
  }

  function count(n) {
    return number.format(n || 0);
  }

  function rate(value) {
    const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
    return new Intl.NumberFormat(undefined, { maximumFractionDigits: digits }).format(value);
  }

  function duration(seconds) {
    const s = Math.abs(seconds);
    if (s < 1) return "now";
    if (s < 60) return `${Math.floor(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${count(Math.floor(s / 86400))} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function relative(ts) {
    const delta = now() - ts;
    if (Math.abs(delta) < 1) return "just now";
    return delta > 0 ? `${duration(delta)} ago` : `in ${duration(delta)}`;
  }

  function absolute(ts) {
    return new Date(ts * 1000).toLocaleString(undefined, {
      dateStyle: "medium",
      timeStyle: "medium",
    });
  }

  function when(ts) {
    if (ts === null || ts === undefined) return h("span", { class: "muted" }, "—");
    const iso = new Date(ts * 1000).toISOString();
    return h("time", { datetime: iso, title: absolute(ts), "data-ts": ts }, relative(ts));
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return h("span", { class: "muted" }, "—");
    const since = now() - seconds;
    return h("span", { title: `waiting since ${absolute(since)}` }, duration(seconds));
  }

  function refreshTimes() {
    for (const el of main.querySelectorAll("time[data-ts]")) {
      el.textContent = relative(Number(el.dataset.ts));
    }
  }

  function stateBadge(state) {
    return h("span", { class: `state state-${state}` }, state);
  }

  // --- the API -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (method !== "GET") headers["X-Durable-TQ-CSRF"] = "1";
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    noteClock(response);
    if (response.status === 401) {
      window.location.assign("/login");
      throw new ApiError(401, "unauthorized", "the token is no longer accepted: log in again");
    }
    const type = response.headers.get("content-type") || "";
    const data = type.includes("json") ? await response.json() : null;
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(response.status, error.code || `http_${response.status}`,
        error.message || response.statusText);
    }
    return data;
  }

  function noteClock(response) {
    const date = Date.parse(response.headers.get("date") || "");
    if (Number.isNaN(date)) return;
    const offset = (date - Date.now()) / 1000;
    // The header has whole seconds: only a clear difference is worth correcting.
    skew = Math.abs(offset) > 2 ? offset : 0;
  }

  function q(name) {
    return encodeURIComponent(name);
  }

  // --- banner, live indicator, toasts ---------------------------------------------------------

  const trouble = { ready: null, reach: null };
  let lastReady = 0;

  function showBanner() {
    const text = trouble.reach || trouble.ready;
    banner.hidden = !text;
    banner.textContent = text || "";
  }

  async function checkReady(force) {
    if (!force && Date.now() - lastReady < READY_EVERY_MS) return;
    lastReady = Date.now();
    try {
      const response = await fetch("/readyz", { cache: "no-store" });
      const body = await response.json();
      trouble.ready = response.ok ? null
        : /stopping/.test(body.reason || "") ? "The broker is shutting down."
          : `The database is not writable: ${body.reason || "unknown reason"}.`;
    } catch (error) {
      trouble.ready = null; // unreachable: the poll says so
    }
    showBanner();
  }

  function setLive(ok, text) {
    if (live.textContent !== text) live.textContent = text;
    live.classList.toggle("stale", !ok);
  }

  let toastTimer = 0;
  function toast(message, isError) {
    toastBox.textContent = message;
    toastBox.className = `toast show${isError ? " error" : ""}`;
    toastBox.setAttribute("role", isError ? "alert" : "status");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { toastBox.className = "toast"; }, isError ? 10000 : 6000);
  }

  // Run a change, tell how it went, refresh the page at once.
  async function act(run, done) {
    try {
      const result = await run();
      toast(done(result));
    } catch (error) {
      toast(`Failed: ${error.message}`, true);
    }
    restart();
  }

  function adminButton(label, props, onclick) {
    const attrs = Object.assign({ type: "button", onclick }, props);
    if (!isAdmin) {
      attrs.disabled = true;
      attrs.title = NOT_ADMIN;
    }
    return h("button", attrs, label);
  }

  // --- the confirmation dialog ----------------------------------------------------------------

  const dialog = document.getElementById("confirm");

  function confirmAction(title, body, yesLabel, mustType) {
    const yes = document.getElementById("confirm-yes");
    document.getElementById("confirm-title").textContent = title;
    yes.textContent = yesLabel;
    const box = document.getElementById("confirm-body");
    box.replaceChildren();
    append(box, [body]);
    yes.disabled = false;
    if (mustType !== undefined) {
      const input = h("input", { id: "confirm-input", type: "text", autocomplete: "off",
        spellcheck: "false" });
      box.append(h("div", { class: "field" },
        h("label", { for: "confirm-input" }, `Type ${mustType} to confirm`), input));
      yes.disabled = true;
      input.addEventListener("input", () => { yes.disabled = input.value !== mustType; });
      input.addEventListener("keydown", (event) => {
        if (event.key !== "Enter") return;
        event.preventDefault();
        if (input.value === mustType) dialog.close("ok");
      });
    }
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
      if (mustType !== undefined) document.getElementById("confirm-input").focus();
      else document.getElementById("confirm-no").focus();
    });
  }

  // --- tables -----------------------------------------------------------------------------------

  // columns: [{label, num, cell(row) -> node|text}]
  function table(caption, columns, rows, foot) {
    const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)));
    const line = (row) => h("tr", {}, columns.map((c) => {
      const value = c.cell(row);
      const zero = c.num && (value === "0" || value === 0);
      const classes = [c.num ? "num" : "", zero ? "zero" : "", value === "" ? "empty" : ""];
      // One child: on narrow screens the cell is a flex row of its label and its value.
      return h("td", { "data-label": c.label, class: classes.join(" ").trim() || null },
        h("span", {}, typeof value === "number" ? count(value) : value));
    }));
    return h("div", { class: "table-wrap" },
      h("table", { class: "stack" },
        h("caption", { class: "muted", hidden: !caption }, caption || ""),
        h("thead", {}, head),
        h("tbody", {}, rows.map(line)),
        foot ? h("tfoot", {}, line(foot)) : null));
  }

  // --- charts -------------------------------------------------------------------------------------

  const CHARTS = [
    ["enqueued", "Enqueued"],
    ["succeeded", "Succeeded"],
    ["dead", "Dead"],
  ];

  // A step chart: each sample's rate held over its seconds. Until the broker has a full
  // window of history, the chart spans the history it has.
  function chart(kind, label, data) {
    const W = 300;
    const H = 72;
    const samples = data ? data.samples : [];
    const values = samples.map((s) => s[kind]);
    const peak = Math.max(0, ...values);
    const top = niceCeiling(peak);
    const latest = values.length ? values[values.length - 1] : 0;
    const end = samples.length ? samples[samples.length - 1].at : now();
    const first = samples.length ? samples[0].at - samples[0].seconds : end;
    const start = Math.max(end - (data ? data.window : 900), first);
    const x = (at) => (((Math.max(at, start) - start) / (end - start || 1)) * W).toFixed(1);
    const y = (v) => (H - 2 - (v / top) * (H - 6)).toFixed(1);
    const points = samples.flatMap((s) => [`${x(s.at - s.seconds)},${y(s[kind])}`, `${x(s.at)},${y(s[kind])}`]);
    const total = samples.reduce((sum, s) => sum + s[kind] * s.seconds, 0);
    const summary = samples.length
      ? `${label} per second over the last ${duration(end - start)}: ` +
        `now ${rate(latest)}, peak ${rate(peak)}, ${count(Math.round(total))} in all`
      : `${label} per second: no samples yet (one every ${data ? data.interval : 5} s)`;
    const graph = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
      "aria-label": summary });
    graph.append(svg("line", { class: "base", x1: 0, x2: W, y1: H - 2, y2: H - 2 }));
    if (points.length) {
      graph.append(svg("path", { class: "area",
        d: `M${x(start)},${H - 2} L${points.join(" L")} L${x(end)},${H - 2} Z` }));
      graph.append(svg("polyline", { class: "line", points: points.join(" ") }));
    }
    return h("figure", { class: `chart ${kind}`, title: summary },
      h("figcaption", {}, h("strong", {}, `${label}/s`),
        h("span", { class: "num" }, samples.length ? `now ${rate(latest)} · peak ${rate(peak)}` : "collecting…")),
      graph,
      h("div", { class: "axis", "aria-hidden": "true" },
        h("span", {}, samples.length ? `${duration(end - start)} ago` : ""),
        h("span", {}, `scale ${rate(top)}/s`), h("span", {}, "now")));
  }

  function niceCeiling(value) {
    if (value <= 1) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (value <= step * power) return step * power;
    }
    return 10 * power;
  }

  // --- pages ----------------------------------------------------------------------------------------

  function overviewPage() {
    const cards = h("div", { class: "cards" });
    const charts = h("div", { class: "charts" });
    const queues = h("div");
    const workers = h("div");
    let throughput = null;
    let throughputAt = 0;
    return {
      title: "Overview",
      nav: "overview",
      mount() {
        main.append(h("h1", {}, "Overview"), cards,
          h("h2", {}, "Throughput"), charts,
          h("h2", {}, "Queues"), queues,
          h("h2", {}, "Live workers"), workers);
      },
      async refresh() {
        const wantRates = !throughput || Date.now() - throughputAt >= throughput.interval * 1000;
        const [stats, registered, rates] = await Promise.all([
          api("GET", "/v1/stats"),
          api("GET", "/v1/workers"),
          wantRates ? api("GET", "/v1/throughput") : null,
        ]);
        if (rates) {
          throughput = rates;
          throughputAt = Date.now();
        }
        const names = Object.keys(stats.queues).sort();
        const totals = {};
        for (const state of STATES) {
          totals[state] = names.reduce((sum, name) => sum + (stats.queues[name][state] || 0), 0);
        }
        render(cards, { totals, workers: stats.workers, connections: stats.connections, queues: names.length },
          (d) => [
            ...STATES.map((state) => card(state, d.totals[state], `state-${state}`)),
            card("queues", d.queues), card("live workers", d.workers), card("TCP connections", d.connections),
          ]);
        if (rates) swap(charts, CHARTS.map(([kind, label]) => chart(kind, label, throughput)));
        render(queues, { names, queues: stats.queues, totals }, (d) => queueTable(d));
        const alive = registered.workers.filter((w) => w.alive);
        render(workers, alive, (list) => list.length
          ? table(null, [
            { label: "Worker", cell: (w) => h("a", { href: "#/workers", "data-key": `w-${w.id}` }, w.id) },
            { label: "State", cell: (w) => stateBadge(w.state) },
            { label: "Queues", cell: (w) => (w.queues || ["all"]).join(", ") },
            { label: "Leases", num: true, cell: (w) => `${count(w.leased)} / ${count(w.concurrency)}` },
            { label: "Last heartbeat", cell: (w) => when(w.last_heartbeat) },
          ], list)
          : h("p", { class: "muted" }, "No live workers."));
      },
    };
  }

  function card(label, value, cls) {
    return h("div", { class: "card" }, h("div", { class: "label" }, label),
      h("div", { class: `value num ${cls || ""}`.trim(), "data-count": label }, count(value)));
  }

  function queueTable(d) {
    if (!d.names.length) return h("p", { class: "muted" }, "No queues yet: enqueue a task to make one.");
    const columns = [
      { label: "Queue", cell: (r) => r.total ? h("strong", {}, "Total")
        : h("a", { href: `#/queues/${q(r.name)}`, "data-key": `q-${r.name}` }, r.name) },
      { label: "Status", cell: (r) => r.total ? "" : r.paused ? h("span", { class: "badge state-paused" }, "paused")
        : h("span", { class: "muted" }, "active") },
      ...STATES.map((state) => ({ label: state, num: true, cell: (r) => r[state] || 0 })),
      { label: "Oldest waiting", num: true, cell: (r) => r.total ? "" : age(r.oldest_queued_age) },
    ];
    const rows = d.names.map((name) => Object.assign({ name }, d.queues[name]));
    return table(null, columns, rows, Object.assign({ total: true }, d.totals));
  }

  function parseHashQuery(text) {
    return new URLSearchParams(text || "");
  }

  function queuePage(name, params) {
    const state = STATES.includes(params.get("state")) ? params.get("state") : null;
    const after = /^\d+$/.test(params.get("after") || "") ? params.get("after") : null;
    const header = h("div");
    const toolbar = h("div", { class: "toolbar" });
    const filters = h("div");
    const tasks = h("div");
    const limits = h("div");
    const schedules = h("div");
    let slowAt = 0;
    const link = (s, a) => {
      const query = new URLSearchParams();
      if (s) query.set("state", s);
      if (a) query.set("after", a);
      const text = query.toString();
      return `#/queues/${q(name)}${text ? `?${text}` : ""}`;
    };
    return {
      title: `Queue ${name}`,
      nav: "overview",
      mount() {
        main.append(header, toolbar, filters, h("h2", {}, state ? `Tasks: ${state}` : "Tasks"), tasks,
          h("h2", {}, "Limits"), limits, h("h2", {}, "Schedules"), schedules);
      },
      async refresh() {
        const slow = Date.now() - slowAt >= SLOW_EVERY_MS;
        const listQuery = new URLSearchParams({ queue: name, limit: String(PAGE_SIZE) });
        if (state) listQuery.set("state", state);
        if (after) listQuery.set("cursor", after);
        let counts;
        try {
          counts = await api("GET", `/v1/queues/${q(name)}`);
        } catch (error) {
          if (error.code !== "not_found") throw error;
          render(header, null, () => [h("h1", {}, `Queue ${name}`),
            h("p", {}, `No queue named ${name}: it has no tasks and no settings.`)]);
          return;
        }
        const [page, info, scheduleList] = await Promise.all([
          api("GET", `/v1/tasks?${listQuery}`),
          slow ? api("GET", `/v1/queues/${q(name)}/info`) : null,
          slow ? api("GET", "/v1/schedules") : null,
        ]);
        if (slow) slowAt = Date.now();
        const oldest = counts.oldest_queued_age === null ? null : Math.floor(counts.oldest_queued_age);
        render(header, { paused: counts.paused, oldest }, () => [
          h("h1", {}, `Queue ${name} `, counts.paused ? h("span", { class: "badge state-paused" }, "paused") : null),
          h("p", {}, "Oldest waiting task: ", age(counts.oldest_queued_age)),
        ]);
        render(toolbar, { paused: counts.paused, dead: counts.dead }, (d) => queueActions(name, d));
        const total = STATES.reduce((sum, s) => sum + (counts[s] || 0), 0);
        render(filters, { counts, state, total }, () => h("nav", { "aria-label": "Filter tasks by state" },
          h("ul", { class: "filters" },
            h("li", {}, h("a", { href: link(null), "aria-current": state ? null : "true", "data-key": "f-all" },
              `all ${count(total)}`)),
            STATES.map((s) => h("li", {}, h("a", { href: link(s), "aria-current": state === s ? "true" : null,
              "data-key": `f-${s}` }, `${s} ${count(counts[s])}`))))));
        render(tasks, { page, after }, () => taskTable(page, after, link(state), link(state, page.next_after_id)));
        if (info) render(limits, info, limitsFacts);
        if (scheduleList) {
          const mine = scheduleList.schedules.filter((s) => s.queue === name);
          render(schedules, mine, scheduleTable);
        }
      },
    };
  }

  function queueActions(name, d) {
    const pause = adminButton(d.paused ? "Resume" : "Pause", { "data-key": "a-pause" }, () => act(
      () => api("POST", `/v1/queues/${q(name)}/${d.paused ? "resume" : "pause"}`),
      () => `Queue ${name} ${d.paused ? "resumed" : "paused"}.`));
    const requeue = adminButton(`Requeue all dead (${count(d.dead)})`, { "data-key": "a-requeue",
      disabled: !d.dead }, async () => {
      const ok = await confirmAction(`Requeue the dead tasks of ${name}?`,
        h("p", {}, `${count(d.dead)} dead tasks go back to queued with their attempts reset.`), "Requeue");
      if (ok) {
        act(() => api("POST", "/v1/requeue", { queue: name, state: "dead" }),
          (r) => `Requeued ${count(r.count)} tasks${r.skipped.length ? `; ${count(r.skipped.length)} skipped` : ""}.`);
      }
    });
    const purge = adminButton("Purge…", { class: "danger", "data-key": "a-purge" }, async () => {
      const select = h("select", { id: "purge-state" },
        h("option", { value: "" }, "every state but leased"),
        PURGEABLE.map((s) => h("option", { value: s }, s)));
      const body = [
        h("p", {}, "Deletes the queue's tasks for good. Leased tasks are never purged."),
        h("div", { class: "field" }, h("label", { for: "purge-state" }, "Tasks to delete"), select),
      ];
      const ok = await confirmAction(`Purge queue ${name}?`, body, "Purge", name);
      if (!ok) return;
      const query = new URLSearchParams({ confirm: name });
      if (select.value) query.set("state", select.value);
      act(() => api("DELETE", `/v1/queues/${q(name)}/tasks?${query}`),
        (r) => `Purged ${count(r.count)} tasks from ${name}.`);
    });
    return [pause, requeue, purge];
  }

  function taskTable(page, after, first, next) {
    const pager = h("div", { class: "pager" },
      after ? h("a", { href: first, "data-key": "p-first" }, "← First page") : null,
      page.next_after_id !== null ? h("a", { href: next, "data-key": "p-next" }, "Next page →") : null,
      h("span", { class: "muted" }, page.tasks.length
        ? `tasks #${page.tasks[0].task_id} to #${page.tasks[page.tasks.length - 1].task_id}, by id`
        : "no tasks"));
    if (!page.tasks.length) return [h("p", { class: "muted" }, "No tasks here."), after ? pager : null];
    return [table(null, [
      { label: "Task", cell: (t) => h("a", { href: `#/tasks/${t.task_id}`, "data-key": `t-${t.task_id}` }, `#${t.task_id}`) },
      { label: "State", cell: (t) => stateBadge(t.state) },
      { label: "Priority", num: true, cell: (t) => t.priority },
      { label: "Attempts", num: true, cell: (t) => `${count(t.attempts)} / ${count(t.max_attempts)}` },
      { label: "Created", cell: (t) => when(t.created_at) },
      { label: "Runs at", cell: (t) => FINISHED.has(t.state) ? h("span", { class: "muted" }, "—") : when(t.run_at) },
      { label: "Updated", cell: (t) => when(t.updated_at) },
      { label: "Worker", cell: (t) => t.worker_id || h("span", { class: "muted" }, "—") },
      { label: "Last error", cell: (t) => t.last_error ? h("span", { class: "err", title: t.last_error }, clip(t.last_error, 80)) : "" },
    ], page.tasks), pager];
  }

  function clip(text, length) {
    const line = text.split("\n")[0];
    return line.length > length ? `${line.slice(0, length - 1)}…` : line;
  }

  function limitsFacts(info) {
    const l = info.limits;
    const show = (v, unit) => v === null || v === undefined ? h("span", { class: "muted" }, "none") : `${count(v)}${unit || ""}`;
    return h("dl", { class: "facts" },
      h("dt", {}, "Rate"), h("dd", {}, show(l.rate, " tasks/s")),
      h("dt", {}, "Burst"), h("dd", {}, show(l.burst)),
      h("dt", {}, "Tokens now"), h("dd", {}, info.tokens === null ? h("span", { class: "muted" }, "—") : rate(info.tokens)),
      h("dt", {}, "Max leased"), h("dd", {}, show(l.max_leased)),
      h("dt", {}, "Per-key concurrency"), h("dd", {}, show(l.key_concurrency)));
  }

  function scheduleTable(list) {
    if (!list.length) return h("p", { class: "muted" }, "No schedules fire into this queue.");
    return table(null, [
      { label: "Schedule", cell: (s) => h("code", {}, s.name) },
      { label: "When", cell: (s) => s.cron ? `cron ${s.cron}${s.tz ? ` (${s.tz})` : ""}` : `every ${duration(s.every)}` },
      { label: "Next run", cell: (s) => s.paused ? h("span", { class: "badge state-paused" }, "paused") : when(s.next_run_at) },
      { label: "Last fired", cell: (s) => when(s.last_slot) },
      { label: "Priority", num: true, cell: (s) => s.priority },
    ], list);
  }

  function taskPage(taskId) {
    const header = h("div");
    const toolbar = h("div", { class: "toolbar" });
    const facts = h("div");
    const values = h("div");
    return {
      title: `Task ${taskId}`,
      nav: "overview",
      mount() {
        main.append(header, toolbar, facts, values);
      },
      async refresh() {
        let task;
        try {
          task = (await api("GET", `/v1/tasks/${taskId}`)).task;
        } catch (error) {
          if (error.code !== "not_found") throw error;
          render(header, null, () => [h("h1", {}, `Task #${taskId}`),
            h("p", {}, "No such task (it may have been purged, or removed after its retention).")]);
          swap(toolbar);
          swap(facts);
          swap(values);
          return;
        }
        render(header, { state: task.state, queue: task.queue, cancel: task.cancel_requested }, () => [
          h("h1", {}, `Task #${task.task_id} `, stateBadge(task.state),
            task.cancel_requested && !FINISHED.has(task.state) ? h("span", { class: "badge state-dead" }, "cancel requested") : null),
          h("p", {}, "Queue ", h("a", { href: `#/queues/${q(task.queue)}` }, task.queue)),
        ]);
        render(toolbar, { state: task.state, cancel: task.cancel_requested }, () => taskActions(task));
        render(facts, task, taskFacts);
        render(values, { payload: task.payload, result: task.result, error: task.last_error }, (d) => [
          h("h2", {}, "Payload"), jsonBlock(d.payload, "payload"),
          h("h2", {}, "Result"), d.result === null ? h("p", { class: "muted" }, "None.") : jsonBlock(d.result, "result"),
          h("h2", {}, "Last error"), d.error ? textBlock(d.error, "error") : h("p", { class: "muted" }, "None."),
        ]);
      },
    };
  }

  function taskActions(task) {
    const requeue = adminButton("Requeue", { "data-key": "a-requeue",
      disabled: !(task.state === "dead" || task.state === "cancelled"),
      title: isAdmin ? "Back to queued, attempts reset (dead or cancelled tasks)" : NOT_ADMIN }, () => act(
      () => api("POST", `/v1/tasks/${task.task_id}/requeue`),
      (r) => r.count ? `Task #${task.task_id} requeued.` : `Not requeued: ${r.skipped.map((s) => s.reason).join("; ")}`));
    const cancel = adminButton("Cancel…", { class: "danger", "data-key": "a-cancel",
      disabled: FINISHED.has(task.state) || task.cancel_requested }, async () => {
      const leased = task.state === "leased";
      const ok = await confirmAction(`Cancel task #${task.task_id}?`,
        h("p", {}, leased ? "It is running: its worker is told to stop it, and it ends cancelled."
          : "It will not run; it can be requeued later."), "Cancel task");
      if (ok) {
        act(() => api("DELETE", `/v1/tasks/${task.task_id}`),
          (r) => r.state === "cancelling" ? `Task #${task.task_id}: its worker is told to stop it.` : `Task #${task.task_id} cancelled.`);
      }
    });
    return [requeue, cancel];
  }

  function taskFacts(task) {
    const rows = [
      ["Attempts", `${count(task.attempts)} of ${count(task.max_attempts)}`],
      ["Priority", count(task.priority)],
      ["Created", when(task.created_at)],
      ["Runs at", FINISHED.has(task.state) ? null : when(task.run_at)],
      ["Updated", when(task.updated_at)],
      ["Finished", task.finished_at === null ? null : when(task.finished_at)],
      ["Removed", task.expires_at === null || task.expires_at === undefined ? null : when(task.expires_at)],
      ["Lease holder", task.state === "leased" ? task.worker_id || "an HTTP or anonymous client" : null],
      ["Lease expires", task.lease_expires_at === null ? null : when(task.lease_expires_at)],
      ["Progress", task.progress === null || task.progress === undefined ? null : h("span", {},
        h("progress", { max: 1, value: task.progress, "aria-label": "progress" }),
        ` ${Math.round(task.progress * 100)}%`, task.progress_message ? ` — ${task.progress_message}` : "")],
      ["Unique key", task.unique_key === null ? null : h("code", {}, task.unique_key)],
    ];
    return h("dl", { class: "facts" }, rows.filter(([, v]) => v !== null).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function jsonBlock(value, what) {
    return textBlock(JSON.stringify(value, null, 2), what);
  }

  function textBlock(text, what) {
    const lines = text.split("\n").length;
    if (text.length <= FOLD_CHARS && lines <= FOLD_LINES) return h("pre", { tabindex: 0 }, text);
    const size = new TextEncoder().encode(text).length;
    return h("details", {},
      h("summary", {}, `Show the ${what}: ${count(lines)} lines, ${size >= 10240 ? `${count(Math.round(size / 1024))} KiB` : `${count(size)} bytes`}`),
      h("pre", { tabindex: 0 }, text));
  }

  function workersPage() {
    const list = h("div");
    return {
      title: "Workers",
      nav: "workers",
      mount() {
        main.append(h("h1", {}, "Workers"), list);
      },
      async refresh() {
        const [registered, leased] = await Promise.all([
          api("GET", "/v1/workers"),
          api("GET", "/v1/tasks?state=leased&limit=1000"),
        ]);
        const held = {};
        for (const task of leased.tasks) {
          if (task.worker_id) (held[task.worker_id] = held[task.worker_id] || []).push(task.task_id);
        }
        const rows = registered.workers.map((w) => Object.assign({ held: held[w.id] || [] }, w));
        render(list, rows, workerTable);
      },
    };
  }

  function workerTable(rows) {
    if (!rows.length) return h("p", { class: "muted" }, "No workers registered. Workers register when they connect (durable-tq worker).");
    const link = (w) => !w.alive ? "gone" : w.connected ? "connected" : "disconnected";
    return table(null, [
      { label: "Worker", cell: (w) => h("strong", {}, w.id) },
      { label: "Host", cell: (w) => (w.meta && w.meta.host) || h("span", { class: "muted" }, "—") },
      { label: "PID", num: true, cell: (w) => w.meta && w.meta.pid !== undefined ? String(w.meta.pid) : "—" },
      { label: "Queues", cell: (w) => w.queues ? w.queues.map((name, i) => [i ? ", " : "", h("a", { href: `#/queues/${q(name)}` }, name)]) : "all" },
      { label: "Concurrency", num: true, cell: (w) => w.prefetch ? `${count(w.concurrency)} + ${count(w.prefetch)} prefetch` : w.concurrency },
      { label: "Leases", cell: (w) => leases(w) },
      { label: "Last heartbeat", cell: (w) => when(w.last_heartbeat) },
      { label: "State", cell: (w) => stateBadge(w.state) },
      { label: "Connection", cell: (w) => h("span", { class: `state-${link(w)}` }, link(w)) },
      { label: "Actions", cell: (w) => workerActions(w) },
    ], rows);
  }

  function leases(w) {
    if (!w.leased) return h("span", { class: "muted" }, "none");
    const shown = w.held.slice(0, 8);
    return [`${count(w.leased)}: `, shown.map((id, i) => [i ? ", " : "", h("a", { href: `#/tasks/${id}` }, `#${id}`)]),
      w.held.length > shown.length ? ` +${count(w.held.length - shown.length)}` : ""];
  }

  function workerActions(w) {
    const setState = (state, done) => act(
      () => api("POST", `/v1/workers/${q(w.id)}/state`, { state }), () => done);
    const quiet = w.state === "quiet"
      ? adminButton("Resume", { "data-key": `resume-${w.id}`, "aria-label": `Resume worker ${w.id}` },
        () => setState("running", `Worker ${w.id} may take tasks again.`))
      : adminButton("Quiet", { "data-key": `quiet-${w.id}`, "aria-label": `Quiet worker ${w.id}`,
        disabled: w.state === "terminate" }, () => setState("quiet", `Worker ${w.id} takes no new tasks.`));
    const terminate = adminButton("Terminate…", { class: "danger", "data-key": `terminate-${w.id}`,
      "aria-label": `Terminate worker ${w.id}`, disabled: w.state === "terminate" }, async () => {
      const ok = await confirmAction(`Terminate worker ${w.id}?`,
        h("p", {}, "It stops taking tasks, finishes or hands back what it holds, and exits."), "Terminate");
      if (ok) setState("terminate", `Worker ${w.id} is told to terminate.`);
    });
    return h("span", { class: "row-actions" }, quiet, terminate);
  }

  // --- routing and polling ---------------------------------------------------------------------------

  function route() {
    const hash = window.location.hash || "#/";
    const [path, query] = hash.slice(1).split("?");
    const params = parseHashQuery(query);
    let match = path.match(/^\/queues\/(.+)$/);
    if (match) return queuePage(decodeURIComponent(match[1]), params);
    match = path.match(/^\/tasks\/(\d+)$/);
    if (match) return taskPage(Number(match[1]));
    if (path === "/workers") return workersPage();
    return overviewPage();
  }

  let page = null;
  let generation = 0;
  let timer = 0;
  let lastOk = 0;

  async function tick(mine) {
    if (mine !== generation) return;
    if (!document.hidden) {
      try {
        await page.refresh();
        if (mine !== generation) return;
        lastOk = Date.now();
        trouble.reach = null;
        setLive(true, `live · every ${POLL_MS / 1000} s`);
        refreshTimes();
        await checkReady(false);
      } catch (error) {
        if (mine !== generation) return;
        handleFailure(error);
      }
    } else {
      setLive(true, "paused while the tab is hidden");
    }
    if (mine === generation) timer = setTimeout(() => tick(mine), POLL_MS);
  }

  function handleFailure(error) {
    if (error instanceof ApiError) {
      if (error.code === "shutting_down") trouble.reach = "The broker is shutting down.";
      else if (error.status >= 500) trouble.reach = `The broker answered ${error.status}: ${error.message}`;
      else toast(error.message, true);
    } else {
      trouble.reach = "Cannot reach the broker; retrying every 2 s.";
    }
    showBanner();
    const since = lastOk ? ` · last update ${duration((Date.now() - lastOk) / 1000)} ago` : "";
    setLive(false, `not updating${since}`);
    if (error instanceof ApiError && error.status === 503) checkReady(true);
  }

  function restart() {
    generation += 1;
    clearTimeout(timer);
    tick(generation);
  }

  function navigate() {
    page = route();
    document.title = `${page.title} · durable_tq`;
    for (const link of document.querySelectorAll("[data-nav]")) {
      if (link.dataset.nav === page.nav) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    main.replaceChildren();
    page.mount();
    restart();
  }

  window.addEventListener("hashchange", () => {
    navigate();
    main.focus({ preventScroll: true });
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) restart();
  });
  navigate();
})();
