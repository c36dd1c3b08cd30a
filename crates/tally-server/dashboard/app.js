// tally's dashboard: one page, reading the native API with the session cookie.
// Amounts arrive as integers in µ¢ (numbers, or decimal strings past 2^53); they are kept as
// BigInt, shown in USD rounded down to the cent, exact in each figure's tooltip and in the CSV.
"use strict";

// Errors of the page (scripts, failed assets, policy violations), for the browser tests.
window.tallyErrors = [];
window.tallyTimings = [];
window.addEventListener("error", (e) => {
  window.tallyErrors.push(e.message || "failed to load " + ((e.target && (e.target.src || e.target.href)) || "?"));
}, true);
window.addEventListener("unhandledrejection", (e) => window.tallyErrors.push(String(e.reason)));
document.addEventListener("securitypolicyviolation", (e) => window.tallyErrors.push("CSP: " + e.violatedDirective + " " + e.blockedURI));
const consoleError = console.error;
console.error = (...args) => { window.tallyErrors.push(args.map(String).join(" ")); consoleError.apply(console, args); };

const UC_PER_CENT = 1000000n;
const state = { csrf: null, events: null, view: null, timers: [], charts: [] };
const $ = (sel, root = document) => root.querySelector(sel);

function big(v) {
  if (v === null || v === undefined || v === "") return 0n;
  return BigInt(v);
}

