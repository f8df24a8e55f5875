// Switchyard ops console. Plain script, no dependencies, no build step: served by the
// bridge from the files embedded in its binary (src/console.rs).
//
// Every read and every change goes through the bridge's APIs with the operator's admin
// token as a bearer header: GET /admin/flags, GET /admin/stats, GET /admin/audit,
// PUT /admin/flags/{route} (with If-Match), POST /admin/flags/{route}/preview,
// POST /admin/flags/{route}/rollback, GET /api/flags/{route}. The page holds no policy:
// what a change does is the bridge's answer, never computed here. The token lives in this
// tab's sessionStorage and never goes into a URL.
"use strict";

(() => {
  const TOKEN_KEY = "switchyard.adminToken";
  const REFRESH_MS = 2000;
  const TRANSPORTS = [
    ["socketio", "Socket.IO"],
    ["ndjson", "NDJSON"],
    ["sse", "SSE"],
  ];
  // The staged cutover recipe: each step is a mode and, for rollouts, a percent.
  const RECIPE = [
    { mode: "legacy", label: "legacy (Socket.IO only)" },
    { mode: "dual", label: "dual (both served)" },
    { mode: "rollout", percent: 1, label: "rollout 1 %" },
    { mode: "rollout", percent: 10, label: "rollout 10 %" },
    { mode: "rollout", percent: 50, label: "rollout 50 %" },
    { mode: "new", label: "new (HTTP only)" },
  ];
  const FIELDS = ["mode", "percent", "sticky", "allow", "deny", "strict"];

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  };

  const state = {
    flags: null, // GET /admin/flags
    stats: null, // GET /admin/stats
    prevStats: null,
    prevAt: 0,
    statsAt: 0,
    cards: new Map(), // route -> {elements}
    timer: null,
    pending: null, // the change the confirmation dialog would apply
  };

  // ---- the API ---------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || `HTTP ${status}`);
      this.status = status;
      this.errorType = e.error_type || "";
      this.body = body;
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  async function api(method, path, { body, ifMatch, auth = true } = {}) {
    const headers = { accept: "application/json" };
    if (auth) headers.authorization = `Bearer ${token() || ""}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    if (ifMatch !== undefined) headers["if-match"] = `"${ifMatch}"`;
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
    let json = null;
    try {
      json = await res.json();
    } catch {
      json = null;
    }
    if (!res.ok) throw new ApiError(res.status, json);
    return json;
  }

  const refusal = (e) =>
    e instanceof ApiError && (e.status === 401 || e.status === 403)
      ? `The admin API refused this: ${e.status} ${e.errorType} — ${e.message}`
      : null;

  // ---- formatting ------------------------------------------------------------------

  const pct = (x, digits = 1) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(digits)} %`);
  const secs = (s) => (s === null || s === undefined ? "no data" : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`);
  const int = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const percentText = (p) => `${Number(p).toFixed(2).replace(/\.?0+$/, "")} %`;
  const modeText = (f) => (f.mode === "rollout" ? `rollout ${percentText(f.percent)}` : f.mode);
  const list = (xs) => (xs && xs.length ? xs.join(", ") : "none");
  const fieldText = (flag, k) => {
    if (!flag) return "(no table: legacy)";
    const v = flag[k];
    if (k === "allow" || k === "deny") return list(v);
    if (k === "percent") return percentText(v);
    if (k === "strict") return v ? "yes" : "no";
    return String(v);
  };
  const same = (a, b, k) => fieldText(a, k) === fieldText(b, k);

  // ---- sign in / out ---------------------------------------------------------------

  function showLogin(message) {
    stopRefresh();
    $("app").hidden = true;
    $("who").hidden = true;
    $("login").hidden = false;
    $("summary").textContent = "";
    const err = $("login-error");
    err.hidden = !message;
    err.textContent = message || "";
    $("token").focus();
  }

  async function signIn(t) {
    sessionStorage.setItem(TOKEN_KEY, t);
    try {
      await refresh();
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(refusal(e) || `Cannot reach the admin API: ${e.message}`);
      return;
    }
    $("login").hidden = true;
    $("app").hidden = false;
    $("who").hidden = false;
    startRefresh();
  }

  /** Forgets the token and the page's state; `message` says why (a refusal), if any. */
  function signOut(message = "") {
    sessionStorage.removeItem(TOKEN_KEY);
    state.cards.clear();
    $("routes").replaceChildren();
    state.flags = state.stats = state.prevStats = null;
    showLogin(message);
  }

  // ---- refreshing ------------------------------------------------------------------

  function startRefresh() {
    stopRefresh();
    const tick = async () => {
      try {
        await refresh();
        setBanner("");
      } catch (e) {
        const r = refusal(e);
        if (r) return signOut(r);
        setBanner(`Error: cannot refresh (${e.message}); retrying.`);
      }
      state.timer = setTimeout(tick, REFRESH_MS);
    };
    state.timer = setTimeout(tick, REFRESH_MS);
  }

  function stopRefresh() {
    if (state.timer) clearTimeout(state.timer);
    state.timer = null;
  }

  async function refresh() {
    const [flags, stats] = await Promise.all([api("GET", "/admin/flags"), api("GET", "/admin/stats")]);
    state.prevStats = state.stats;
    state.prevAt = state.statsAt;
    state.flags = flags;
    state.stats = stats;
    state.statsAt = performance.now();
    render();
    await refreshAudit();
  }

  function setBanner(text) {
    const b = $("banner");
    b.hidden = !text;
    b.textContent = text;
  }

  // ---- rendering -------------------------------------------------------------------

  function render() {
    const { flags, stats } = state;
    $("actor").textContent = `Signed in as ${stats.actor}`;
    $("summary").textContent = `Flags version ${flags.version} · updated ${new Date().toISOString().slice(11, 19)} UTC`;
    document.body.dataset.version = String(flags.version);
    const reload = $("reload");
    if (flags.reload.ok) {
      reload.className = "reload ok";
      reload.textContent = `Last reload of the flags file: OK (${flags.reload.at}). Version ${flags.version} in force.`;
    } else {
      reload.className = "reload failed";
      reload.textContent = `Last reload of the flags file FAILED (${flags.reload.at}): ${flags.reload.error}. In force: the last good flags, version ${flags.version}.`;
    }
    const names = Object.keys(stats.routes);
    fillRouteSelect($("eval-route"), names, false);
    fillRouteSelect($("audit-route"), names, true);
    for (const name of names) {
      if (!state.cards.has(name)) state.cards.set(name, makeCard(name));
      updateCard(name);
    }
  }

  function fillRouteSelect(select, names, withAll) {
    const have = [...select.options].map((o) => o.value).filter((v) => v !== "");
    if (have.join() === names.join()) return;
    const keep = select.value;
    select.replaceChildren(...(withAll ? [el("option", { value: "", text: "All routes" })] : []), ...names.map((n) => el("option", { value: n, text: n })));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }

  function makeCard(name) {
    const id = (s) => `r-${name}-${s}`;
    const c = {};
    c.mode = el("span", { class: "mode", id: id("mode") });
    c.flag = el("dl", { class: "flag" });
    c.share = el("p", { class: "share" });
    c.body = el("tbody");
    c.stage = el("select", { id: id("stage") }, ...RECIPE.map((s, i) => el("option", { value: String(i), text: s.label })));
    c.next = el("button", { type: "button", class: "next", onclick: () => stageChange(name, Number(c.next.dataset.step)) });
    c.editor = makeEditor(name, id);
    c.editButton = el("button", {
      type: "button",
      class: "quiet",
      "aria-expanded": "false",
      "aria-controls": id("editor"),
      onclick: () => toggleEditor(name),
      text: "Edit table…",
    });
    const table = el(
      "table",
      { class: "stats" },
      el("caption", { class: "visually-hidden", text: `${name}: counters per transport` }),
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "per transport" }), ...TRANSPORTS.map(([, label]) => el("th", { scope: "col", text: label })))),
      c.body,
    );
    c.root = el(
      "article",
      { class: "route", "aria-labelledby": id("title"), "data-route": name },
      el("header", {}, el("h3", { id: id("title"), text: name }), c.mode, c.share),
      el("div", { class: "route-body" }, c.flag, table),
      el(
        "div",
        { class: "actions" },
        c.next,
        el("label", { for: id("stage"), text: "Stage" }),
        c.stage,
        el("button", { type: "button", class: "quiet", onclick: () => stageChange(name, Number(c.stage.value)), text: "Review stage…" }),
        c.editButton,
        el("button", { type: "button", class: "danger", onclick: () => rollbackChange(name), text: "Roll back to legacy" }),
      ),
      c.editor.root,
    );
    $("routes").append(c.root);
    return c;
  }

  function makeEditor(name, id) {
    const e = {};
    const field = (label, input) => [el("label", { for: input.id, text: label }), input];
    e.mode = el("select", { id: id("ed-mode"), name: "mode" }, ...["legacy", "dual", "rollout", "new"].map((m) => el("option", { value: m, text: m })));
    e.percent = el("input", { id: id("ed-percent"), name: "percent", type: "number", min: "0", max: "100", step: "0.01", inputmode: "decimal" });
    e.sticky = el("select", { id: id("ed-sticky"), name: "sticky" }, ...["user", "session", "tenant"].map((m) => el("option", { value: m, text: m })));
    e.allow = el("textarea", { id: id("ed-allow"), name: "allow", rows: "2", spellcheck: "false", placeholder: "user:alice" });
    e.deny = el("textarea", { id: id("ed-deny"), name: "deny", rows: "2", spellcheck: "false", placeholder: "tenant:acme" });
    e.strict = el("input", { id: id("ed-strict"), name: "strict", type: "checkbox" });
    e.base = el("p", { class: "hint" });
    e.root = el(
      "form",
      {
        class: "editor grid-form",
        id: id("editor"),
        hidden: true,
        "aria-label": `Edit the ${name} table`,
        onsubmit: (ev) => {
          ev.preventDefault();
          editChange(name);
        },
      },
      ...field("Mode", e.mode),
      ...field("Percent (rollout)", e.percent),
      ...field("Sticky key", e.sticky),
      ...field("Allow (one per line)", e.allow),
      ...field("Deny (one per line)", e.deny),
      ...field("Strict", e.strict),
      el("span"),
      el("div", {}, el("button", { type: "submit", text: "Review change…" }), " ", el("button", { type: "button", class: "quiet", onclick: () => toggleEditor(name, false), text: "Close" })),
      e.base,
    );
    return e;
  }

  function currentFlag(name) {
    return state.flags.routes[name] || null;
  }

  function stepOf(flag) {
    if (!flag) return 0;
    return RECIPE.findIndex((s) => s.mode === flag.mode && (s.percent === undefined || Number(flag.percent) === s.percent));
  }

  function updateCard(name) {
    const c = state.cards.get(name);
    const flag = currentFlag(name);
    const shown = flag || { mode: "legacy", percent: 0, sticky: "user", allow: [], deny: [], strict: false };
    c.mode.textContent = `Mode: ${modeText(shown)}`;
    c.mode.dataset.mode = shown.mode;
    c.flag.replaceChildren(
      ...FIELDS.flatMap((k) => [el("dt", { text: k }), el("dd", { text: fieldText(flag, k) })]),
    );
    // The next step of the recipe after the current one (a table off the recipe: the
    // first rollout step above its percent, or dual).
    let step = stepOf(flag);
    let next;
    if (step >= 0) next = step + 1;
    else if (shown.mode === "rollout") next = RECIPE.findIndex((s) => s.mode === "rollout" && s.percent > Number(shown.percent));
    else next = 1;
    if (next < 0 || next >= RECIPE.length) {
      c.next.hidden = true;
    } else {
      c.next.hidden = false;
      c.next.dataset.step = String(next);
      c.next.textContent = `Next step: ${RECIPE[next].label}…`;
    }
    if (document.activeElement !== c.stage) c.stage.value = String(c.next.hidden ? Math.max(step, 0) : next);

    const r = state.stats.routes[name];
    c.share.textContent = `Served over HTTP: ${pct(r.http_share)} of requests · ${int(r.recent_subjects)} recent subjects`;
    const prev = state.prevStats && state.prevStats.routes[name];
    const dt = (state.statsAt - state.prevAt) / 1000;
    const rate = (t) => {
      if (!prev || dt <= 0) return "";
      const d = r.transports[t].started - prev.transports[t].started;
      return ` (${(d / dt).toFixed(1)}/s)`;
    };
    const row = (label, f) =>
      el("tr", {}, el("th", { scope: "row", text: label }), ...TRANSPORTS.map(([t]) => el("td", { "data-transport": t, text: f(r.transports[t], t) })));
    c.body.replaceChildren(
      row("requests", (s, t) => `${int(s.started)}${rate(t)}`),
      row("active streams", (s) => int(s.active)),
      row("error ratio", (s) => pct(s.error_ratio)),
      row("cancel ratio", (s) => pct(s.cancel_ratio)),
      row("refused", (s) => int(s.finished.rejected)),
      row("first event p50", (s) => secs(s.first_event.p50_seconds)),
      row("first event p95", (s) => secs(s.first_event.p95_seconds)),
      row("misrouted", (s) => int(s.misrouted)),
    );
    c.root.dataset.started = TRANSPORTS.map(([t]) => r.transports[t].started).join(",");
    if (!c.editor.root.hidden && c.editor.baseVersion !== state.flags.version) {
      c.editor.base.textContent = `Note: the flags changed (version ${state.flags.version}) since you opened this editor at version ${c.editor.baseVersion}; saving will be refused as a conflict. Close and reopen to start from the new table.`;
    }
  }

  function toggleEditor(name, open) {
    const c = state.cards.get(name);
    const e = c.editor;
    const show = open === undefined ? e.root.hidden : open;
    e.root.hidden = !show;
    c.editButton.setAttribute("aria-expanded", String(show));
    if (!show) return c.editButton.focus();
    const f = currentFlag(name) || { mode: "legacy", percent: 0, sticky: "user", allow: [], deny: [], strict: false };
    e.mode.value = f.mode;
    e.percent.value = String(f.percent);
    e.sticky.value = f.sticky;
    e.allow.value = f.allow.join("\n");
    e.deny.value = f.deny.join("\n");
    e.strict.checked = f.strict;
    e.baseVersion = state.flags.version;
    e.base.textContent = `Editing from version ${e.baseVersion}.`;
    e.mode.focus();
  }

  // ---- changes ---------------------------------------------------------------------

  const lines = (text) =>
    text
      .split(/[\n,]/)
      .map((s) => s.trim())
      .filter(Boolean);

  function stageChange(name, step) {
    const s = RECIPE[step];
    if (!s) return;
    const before = currentFlag(name);
    const after = Object.assign({ percent: 0, sticky: "user", allow: [], deny: [], strict: false }, before || {}, { mode: s.mode });
    if (s.percent !== undefined) after.percent = s.percent;
    confirmChange({ kind: "put", route: name, before, after, version: state.flags.version, title: `${name}: move to ${s.label}` });
  }

  function editChange(name) {
    const e = state.cards.get(name).editor;
    const after = {
      mode: e.mode.value,
      percent: e.percent.value === "" ? 0 : Number(e.percent.value),
      sticky: e.sticky.value,
      allow: lines(e.allow.value),
      deny: lines(e.deny.value),
      strict: e.strict.checked,
    };
    confirmChange({ kind: "put", route: name, before: currentFlag(name), after, version: e.baseVersion, title: `${name}: apply the edited table` });
  }

  function rollbackChange(name) {
    const before = currentFlag(name);
    const after = Object.assign({ percent: 0, sticky: "user", allow: [], deny: [], strict: false }, before || {}, { mode: "legacy" });
    confirmChange({ kind: "rollback", route: name, before, after, version: state.flags.version, title: `Kill switch: roll ${name} back to legacy` });
  }

  function diffRows(before, after) {
    return FIELDS.map((k) => {
      const changed = !same(before, after, k);
      return el(
        "tr",
        { class: changed ? "changed" : "same" },
        el("th", { scope: "row", text: changed ? `${k} (changes)` : k }),
        el("td", {}, changed ? el("del", { text: fieldText(before, k) }) : fieldText(before, k)),
        el("td", {}, changed ? el("ins", { text: fieldText(after, k) }) : "unchanged"),
      );
    });
  }

  async function confirmChange(change) {
    state.pending = change;
    const d = $("confirm");
    $("confirm-title").textContent = change.title;
    $("confirm-lead").textContent =
      change.kind === "rollback"
        ? `Every new request on ${change.route} goes to Socket.IO at once (running streams finish where they are). Sent without a version check: a kill switch always applies.`
        : `Sent with If-Match: ${change.version}. If anyone changed the flags since version ${change.version} (console, CLI or file), the bridge refuses it as a conflict and nothing is overwritten.`;
    $("confirm-diff").replaceChildren(...diffRows(change.before, change.after));
    const err = $("confirm-error");
    err.hidden = true;
    err.textContent = "";
    const apply = $("confirm-apply");
    apply.disabled = false;
    apply.textContent = change.kind === "rollback" ? "Roll back now" : "Apply change";
    apply.className = change.kind === "rollback" ? "danger" : "";
    const move = $("confirm-move");
    move.textContent = "Estimating what moves…";
    if (!d.open) d.showModal();
    try {
      const p = await api("POST", `/admin/flags/${encodeURIComponent(change.route)}/preview`, { body: change.after });
      if (state.pending !== change) return;
      const m = p.recent;
      move.textContent = m.subjects
        ? `Of the last ${int(m.subjects)} subjects seen on ${change.route}, about ${pct(m.share)} would move (${int(m.to_http)} to HTTP, ${int(m.to_socketio)} to Socket.IO): their HTTP share goes from ${pct(m.http_before)} to ${pct(m.http_after)}. Subjects named in allow/deny are not counted separately.`
        : `No recent requests on ${change.route} to estimate from.`;
    } catch (e) {
      if (state.pending !== change) return;
      move.textContent = "";
      showDialogError(e);
      if (e instanceof ApiError && e.status === 400) apply.disabled = true;
    }
  }

  function showDialogError(e) {
    const err = $("confirm-error");
    err.hidden = false;
    if (e instanceof ApiError && e.errorType === "version_conflict") {
      err.textContent = `Conflict: the flags changed since version ${state.pending.version} (someone else edited them meanwhile). Your change was NOT applied. ${e.message}. The page now shows the current flags; review them and start again.`;
      err.dataset.kind = "conflict";
    } else {
      err.textContent = `Error: ${refusal(e) || `${e.status || ""} ${e.errorType || ""} ${e.message}`.trim()}`;
      err.dataset.kind = "error";
    }
  }

  async function applyPending() {
    const change = state.pending;
    if (!change) return;
    const apply = $("confirm-apply");
    apply.disabled = true;
    try {
      const path = `/admin/flags/${encodeURIComponent(change.route)}`;
      const res =
        change.kind === "rollback"
          ? await api("POST", `${path}/rollback`)
          : await api("PUT", path, { body: change.after, ifMatch: change.version });
      state.pending = null;
      $("confirm").close();
      const c = state.cards.get(change.route);
      if (c && !c.editor.root.hidden) toggleEditor(change.route, false);
      setBanner(`Applied: ${change.route} is now ${modeText(res.flag)} (version ${res.version}).`);
      await refresh().catch(() => {});
    } catch (e) {
      showDialogError(e);
      await refresh().catch(() => {});
    }
  }

  // ---- audit -----------------------------------------------------------------------

  async function refreshAudit() {
    const route = $("audit-route").value;
    const q = new URLSearchParams({ limit: "50" });
    if (route) q.set("route", route);
    const page = await api("GET", `/admin/audit?${q}`);
    const rows = page.entries.map((e) => {
      const changes = FIELDS.filter((k) => !same(e.before, e.after, k)).map((k) =>
        el("li", {}, `${k}: `, el("del", { text: fieldText(e.before, k) }), " → ", el("ins", { text: fieldText(e.after, k) })),
      );
      return el(
        "tr",
        {},
        el("td", { text: e.ts.replace("T", " ").replace(/\.\d+Z$|Z$/, "") }),
        el("td", { text: e.actor }),
        el("td", { text: e.route }),
        el("td", { text: String(e.version) }),
        el("td", {}, changes.length ? el("ul", { class: "changes" }, ...changes) : "no field changed"),
      );
    });
    $("audit").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "5", text: "No changes recorded." }))]));
  }

  // ---- evaluation ------------------------------------------------------------------

  async function evaluate(ev) {
    ev.preventDefault();
    const route = $("eval-route").value;
    const q = new URLSearchParams();
    for (const k of ["user", "session", "tenant"]) {
      const v = $(`eval-${k}`).value.trim();
      if (v) q.set(k, v);
    }
    const out = $("eval-result");
    try {
      const r = await api("GET", `/api/flags/${encodeURIComponent(route)}?${q}`, { auth: false });
      const why = {
        deny: "the subject is in the deny list",
        allow: "the subject is in the allow list",
        mode: `the mode is ${r.mode}`,
        percent: `its bucket ${r.bucket} is ${r.transport === "http" ? "below" : "at or above"} the rollout cut`,
        no_sticky_key: "the subject lacks the route's sticky key",
      }[r.reason];
      out.dataset.transport = r.transport;
      out.textContent = `${route}: ${r.transport === "http" ? "HTTP (NDJSON/SSE)" : "Socket.IO"} — reason: ${r.reason} (${why}); mode ${r.mode}; bucket ${r.bucket === null ? "none" : r.bucket}.`;
    } catch (e) {
      out.textContent = `Error: ${e.message}`;
    }
  }

  // ---- wiring ----------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token").value.trim();
      $("token").value = "";
      if (t) signIn(t);
    });
    $("signout").addEventListener("click", () => signOut());
    $("eval-form").addEventListener("submit", evaluate);
    $("audit-route").addEventListener("change", () => refreshAudit().catch((e) => setBanner(`Error: ${e.message}`)));
    $("confirm-apply").addEventListener("click", applyPending);
    $("confirm-cancel").addEventListener("click", () => {
      state.pending = null;
      $("confirm").close();
    });
    $("confirm").addEventListener("close", () => (state.pending = null));
    if (token()) signIn(token());
    else showLogin("");
  });
})();