// µ¢ → "$1,234.56" (rounded toward zero to the cent).
function usd(v) {
  const uc = big(v);
  const neg = uc < 0n;
  const cents = (neg ? -uc : uc) / UC_PER_CENT;
  const dollars = (cents / 100n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const rest = (cents % 100n).toString().padStart(2, "0");
  return (neg ? "-$" : "$") + dollars + "." + rest;
}

function count(v) {
  return big(v).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

function when(ms) {
  if (ms === null || ms === undefined) return "";
  return new Date(Number(ms)).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function money(v) {
  return el("span", { title: big(v).toString() + " µ¢", "data-uc": big(v).toString(), text: usd(v) });
}

class Unauthenticated extends Error {}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
  if (r.status === 401) throw new Unauthenticated("signed out");
  const body = await r.json();
  if (!r.ok) throw new Error((body.error && body.error.message) || r.statusText);
  return body;
}

// A table of rows; `cols` are [header, key, kind] with kind "money", "count", "time" or text.
// Under it, a CSV of exactly the rows shown, raw values (µ¢, ms).
function table(id, cols, rows, onRow) {
  const head = el("tr", {}, ...cols.map(([h, , kind]) =>
    el("th", { class: kind === "money" || kind === "count" ? "num" : "", scope: "col", text: h })));
  const body = el("tbody");
  for (const row of rows) {
    const tr = el("tr");
    for (const [, key, kind] of cols) {
      const v = typeof key === "function" ? key(row) : row[key];
      let cell;
      if (kind === "money") cell = el("td", { class: "num" }, money(v));
      else if (kind === "count") cell = el("td", { class: "num", text: count(v) });
      else if (kind === "time") cell = el("td", { text: when(v) });
      else if (v instanceof Node) cell = el("td", {}, v);
      else cell = el("td", { text: v === null || v === undefined ? "" : String(v) });
      tr.append(cell);
    }
    if (onRow) onRow(tr, row);
    body.append(tr);
  }
  const csvCell = (v) => {
    const s = v === null || v === undefined ? "" : v instanceof Node ? v.textContent : String(v);
    return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  };
  const csv = [cols.map(([h, , kind]) => csvCell(kind === "money" ? h + " (µ¢)" : kind === "time" ? h + " (ms)" : h)).join(",")]
    .concat(rows.map((row) => cols.map(([, key]) => csvCell(typeof key === "function" ? key(row) : row[key])).join(",")))
    .join("\n") + "\n";
  const link = el("a", {
    id: id + "-csv", class: "csv", download: id + ".csv",
    href: "data:text/csv;charset=utf-8," + encodeURIComponent(csv), text: "CSV",
  });
  return el("div", { class: "scroll" }, el("table", { id }, el("thead", {}, head), body), link);
}

function card(label, value, id) {
  return el("div", { class: "card" }, el("div", { class: "label", text: label }),
    el("div", { class: "value", id }, value));
}

// An axis label in USD for µ¢ (a tick is a position on the axis, not an amount charged).
function usdTick(v) {
  const d = v / 1e8;
  return "$" + d.toLocaleString("en-US", { maximumFractionDigits: Math.abs(d) < 0.01 && d !== 0 ? 8 : 2 });
}

// A time chart: x in ms, each series [label, values, kind]; kind "money" (µ¢, drawn on a USD
// axis at the left) or "count" (its own axis, at the right when beside money). `span` is the
// [from, to] in ms the x axis shows (the range asked for); without it, the data's own.
function chart(target, xs, series, span) {
  const width = Math.max(280, target.clientWidth || 600);
  const css = getComputedStyle(document.documentElement);
  const muted = css.getPropertyValue("--muted").trim() || "#8a939d";
  const line = css.getPropertyValue("--line").trim() || "#d6dae0";
  const kinds = [...new Set(series.map(([, , kind]) => kind || "count"))];
  const axisSize = (u, values) => values ? 16 + 7.5 * Math.max(3, ...values.map((s) => String(s).length)) : 40;
  const axes = [{ stroke: muted, grid: { stroke: line }, ticks: { stroke: line } }];
  kinds.forEach((kind, i) => axes.push({
    scale: kind, stroke: muted, size: axisSize, side: i === 0 ? 3 : 1,
    grid: { show: i === 0, stroke: line }, ticks: { stroke: line },
    values: (u, splits) => splits.map((v) => kind === "money" ? usdTick(v) : v.toLocaleString("en-US")),
  }));
  const opts = {
    width, height: 220,
    // Room at the sides for the first and last time labels.
    padding: [12, 28, 0, 28],
    series: [{}, ...series.map(([label, , kind], i) => ({
      label, scale: kind || "count", width: 2,
      stroke: ["#2457c5", "#e07a1f", "#12b76a", "#b42318"][i % 4],
      value: (u, v) => v === null || v === undefined ? "--" : (kind === "money" ? usdTick(v) : v.toLocaleString("en-US")),
    }))],
    axes,
    scales: {
      x: {
        time: true,
        // A range under a minute (or one point) is widened to a minute around it.
        range: () => {
          if (span) return [Number(span[0]) / 1000, Number(span[1]) / 1000];
          const secs = xs.map((x) => Number(x) / 1000);
          const lo = secs.length ? Math.min(...secs) : Date.now() / 1000;
          const hi = secs.length ? Math.max(...secs) : lo;
          return hi - lo < 60 ? [(lo + hi) / 2 - 30, (lo + hi) / 2 + 30] : [lo, hi];
        },
      },
    },
  };
  const data = [xs.map((x) => Number(x) / 1000), ...series.map(([, ys]) => ys.map(Number))];
  target.replaceChildren();
  const plot = new uPlot(opts, data, target);
  state.charts = state.charts.filter(([, t]) => t.isConnected).concat([[plot, target]]);
  return plot;
}

// Charts follow the window's width (a phone turned, a window resized).
let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => {
    state.charts = state.charts.filter(([, t]) => t.isConnected);
    for (const [plot, target] of state.charts) plot.setSize({ width: Math.max(280, target.clientWidth), height: 220 });
  }, 100);
});

// The from/to fields of a form are empty or dates `Date.parse` reads; a bad one is marked and
// named in the form's message, and nothing is asked of the server.
function datesOk(form) {
  let ok = true;
  for (const name of ["from", "to"]) {
    const input = form.elements[name];
    const bad = input && input.value !== "" && Number.isNaN(Date.parse(input.value));
    if (input) input.setAttribute("aria-invalid", bad ? "true" : "false");
    if (bad) ok = false;
  }
  let msg = $(".form-error", form);
  if (!msg) { msg = el("span", { class: "error form-error", role: "alert" }); form.append(msg); }
  msg.textContent = ok ? "" : "Dates are ISO 8601, for example 2026-12-01T00:00Z.";
  return ok;
}

function stopTimers() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
}

// ---- views ----

async function overview(view) {
  const o = await api("/v1/overview");
  const b = o.balances;
  view.replaceChildren(
    el("h1", { text: "Overview" }),
    el("p", { class: "muted" }, el("span", { class: "live" + (state.events ? "" : " off"), id: "live-dot" }),
      "Live; updated " + when(o.at_ms)),
    el("div", { class: "cards" },
      card("User balances (available)", money(b.available), "ov-available"),
      card("Held in open holds", money(b.pending), "ov-pending"),
      card("Accounts holding", count(b.holding_accounts), "ov-holding"),
      card("Spend today (UTC)", money(o.today.cost), "ov-today"),
      card("Calls today", count(o.today.calls), "ov-today-calls"),
      card("Spend this month", money(o.month.cost), "ov-month"),
      card("Accounts", count(o.accounts.total), "ov-accounts"),
      card("Under low-balance threshold", count(o.low_balance.count), "ov-low")),
    el("h2", { text: "Calls per minute, last hour" }),
    el("div", { class: "chart", id: "ov-rpm" }),
    el("h2", { text: "Revenue by app, this month" }),
    table("ov-apps", [["App", "app"], ["Calls", "calls", "count"], ["Input tokens", "input_tokens", "count"],
      ["Output tokens", "output_tokens", "count"], ["Revenue", "cost", "money"], ["Refunded", "refunded", "money"],
      ["Net", "net", "money"], ["Provider cost", "provider_cost", "money"], ["Margin", "margin", "money"]], o.apps),
    el("h2", { text: "Accounts under their low-balance threshold" }),
    table("ov-low-table", [["Account", (r) => el("a", { href: "#/accounts/" + encodeURIComponent(r.account), text: r.account })],
      ["Available", "available", "money"], ["Threshold", "threshold", "money"]], o.low_balance.accounts),
  );
  if (!b.complete) view.append(el("p", { class: "muted", text: `Balances summed over the first ${b.scanned} user accounts only.` }));
  chart($("#ov-rpm"), o.per_minute.map((m) => m.start_ms), [["calls", o.per_minute.map((m) => m.calls), "count"]],
    [o.at_ms - 3600000, o.at_ms]);
}

const RANGES = { today: 86400000, "7d": 7 * 86400000, "30d": 30 * 86400000 };

async function usage(view, params) {
  const range = params.get("range") || "today";
  const granularity = params.get("granularity") || (range === "today" ? "hour" : "day");
  const now = Date.now();
  let from = range === "today" ? now - (now % 86400000) : now - (RANGES[range] || 86400000);
  let to = now + 1;
  if (params.get("from")) from = Date.parse(params.get("from"));
  if (params.get("to")) to = Date.parse(params.get("to"));
  // Links may also name the range in ms since the epoch.
  if (/^\d+$/.test(params.get("from_ms") || "")) from = Number(params.get("from_ms"));
  if (/^\d+$/.test(params.get("to_ms") || "")) to = Number(params.get("to_ms"));
  const q = new URLSearchParams({ granularity, from_ms: String(from), to_ms: String(to) });
  for (const k of ["app", "endpoint", "account"]) if (params.get(k)) q.set(k, params.get(k));
  const [u, top, apps] = await Promise.all([api("/v1/usage?" + q), api("/v1/usage/top-users?" + q + "&n=10"),
    api("/v1/accounts?kind=revenue&limit=20")]);
  const perApp = params.get("app") ? [] : await Promise.all(apps.accounts.map(async (a) => {
    const qa = new URLSearchParams(q); qa.set("app", a.account);
    return [a.account, await api("/v1/usage?" + qa)];
  }));
  const form = el("form", { class: "toolbar", id: "usage-form" });
  const field = (label, name, input) => { input.name = name; input.value = params.get(name) || input.value; return el("label", {}, label, input); };
  const select = (opts) => el("select", {}, ...opts.map((o) => el("option", { value: o, text: o })));
  form.append(
    field("Range", "range", select(["today", "7d", "30d"])),
    field("Buckets", "granularity", select(["minute", "hour", "day"])),
    field("From (ISO)", "from", el("input", { placeholder: "2026-12-01T00:00Z" })),
    field("To (ISO)", "to", el("input", { placeholder: "now" })),
    field("App", "app", el("input")), field("Endpoint", "endpoint", el("input")), field("User", "account", el("input")),
    el("button", { type: "submit", text: "Show" }));
  $("[name=granularity]", form).value = granularity;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!datesOk(form)) return;
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) p.set(k, v);
    location.hash = "#/usage?" + p;
  });
  const cols = [["Bucket", "start_ms", "time"], ["Calls", "calls", "count"], ["Requests", "requests", "count"],
    ["Input tokens", "input_tokens", "count"], ["Output tokens", "output_tokens", "count"],
    ["Characters", "characters", "count"], ["Pages", "pages", "count"], ["Duration (ms)", "duration_ms", "count"],
    ["Cost", "cost", "money"], ["Refunded", "refunded", "money"], ["Net", "net", "money"],
    ["Provider cost", "provider_cost", "money"], ["Margin", "margin", "money"]];
  view.replaceChildren(el("h1", { text: "Usage" }), form,
    el("div", { class: "cards" }, card("Cost", money(u.totals.cost), "usage-cost"), card("Calls", count(u.totals.calls), "usage-calls"),
      card("Net of refunds", money(u.totals.net), "usage-net"), card("Margin", money(u.totals.margin), "usage-margin"),
      card("Input tokens", count(u.totals.input_tokens)), card("Output tokens", count(u.totals.output_tokens))),
    el("h2", { text: "Cost and calls per bucket" }), el("div", { class: "chart", id: "usage-chart" }),
    table("usage-table", cols, u.buckets),
    el("h2", { text: "Top users" }),
    table("top-users", [["User", (r) => el("a", { href: "#/accounts/" + encodeURIComponent(r.account), text: r.account })],
      ["Calls", "calls", "count"], ["Cost", "cost", "money"]], top.users));
  if (!u.complete) view.append(el("p", { class: "muted", text: "Part of this range is older than the buckets kept." }));
  chart($("#usage-chart"), u.buckets.map((b) => b.start_ms), [["cost", u.buckets.map((b) => b.cost), "money"], ["calls", u.buckets.map((b) => b.calls), "count"]],
    [from, Math.min(to, Date.now())]);
  if (perApp.length) {
    // Revenue per app: one series per app over the same buckets.
    const xs = u.buckets.map((b) => b.start_ms);
    const of = (r) => { const by = new Map(r.buckets.map((b) => [b.start_ms, b.cost])); return xs.map((x) => by.get(x) ?? 0); };
    const target = el("div", { class: "chart", id: "revenue-chart" });
    view.append(el("h2", { text: "Revenue per app per bucket" }), target,
      table("revenue-table", [["App", 0], ["Calls", (r) => r[1].totals.calls, "count"], ["Revenue", (r) => r[1].totals.cost, "money"]], perApp));
    chart(target, xs, perApp.map(([name, r]) => [name, of(r), "money"]), [from, Math.min(to, Date.now())]);
  }
}

async function accounts(view, params) {
  const q = new URLSearchParams({ limit: "50" });
  if (params.get("after")) q.set("after", params.get("after"));
  if (params.get("kind")) q.set("kind", params.get("kind"));
  const page = await api("/v1/accounts?" + q);
  const link = (r) => el("a", { href: "#/accounts/" + encodeURIComponent(r.account), text: r.account });
  view.replaceChildren(el("h1", { text: "Accounts" }),
    table("accounts-table", [["Account", link], ["Kind", "kind"], ["Available", "available", "money"],
      ["Held", "debits_pending", "money"], ["Posted", "posted", "money"], ["Low-balance threshold", "low_balance_threshold", "money"]], page.accounts));
  if (page.next_after) {
    const p = new URLSearchParams(params); p.set("after", page.next_after);
    view.append(el("p", {}, el("a", { href: "#/accounts?" + p, id: "accounts-next", text: "Next page" })));
  }
}

function describe(record) {
  const change = record.change || {};
  const kind = typeof change === "string" ? change : Object.keys(change)[0];
  const body = typeof change === "string" ? {} : change[kind] || {};
  const amount = body.amount ?? body.actual ?? body.value ?? body.amount_posted ?? body.new ?? "";
  return { kind, amount, app: body.app_name ?? body.to_name ?? body.from_name ?? "", endpoint: body.endpoint ?? "" };
}

async function account(view, name, params) {
  const enc = encodeURIComponent(name);
  const after = params.get("after") || "0";
  // The query history's range: today, this month (UTC), all, or from/to.
  const qrange = params.get("queries") || "all";
  const now = new Date();
  const qfrom = qrange === "today" ? Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate())
    : qrange === "month" ? Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)
    : params.get("from") ? Date.parse(params.get("from")) : 0;
  const qs = new URLSearchParams({ from_ms: String(qfrom), limit: "100" });
  if (params.get("to")) qs.set("to_ms", String(Date.parse(params.get("to"))));
  // Its usage by day over the last 30 days (as the account that pays).
  const dayMs = 86400000;
  const uq = new URLSearchParams({ granularity: "day",
    from_ms: String(Date.now() - (Date.now() % dayMs) - 29 * dayMs), to_ms: String(Date.now() + 1) });
  const [bal, holds, hist, points, tokens, queries, policy, periods] = await Promise.all([
    api(`/v1/accounts/${enc}/balance`), api(`/v1/accounts/${enc}/holds`),
    api(`/v1/accounts/${enc}/history?limit=50&after=${after}`),
    api(`/v1/accounts/${enc}/balance-history?limit=1000`), api(`/v1/accounts/${enc}/tokens`),
    api(`/v1/accounts/${enc}/queries?${qs}`), api(`/v1/accounts/${enc}/policy`),
    api(`/v1/accounts/${enc}/periods`)]);
  const rate = (r, unit) => r ? `${count(r.per_second)}${unit}/s, burst ${count(r.burst)}` : "none";
  const rl = policy.rate_limit;
  // A user's usage is what it paid for; an app's is what it earned.
  uq.set(holds.kind === "user" ? "account" : "app", name);
  // A user's prepaid credit grants (an app has none).
  const [used, grants] = await Promise.all([api("/v1/usage?" + uq),
    holds.kind === "user" ? api(`/v1/accounts/${enc}/grants`) : Promise.resolve(null)]);
  const allowance = grants && grants.allowance;
  const grantSection = grants ? [
    el("h2", { text: "Credit grants" }),
    el("div", { class: "cards" }, card("Spendable", money(grants.spendable), "acct-spendable"),
      card("General balance", money(grants.general), "acct-general"),
      card("Granted, free", money(grants.granted), "acct-granted"),
      card("Allowance", allowance ? `${money(allowance.amount).textContent} per ${allowance.period === "every"
        ? `${count(allowance.length_ms / 1000)} s` : allowance.period}` : "none", "acct-allowance")),
    el("p", { class: "muted", text: "Spent in this order: lowest priority first, then the earliest expiry, then the oldest; expired grants last." }),
    table("grants-table", [["Grant", "grant"], ["Label", "label"], ["Priority", "priority"], ["Granted", "amount", "money"],
      ["Used", "used", "money"], ["Held", "held", "money"], ["Free", "free", "money"], ["Expired", "expired", "money"],
      ["Expires", (r) => r.expires_at_ms === null ? "never" : when(r.expires_at_ms)], ["Status", "status"]], grants.grants),
  ] : [];
  const rangeForm = el("form", { class: "toolbar", id: "queries-range" },
    el("label", {}, "From (ISO)", el("input", { name: "from", placeholder: "2026-12-01T00:00Z", value: params.get("from") || "" })),
    el("label", {}, "To (ISO)", el("input", { name: "to", placeholder: "now", value: params.get("to") || "" })),
    el("button", { type: "submit", text: "Show range" }));
  rangeForm.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!datesOk(rangeForm)) return;
    const p = new URLSearchParams({ queries: "range" });
    for (const [k, v] of new FormData(rangeForm)) if (v) p.set(k, v);
    location.hash = `#/accounts/${enc}?` + p;
  });
  const rangeLinks = el("div", { class: "toolbar" }, "Queries: ",
    ...["today", "month", "all"].map((r) => el("a", { href: `#/accounts/${enc}?queries=${r}`, id: "queries-" + r,
      "aria-current": r === qrange ? "true" : "false", text: r === "month" ? "this month" : r })), rangeForm);
  const rows = hist.entries.map((e) => ({ seq: e.seq, at_ms: e.at_ms, ...describe(e.record), op: e.record.op ?? "" }));
  view.replaceChildren(el("h1", { text: "Account " + name }),
    el("div", { class: "cards" }, card("Available", money(bal.available), "acct-available"),
      card("Posted", money(bal.posted), "acct-posted"), card("Held", money(bal.debits_pending), "acct-pending"),
      card("Credit limit", money(bal.credit_limit), "acct-limit"),
      card("Low-balance threshold", holds.low_balance_threshold === null ? "none" : money(holds.low_balance_threshold), "acct-low")),
    el("h2", { text: "Limits" + (policy.version ? ` (version ${policy.version}, set ${when(policy.set_at_ms)})` : "") }),
    el("div", { class: "cards" },
      card(holds.kind === "user" ? "Spend cap per day" : "Spend cap per user per day",
        policy.spend_cap_per_day === null ? "none" : money(policy.spend_cap_per_day), "acct-cap"),
      card(holds.kind === "user" ? "Requests" : "Requests (all users)", rate(rl.requests, ""), "acct-rate-requests"),
      card(holds.kind === "user" ? "Cost rate" : "Cost rate (all users)", rl.cost ? rate(rl.cost, " µ¢") : "none", "acct-rate-cost")),
    ...grantSection,
    el("h2", { text: "Balance over time (posted)" }), el("div", { class: "chart", id: "acct-chart" }),
    el("h2", { text: (holds.kind === "user" ? "Spend" : "Revenue") + " per day, last 30 days" }),
    el("div", { class: "cards" }, card(holds.kind === "user" ? "Spent in 30 days" : "Earned in 30 days", money(used.totals.cost), "acct-used-cost"),
      card("Calls in 30 days", count(used.totals.calls), "acct-used-calls"),
      card("Input tokens", count(used.totals.input_tokens)), card("Output tokens", count(used.totals.output_tokens))),
    el("div", { class: "chart", id: "acct-usage-chart" }),
    el("h2", { text: "Pending holds" }),
    table("holds-table", [["Hold", "id"], ["App", "app"], ["Endpoint", "endpoint"], ["Held", "amount_held", "money"],
      ["Created", "created_at_ms", "time"], ["Deadline", "expires_at_ms", "time"]], holds.holds),
    el("h2", { text: "Query history" }), rangeLinks,
    table("queries-table", [["Id", "id"], ["Time", "at_ms", "time"], ["Sender", "sender"], ["Recipient", "recipient"],
      ["Endpoint", "endpoint"], ["Amount", "amount", "money"], ["Status", "status"]], queries.queries),
    el("p", { class: "muted", text: `${queries.matched} in this range; the newest 100 shown.` }),
    el("h2", { text: "History" }),
    table("history-table", [["Seq", "seq"], ["Time", "at_ms", "time"], ["Change", "kind"], ["Counterparty", "app"],
      ["Endpoint", "endpoint"], ["Amount", "amount", "money"]], rows),
    el("h2", { text: "Billing periods (period-tiered prices)" }),
    table("periods-table", [["App", "app"], ["Endpoint", "endpoint"], ["Mode", "mode"], ["From", "start_ms", "time"],
      ["To", "end_ms", "time"], ["Units", "units", "count"], ["Charged", "charged", "money"],
      ["Tier reached", (r) => r.tier + 1], ["Tier up to", (r) => r.tier_up_to === null ? "open" : r.tier_up_to]],
      periods.periods),
    el("h2", { text: "Spend tokens" }),
    table("tokens-table", [["Token", "id"], ["App", "app"], ["Endpoint", "endpoint"], ["Cap", "cap", "money"],
      ["Spent", "spent", "money"], ["Expires", "expires_at_ms", "time"]], tokens.tokens || []));
  if (hist.next_after && hist.entries.length === 50) {
    view.append(el("p", {}, el("a", { href: `#/accounts/${enc}?after=${hist.next_after}`, id: "history-next", text: "Older entries" })));
  }
  const pts = points.points || [];
  chart($("#acct-chart"), pts.map((p) => p.at_ms), [["posted", pts.map((p) => p.posted), "money"]]);
  chart($("#acct-usage-chart"), used.buckets.map((b) => b.start_ms),
    [["spent", used.buckets.map((b) => b.cost), "money"], ["calls", used.buckets.map((b) => b.calls), "count"]],
    [Number(uq.get("from_ms")), Date.now()]);
}

const feed = [];
const FEED_MAX = 500;

function events(view) {
  const rows = () => feed.slice().reverse();
  const render = () => {
    const t = table("events-table", [["Id", "id"], ["Time", "at_ms", "time"], ["Event", "event"], ["Account", "account"],
      ["App", "app"], ["Amount", (r) => r.amount ?? r.amount_posted ?? r.amount_released ?? ""]], rows());
    const old = $("#events-wrap");
    if (old) old.replaceChildren(t);
  };
  view.replaceChildren(el("h1", { text: "Live events" }),
    el("p", { class: "muted", text: `The newest ${FEED_MAX} events since this page opened, newest first.` }),
    el("div", { id: "events-wrap", class: "feed" }));
  render();
  state.renderFeed = render;
}

// ---- live updates ----

const EVENT_NAMES = ["credit.record-cost", "credit.funding-update", "hold.reserved", "hold.committed", "hold.extended",
  "hold.settled", "hold.voided", "hold.expired", "refund", "posting.corrected", "balance.low", "missed"];
let refresh = null;

// A live reload keeps what was typed into the view's forms, and the focus: the view is drawn
// again, then each field gets back its text (by form id and name).
async function reload() {
  const typed = [...document.querySelectorAll("#view form [name]")]
    .filter((e) => e.form && e.form.id && e.value !== e.defaultValue)
    .map((e) => [e.form.id, e.name, e.value]);
  const active = document.activeElement;
  const focused = active && active.form && active.form.id ? [active.form.id, active.name] : null;
  await route();
  for (const [form, name, value] of typed) {
    const e = document.querySelector(`#${form} [name="${name}"]`);
    if (e) e.value = value;
  }
  if (focused) {
    const e = document.querySelector(`#${focused[0]} [name="${focused[1]}"]`);
    if (e) e.focus();
  }
}

function listen() {
  if (state.events) return;
  const es = new EventSource("/v1/events", { withCredentials: true });
  state.events = es;
  for (const name of EVENT_NAMES) {
    es.addEventListener(name, (e) => {
      let data = {};
      try { data = JSON.parse(e.data); } catch (_) { data = {}; }
      feed.push({ id: e.lastEventId, event: name, ...data });
      if (feed.length > FEED_MAX) feed.shift();
      if (state.view === "events" && state.renderFeed) state.renderFeed();
      if (state.view === "overview" || state.view === "account") {
        // Coalesce bursts: one reload at most every 300 ms.
        if (!refresh) refresh = setTimeout(() => { refresh = null; reload(); }, 300);
      }
    });
  }
  es.onerror = () => { const d = $("#live-dot"); if (d) d.className = "live off"; };
  es.onopen = () => { const d = $("#live-dot"); if (d) d.className = "live"; };
}

// ---- sign-in and routing ----

function signedOut() {
  stopTimers();
  if (state.events) { state.events.close(); state.events = null; }
  $("#nav").hidden = true;
  $("#signout").hidden = true;
  $("#view").replaceChildren();
  $("#signin").hidden = false;
  $("#key").focus();
}

async function signIn(e) {
  e.preventDefault();
  $("#signin-error").textContent = "";
  const r = await fetch("/v1/session", {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json" }, body: JSON.stringify({ key: $("#key").value }),
  });
  const body = await r.json();
  if (!r.ok) { $("#signin-error").textContent = body.error ? body.error.message : "sign-in failed"; return; }
  $("#key").value = "";
  state.csrf = body.csrf_token;
  start();
}

async function signOut() {
  await fetch("/v1/session", { method: "DELETE", credentials: "same-origin", headers: { "x-csrf-token": state.csrf || "" } });
  state.csrf = null;
  signedOut();
}

async function route() {
  const view = $("#view");
  view.removeAttribute("data-ready");
  const [path, query] = (location.hash.slice(1) || "/overview").split("?");
  const params = new URLSearchParams(query || "");
  const started = performance.now();
  const parts = path.split("/").filter(Boolean);
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === "#/" + parts[0]);
  try {
    if (parts[0] === "usage") { state.view = "usage"; await usage(view, params); }
    else if (parts[0] === "accounts" && parts[1]) { state.view = "account"; await account(view, decodeURIComponent(parts[1]), params); }
    else if (parts[0] === "accounts") { state.view = "accounts"; await accounts(view, params); }
    else if (parts[0] === "events") { state.view = "events"; events(view); }
    else { state.view = "overview"; await overview(view); }
    view.setAttribute("data-ready", state.view);
    // When each view was asked for and shown (ms since this document's navigation began).
    window.tallyTimings.push({ view: state.view, started, ready: performance.now() });
  } catch (err) {
    if (err instanceof Unauthenticated) { signedOut(); return; }
    window.tallyErrors.push("view " + state.view + ": " + err.message);
    view.replaceChildren(el("p", { class: "error", role: "alert", text: "Could not load: " + err.message }));
  }
}

function start() {
  $("#signin").hidden = true;
  $("#nav").hidden = false;
  $("#signout").hidden = false;
  listen();
  route();
}

async function boot() {
  $("#signin").addEventListener("submit", signIn);
  $("#signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  // A page left (or kept in the back-forward cache) lets go of its event stream: a browser
  // opens at most 6 connections to a host over HTTP/1.1, and each open stream holds one.
  window.addEventListener("pagehide", () => { if (state.events) { state.events.close(); state.events = null; } });
  window.addEventListener("pageshow", (e) => { if (e.persisted && state.csrf) listen(); });
  try {
    const s = await api("/v1/session");
    state.csrf = s.csrf_token;
    start();
  } catch (_) {
    signedOut();
  }
}

boot();
