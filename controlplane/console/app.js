// The Turnout console: plain ES modules, no build. Every data call sends the key the
// user signed in with (kept in sessionStorage) as `Authorization: Bearer`; the key
// never goes into a URL, and nothing here logs it.

import { COLOURS, lineChart } from "./chart.js";

const KEY = "turnout.key";
const POLL_MS = 2000; // the live view and the proxies page refresh this often
const LIVE_KEEP_MS = 5 * 60 * 1000; // the live view keeps five minutes of points
const LIVE_WINDOW = "10s"; // each point covers this much traffic

const session = { me: null, rollouts: false, timers: [], page: null };

// ---------- small helpers ----------

/** Build an element: h("td", {class: "num"}, "12"); attributes starting "on" listen. */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headers, rows, caption) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      caption ? h("caption", { class: "muted" }, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows),
    ),
  );
}

function message(text, kind = "") {
  return h("div", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

function badge(text) {
  return h("span", { class: `badge ${text}` }, text);
}

function time(value) {
  if (!value) return "";
  const date = new Date(value);
  return h("time", { datetime: value }, date.toISOString().replace("T", " ").slice(0, 19) + " UTC");
}

function can(permission) {
  return Boolean(session.me && session.me.permissions.includes(permission));
}

class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.detail !== undefined ? body.detail : body;
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.code = body && body.error;
  }
}

/** Call the admin API with the user's key; return {status, data, headers}. */
async function api(path, { method = "GET", body, headers = {}, allow = [] } = {}) {
  const key = sessionStorage.getItem(KEY);
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : null;
  if (response.status === 401 && path !== "/v1/whoami") {
    signOut("Your key is no longer accepted. Sign in again.");
  }
  if (!response.ok && !allow.includes(response.status)) throw new ApiError(response.status, data);
  return { status: response.status, data, headers: response.headers };
}

function clearTimers() {
  for (const id of session.timers) clearInterval(id);
  session.timers = [];
}

/** Show ``children`` in the main area, outside any page (the sign-in form). */
function show(...children) {
  document.getElementById("view").replaceChildren(...children);
}

// ---------- sign-in ----------

function showSignIn(notice) {
  clearTimers();
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  const error = h("div", { id: "signin-error" });
  if (notice) error.append(message(notice, "error"));
  const input = h("input", {
    id: "key",
    name: "key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "tk_...",
  });
  const form = h(
    "form",
    { method: "post", onsubmit: (event) => signIn(event, input, error) },
    h("label", { for: "key" }, "API key"),
    input,
    h("p", { class: "muted" }, "Kept in this tab's session storage only, and sent as an Authorization header."),
    h("button", { type: "submit" }, "Sign in"),
  );
  show(h("div", { class: "signin" }, h("h1", {}, "Sign in to Turnout"), error, form));
  input.focus();
}

async function signIn(event, input, error) {
  event.preventDefault();
  sessionStorage.setItem(KEY, input.value.trim());
  input.value = "";
  try {
    const { status, data } = await api("/v1/whoami", { allow: [401] });
    if (status === 401) {
      sessionStorage.removeItem(KEY);
      error.replaceChildren(message("That key is not valid (unknown, revoked or expired).", "error"));
      return;
    }
    session.me = data;
    await start();
  } catch (exc) {
    sessionStorage.removeItem(KEY);
    error.replaceChildren(message(`Could not sign in: ${exc.message}`, "error"));
  }
}

function signOut(notice) {
  sessionStorage.removeItem(KEY);
  session.me = null;
  showSignIn(notice);
}

async function start() {
  const me = session.me;
  session.rollouts = await rolloutsAvailable();
  // The navigation appears once it is complete, and routes from then on.
  const nav = document.getElementById("nav");
  nav.querySelector('[data-page="audit"]').hidden = !can("audit");
  nav.querySelector('[data-page="rollouts"]').hidden = !session.rollouts;
  document.getElementById("who-name").textContent = `${me.name} (${me.role})`;
  document.getElementById("who").hidden = false;
  nav.hidden = false;
  if (!location.hash.startsWith("#/")) location.hash = "#/models";
  else route();
}

/** Whether the rollout API is there: its list answers anything but 404 or 405. */
async function rolloutsAvailable() {
  try {
    const models = (await api("/v1/models")).data;
    if (!models.length) return false;
    const { status } = await api(`/v1/models/${encodeURIComponent(models[0].name)}/rollouts`, {
      allow: [404, 405],
    });
    return status !== 404 && status !== 405;
  } catch {
    return false;
  }
}

// ---------- routing ----------

const PAGES = {
  models: modelsPage,
  live: livePage,
  proxies: proxiesPage,
  rollouts: rolloutsPage,
  revisions: revisionsPage,
  audit: auditPage,
};

function route() {
  if (!session.me) return;
  clearTimers();
  const name = (location.hash.match(/^#\/([a-z]+)/) || [])[1] || "models";
  const page = Object.hasOwn(PAGES, name) && (name !== "audit" || can("audit")) && (name !== "rollouts" || session.rollouts) ? name : "models";
  session.page = page;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · Turnout console`;
  // Each visit renders into its own element: a page still loading when the user
  // moves on writes into a detached one, and its timers stop.
  const root = h("div", { class: "page" }, h("p", { class: "muted" }, "Loading..."));
  const main = document.getElementById("view");
  main.replaceChildren(root);
  const context = {
    view: (...children) => {
      root.replaceChildren(...children.filter((child) => child !== null && child !== undefined));
      return root;
    },
    every: (ms, fn) => {
      if (root.isConnected) session.timers.push(setInterval(() => root.isConnected && fn(), ms));
    },
  };
  PAGES[page](context).catch((exc) => {
    if (session.me && root.isConnected) root.replaceChildren(message(`Could not load this page: ${exc.message}`, "error"));
  });
  main.focus({ preventScroll: true });
}

// ---------- models ----------

async function modelsPage({ view }) {
  const models = (await api("/v1/models")).data;
  const sections = await Promise.all(models.map((m) => modelSection(m)));
  view(
    h("h1", {}, "Models"),
    models.length ? null : h("p", {}, "No models yet."),
    ...sections,
  );
}

async function modelSection(model) {
  const name = encodeURIComponent(model.name);
  const [versions, traffic, policy] = await Promise.all([
    api(`/v1/models/${name}/versions`),
    api(`/v1/models/${name}/traffic`),
    api(`/v1/models/${name}/policy`, { allow: [404] }),
  ]);
  const weights = traffic.data.weights;
  const versionPolicies = await Promise.all(
    versions.data.map((v) =>
      api(`/v1/models/${name}/versions/${encodeURIComponent(v.version)}/policy`, { allow: [404] }),
    ),
  );
  const rows = versions.data.map((v, i) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, v.version),
      h("td", { class: "num" }, `${weights[v.version] ?? 0}%`),
      h(
        "td",
        {},
        v.endpoints.length
          ? v.endpoints.map((e) =>
              h(
                "div",
                {},
                `${e.address}:${e.port}`,
                h("span", { class: "muted" }, ` weight ${e.weight}${e.zone ? `, zone ${e.zone}` : ""}${e.accelerator ? `, ${e.accelerator}` : ""}${e.batcher_port ? `, batcher :${e.batcher_port}` : ""}`),
              ),
            )
          : h("span", { class: "muted" }, "none"),
      ),
      h("td", {}, v.batching ? `on (max batch ${v.batching.max_batch_size ?? "?"})` : "off"),
      h("td", {}, policyView(versionPolicies[i])),
    ),
  );
  const section = h(
    "section",
    { class: "card", "aria-labelledby": `model-${model.name}` },
    h("h2", { id: `model-${model.name}` }, model.name, " ", badge(model.status)),
    model.description ? h("p", {}, model.description) : null,
    h("p", { class: "muted" }, `Protocol ${model.protocol}; updated `, time(model.updated_at)),
    model.degraded && model.degraded.length
      ? message(`Held at its last accepted config: ${model.degraded.map((d) => `${d.type} rejected by ${d.node}: ${d.reason}`).join("; ")}`, "error")
      : null,
    table(["Version", "Weight", "Endpoints", "Batching", "Policy"], rows),
    h("h3", {}, "Model policy"),
    policyView(policy),
  );
  if (can("write") && versions.data.length) {
    section.append(splitEditor(model.name, versions.data.map((v) => v.version), weights, traffic.headers.get("etag")));
  }
  return section;
}

function policyView(result) {
  if (!result || result.status === 404 || !result.data) return h("span", { class: "muted" }, "none");
  const set = Object.entries(result.data).filter(([, v]) => v !== null && !(typeof v === "object" && !Object.keys(v).length));
  if (!set.length) return h("span", { class: "muted" }, "defaults");
  return h("details", {}, h("summary", {}, set.map(([k]) => k).join(", ")), h("pre", {}, JSON.stringify(Object.fromEntries(set), null, 2)));
}

/** Sliders for the split (they always add up to 100), then a confirm step with a dry run. */
function splitEditor(model, versions, current, etag) {
  const proposed = Object.fromEntries(versions.map((v) => [v, current[v] ?? 0]));
  const outputs = {};
  const sliders = {};
  const status = h("div", { "aria-live": "polite" });
  const review = h("button", { type: "button", disabled: true, onclick: () => openConfirm() }, "Review change");
  const confirmArea = h("div");

  function rebalance(changed, value) {
    proposed[changed] = value;
    const others = versions.filter((v) => v !== changed);
    const rest = 100 - value;
    const before = others.reduce((n, v) => n + proposed[v], 0);
    let given = 0;
    for (const v of others) {
      proposed[v] = before > 0 ? Math.floor((proposed[v] * rest) / before) : Math.floor(rest / others.length);
      given += proposed[v];
    }
    if (others.length) proposed[others[0]] += rest - given;
    for (const v of versions) {
      sliders[v].value = String(proposed[v]);
      outputs[v].value = `${proposed[v]}%`;
    }
    review.disabled = versions.every((v) => proposed[v] === (current[v] ?? 0));
    confirmArea.replaceChildren();
  }

  const grid = h("div", { class: "split" });
  for (const v of versions) {
    const id = `split-${model}-${v}`;
    sliders[v] = h("input", {
      type: "range",
      id,
      min: 0,
      max: 100,
      step: 1,
      value: proposed[v],
      disabled: versions.length === 1,
      "aria-describedby": `${id}-out`,
      oninput: (event) => rebalance(v, Number(event.target.value)),
    });
    outputs[v] = h("output", { id: `${id}-out`, for: id }, `${proposed[v]}%`);
    grid.append(h("label", { for: id }, `Weight of ${v}`), h("div", { class: "row" }, sliders[v], outputs[v]));
  }

  async function openConfirm() {
    const body = { weights: { ...proposed } };
    const changes = versions.filter((v) => proposed[v] !== (current[v] ?? 0)).map((v) => `${v} ${current[v] ?? 0}% → ${proposed[v]}%`);
    const preview = h("div", {}, h("p", { class: "muted" }, "Previewing..."));
    const apply = h("button", { type: "button", onclick: () => send() }, "Apply split");
    const cancel = h("button", { type: "button", class: "secondary", onclick: () => { confirmArea.replaceChildren(); review.focus(); } }, "Cancel");
    confirmArea.replaceChildren(
      h("div", { class: "confirm", role: "group", "aria-label": "Confirm the new split" },
        h("p", {}, h("strong", {}, `Change ${model}: `), changes.join(", ")),
        preview,
        h("div", { class: "row" }, apply, cancel)),
    );
    apply.focus();
    try {
      const dry = await api(`/v1/models/${encodeURIComponent(model)}/traffic?dry_run=true`, {
        method: "PUT", body, headers: etag ? { "If-Match": etag } : {}, allow: [412],
      });
      if (dry.status === 412) return conflict();
      preview.replaceChildren(h("p", {}, "Envoy resources this change touches:"), resourceList(dry.data.resources));
    } catch (exc) {
      preview.replaceChildren(message(`The dry run failed: ${exc.message}`, "error"));
    }

    async function send() {
      apply.disabled = true;
      try {
        const result = await api(`/v1/models/${encodeURIComponent(model)}/traffic`, {
          method: "PUT", body, headers: etag ? { "If-Match": etag } : {}, allow: [412],
        });
        if (result.status === 412) return conflict();
        const revision = result.headers.get("x-turnout-revision");
        await reload(message(`Applied${revision ? ` as revision ${revision}` : ""}: ${changes.join(", ")}.`, "ok"));
      } catch (exc) {
        apply.disabled = false;
        status.replaceChildren(message(`The change was refused: ${exc.message}`, "error"));
      }
    }
  }

  async function conflict() {
    await reload(message("Conflict: the split changed since this page loaded it, so nothing was written. The current split is shown below; review and apply again.", "error"));
  }

  async function reload(notice) {
    const fresh = await modelSection(await (await api(`/v1/models/${encodeURIComponent(model)}`)).data);
    const old = document.querySelector(`section[aria-labelledby="model-${CSS.escape(model)}"]`);
    const editor = fresh.querySelector(".editor");
    if (editor) editor.prepend(notice);
    else fresh.append(notice);
    if (old) old.replaceWith(fresh);
  }

  return h(
    "div",
    { class: "editor" },
    h("h3", {}, "Traffic split"),
    status,
    grid,
    h("div", { class: "row" }, review),
    confirmArea,
  );
}

function resourceList(resources) {
  const items = [];
  for (const [type, change] of Object.entries(resources || {})) {
    for (const kind of ["added", "changed", "removed"]) {
      for (const name of change[kind] || []) items.push(h("li", {}, `${type} ${kind}: `, h("code", {}, name)));
    }
  }
  return items.length ? h("ul", { class: "resources" }, items) : h("p", { class: "muted" }, "No Envoy resource changes.");
}

// ---------- live ----------

const series = new Map(); // "model" -> [{t, versions: {v: figures}}]

async function livePage({ view, every }) {
  const models = (await api("/v1/models")).data;
  if (!models.length) return view(h("h1", {}, "Live"), h("p", {}, "No models yet."));
  const wanted = new URLSearchParams(location.hash.split("?")[1] || "").get("model");
  let model = models.some((m) => m.name === wanted) ? wanted : models[0].name;
  const select = h(
    "select",
    { id: "live-model", onchange: (event) => { model = event.target.value; draw(); poll(); } },
    models.map((m) => h("option", { value: m.name, selected: m.name === model }, m.name)),
  );
  let spanMs = 2 * 60 * 1000;
  const span = h(
    "select",
    { id: "live-span", onchange: (event) => { spanMs = Number(event.target.value); draw(); } },
    [1, 2, 5].map((m) => h("option", { value: m * 60000, selected: m * 60000 === spanMs }, `${m} min`)),
  );
  const charts = h("div", { class: "charts" });
  const figures = h("div");
  const notice = h("div", { "aria-live": "polite" });
  view(
    h("h1", {}, "Live"),
    h("div", { class: "row" }, h("label", { for: "live-model" }, "Model", select), h("label", { for: "live-span" }, "Show the last", span)),
    h("p", { class: "muted" }, `Every ${POLL_MS / 1000} s, the figures of the last ${LIVE_WINDOW}, kept for five minutes in this tab.`),
    notice,
    charts,
    h("h2", {}, "Now"),
    figures,
  );

  function draw() {
    const points = series.get(model) || [];
    const names = [...new Set(points.flatMap((p) => Object.keys(p.versions)))];
    const line = (pick) =>
      names.map((v, i) => ({
        name: v,
        colour: COLOURS[i % COLOURS.length],
        points: points.map((p) => [p.t, p.versions[v] ? pick(p.versions[v]) : null]),
      }));
    const now = Date.now();
    const specs = [
      ["Requests per second", (f) => f.rps, ""],
      ["Error rate", (f) => f.error_rate, "%"],
      ["Latency p50 (ms)", (f) => f.latency_ms.p50, ""],
      ["Latency p99 (ms)", (f) => f.latency_ms.p99, ""],
    ];
    if (points.some((p) => Object.values(p.versions).some((f) => f.batching))) {
      specs.push(["Mean batch size", (f) => (f.batching ? f.batching.mean_batch_size : null), ""]);
    }
    const legend = h("div", { class: "legend" }, names.map((v, i) => {
      const swatch = h("span", { class: "swatch" });
      swatch.style.background = COLOURS[i % COLOURS.length];
      return h("span", {}, swatch, v);
    }));
    charts.replaceChildren(
      ...specs.map(([title, pick, unit]) =>
        h("figure", {}, h("figcaption", {}, title), lineChart(line(pick), { title, unit, spanMs, now }), legend.cloneNode(true)),
      ),
    );
    const last = points[points.length - 1];
    figures.replaceChildren(
      last
        ? table(
            ["Version", "Weight", "Requests/s", "Error rate", "p50 ms", "p99 ms", "Batch size"],
            Object.entries(last.versions).map(([v, f]) =>
              h("tr", {},
                h("th", { scope: "row" }, v),
                h("td", { class: "num" }, `${f.weight}%`),
                h("td", { class: "num" }, f.rps.toFixed(2)),
                h("td", { class: "num" }, f.error_rate === null ? "–" : `${(f.error_rate * 100).toFixed(1)}%`),
                h("td", { class: "num" }, f.latency_ms.p50 ?? "–"),
                h("td", { class: "num" }, f.latency_ms.p99 ?? "–"),
                h("td", { class: "num" }, f.batching && f.batching.mean_batch_size !== null ? f.batching.mean_batch_size : "–"))),
          )
        : h("p", { class: "muted" }, "Waiting for the first figures..."),
    );
  }

  async function poll() {
    const asked = model;
    try {
      const { data } = await api(`/v1/models/${encodeURIComponent(asked)}/metrics?window=${LIVE_WINDOW}`);
      const now = Date.now();
      const kept = (series.get(asked) || []).filter((p) => p.t >= now - LIVE_KEEP_MS);
      const versions = {};
      for (const v of data.versions) versions[v.version] = v.requests ? v : { ...v, rps: 0, error_rate: null, latency_ms: { p50: null, p99: null } };
      kept.push({ t: now, versions });
      series.set(asked, kept);
      notice.replaceChildren();
    } catch (exc) {
      notice.replaceChildren(message(`Could not read the metrics: ${exc.message}`, "error"));
    }
    if (asked === model && session.page === "live") draw();
  }

  draw();
  await poll();
  every(POLL_MS, poll);
}

// ---------- proxies ----------

async function proxiesPage({ view, every }) {
  const body = h("div");
  view(h("h1", {}, "Proxies"), h("p", { class: "muted" }, `Every Envoy connected to this control plane replica; refreshed every ${POLL_MS / 1000} s.`), body);
  async function load() {
    try {
      const proxies = (await api("/v1/proxies")).data;
      body.replaceChildren(proxies.length ? h("div", {}, proxies.map(proxyCard)) : h("p", {}, "No proxy is connected."));
    } catch (exc) {
      body.replaceChildren(message(`Could not read the proxies: ${exc.message}`, "error"));
    }
  }
  await load();
  every(POLL_MS, load);
}

function proxyCard(proxy) {
  const behind = proxy.revision !== null && proxy.synced_revision !== null ? proxy.revision - proxy.synced_revision : null;
  const now = Date.now();
  const rows = Object.entries(proxy.types).map(([type, s]) => {
    const waiting = s.status !== "NACKED" && s.sent_at && s.sent_version !== s.acked_version ? `${((now - new Date(s.sent_at)) / 1000).toFixed(0)} s` : "–";
    return h("tr", {},
      h("th", { scope: "row" }, type),
      h("td", {}, badge(s.status)),
      h("td", {}, s.acked_version ?? "–"),
      h("td", {}, s.current_version ?? "–"),
      h("td", { class: "num" }, waiting),
      h("td", {}, s.error ? h("span", { class: "error-cell" }, s.error) : "",
        s.held && s.held.length ? h("div", { class: "muted" }, `held: ${s.held.map((x) => x.resources.join(", ")).join("; ")}`) : null));
  });
  return h("section", { class: "card", "data-node": proxy.node_id },
    h("h2", {}, proxy.node_id, " ", proxy.degraded ? badge("degraded") : null),
    h("p", { class: "muted" },
      `cluster ${proxy.cluster}, zone ${proxy.zone || "–"}, ${proxy.xds}, connected `, time(proxy.connected_at), ". ",
      behind === null ? "No revision synced yet." : behind === 0 ? `In sync at revision ${proxy.synced_revision}.` : `Lag: ${behind} revision${behind === 1 ? "" : "s"} behind (synced ${proxy.synced_revision}, current ${proxy.revision}).`),
    // What Envoy rejected, in full, where a narrow screen shows it too.
    Object.entries(proxy.types)
      .filter(([, s]) => s.status === "NACKED")
      .map(([type, s]) => h("p", { class: "message error nack" }, `${type} rejected (NACK): ${s.error || "no error given"}`)),
    table(["Type", "Status", "ACKed version", "Current version", "Waiting for ACK", "Error"], rows));
}

// ---------- rollouts (shown once the rollout API answers) ----------

async function rolloutsPage({ view }) {
  const models = (await api("/v1/models")).data;
  const sections = [];
  for (const model of models) {
    const name = encodeURIComponent(model.name);
    const { status, data } = await api(`/v1/models/${name}/rollouts`, { allow: [404, 405] });
    if (status !== 200) continue;
    const items = Array.isArray(data) ? data : data.items || [];
    const details = await Promise.all(items.map((r) => api(`/v1/models/${name}/rollouts/${encodeURIComponent(r.id)}`).then((x) => x.data)));
    sections.push(h("section", { class: "card" }, h("h2", {}, model.name),
      details.length ? details.map((r) => rolloutView(model.name, r)) : h("p", { class: "muted" }, "No rollouts.")));
  }
  view(h("h1", {}, "Rollouts"), ...(sections.length ? sections : [h("p", {}, "No rollouts.")]));
}

function rolloutView(model, rollout) {
  const area = h("div", { "aria-live": "polite" });
  const steps = rollout.spec ? rollout.spec.steps : null;
  const index = Number(rollout.step);
  const progress = Array.isArray(steps)
    ? h("div", {},
        h("p", {}, `Step ${index + 1} of ${steps.length} `, h("progress", { max: steps.length, value: index + 1, "aria-label": "rollout progress" })),
        h("ol", { class: "steps" }, steps.map((step, i) =>
          h("li", { "aria-current": i === index ? "step" : null },
            `${step.weight}% to the candidate${step.hold_s ? `, held ${step.hold_s} s` : ""}`,
            i < index ? " (done)" : i === index ? " (current)" : ""))))
    : h("p", {}, `Step ${rollout.step ?? "–"}`);
  const gates = (rollout.gates || []).map((g) =>
    h("tr", {}, h("th", { scope: "row" }, g.metric), h("td", { class: "num" }, g.value ?? "–"), h("td", { class: "num" }, `${g.kind === "max_ratio_to_baseline" ? "≤ baseline × " : g.kind === "min" ? "≥ " : "≤ "}${g.threshold ?? "–"}`), h("td", { class: "num" }, g.min_samples ? `${g.samples ?? 0} / ${g.min_samples}` : g.samples ?? "–"), h("td", {}, badge(String(g.verdict)))));
  const actions = can("write")
    ? h("div", { class: "row" }, ["pause", "resume", "abort", "promote"].map((action) =>
        h("button", { type: "button", class: action === "abort" ? "danger" : "secondary", onclick: () => act(action) }, action[0].toUpperCase() + action.slice(1))))
    : null;
  async function act(action, confirmed = false) {
    if ((action === "abort" || action === "promote") && !confirmed) {
      const what = action === "abort" ? "Abort: the baseline gets all the traffic back" : "Promote: the candidate gets all the traffic now";
      const go = h("button", { type: "button", class: "danger", onclick: () => act(action, true) }, `Confirm ${action}`);
      area.replaceChildren(h("div", { class: "confirm", role: "group", "aria-label": `Confirm ${action}` },
        h("p", {}, `${what} (rollout ${rollout.id} of ${model}).`),
        h("div", { class: "row" }, go, h("button", { type: "button", class: "secondary", onclick: () => area.replaceChildren() }, "Cancel"))));
      go.focus();
      return;
    }
    try {
      await api(`/v1/models/${encodeURIComponent(model)}/rollouts/${encodeURIComponent(rollout.id)}/${action}`, { method: "POST" });
      route();
    } catch (exc) {
      area.replaceChildren(message(`${action} refused: ${exc.message}`, "error"));
    }
  }
  return h("div", { class: "rollout" },
    h("h3", {}, `Rollout ${rollout.id} `, badge(String(rollout.state))),
    progress,
    gates.length ? table(["Gate", "Value", "Threshold", "Samples", "Verdict"], gates) : null,
    rollout.timeline && rollout.timeline.length
      ? h("details", {}, h("summary", {}, "Timeline"), h("ol", {}, rollout.timeline.map((e) => h("li", {}, e.at, " ", e.kind, e.detail && e.detail.reason ? `: ${e.detail.reason}` : ""))))
      : null,
    actions, area);
}

// ---------- revisions ----------

async function revisionsPage({ view }) {
  const list = h("div");
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Older revisions");
  const diffOut = h("div", { id: "diff", "aria-live": "polite" });
  const notice = h("div", { id: "revisions-notice" });
  const from = h("input", { id: "diff-rev", type: "number", min: 1, required: true, inputmode: "numeric" });
  const against = h("input", { id: "diff-against", type: "number", min: 0, inputmode: "numeric", placeholder: "previous" });
  const rows = [];
  let cursor = null;

  let latest = 0; // only the newest diff asked for is shown

  async function diff(revision, base) {
    const asked = ++latest;
    from.value = revision;
    against.value = base ?? "";
    const query = base !== undefined && base !== null && base !== "" ? `?against=${encodeURIComponent(base)}` : "";
    try {
      const { data } = await api(`/v1/revisions/${encodeURIComponent(revision)}/diff${query}`);
      if (asked !== latest) return;
      diffOut.replaceChildren(
        h("h3", {}, `Revision ${data.from} → ${data.to}`),
        h("p", {}, "State: ", stateSummary(data.state)),
        resourceList(data.resources),
        h("details", {}, h("summary", {}, "The whole diff"), h("pre", {}, JSON.stringify(data, null, 2))),
      );
    } catch (exc) {
      diffOut.replaceChildren(message(`No diff: ${exc.message}`, "error"));
    }
  }

  function rollbackStep(rev, cell) {
    const go = h("button", { type: "button", class: "danger", onclick: async () => {
      go.disabled = true;
      try {
        const { data } = await api(`/v1/revisions/${rev.revision}/rollback`, { method: "POST" });
        notice.replaceChildren(message(`Rolled back: revision ${data.revision} restores revision ${data.restored}.`, "ok"));
        await refresh();
      } catch (exc) {
        cell.replaceChildren(rollbackButton(rev, cell));
        notice.replaceChildren(message(`Rollback to ${rev.revision} refused: ${exc.message}`, "error"));
      }
    } }, `Confirm rollback to ${rev.revision}`);
    const cancel = h("button", { type: "button", class: "secondary", onclick: () => cell.replaceChildren(rollbackButton(rev, cell)) }, "Cancel");
    cell.replaceChildren(h("div", { class: "confirm" },
      h("p", {}, `Make revision ${rev.revision}'s traffic state current again, as a new revision? Access state stays as it is.`),
      h("div", { class: "row" }, go, cancel)));
    go.focus();
  }

  function rollbackButton(rev, cell) {
    return h("button", { type: "button", class: "secondary", onclick: () => rollbackStep(rev, cell) }, "Roll back…");
  }

  function row(rev) {
    const actions = h("td", {});
    actions.append(h("button", { type: "button", class: "secondary", onclick: () => diff(rev.revision) }, "Diff"), " ");
    if (can("write")) {
      const cell = h("span", {});
      cell.append(rollbackButton(rev, cell));
      actions.append(cell);
    }
    return h("tr", {}, h("th", { scope: "row", class: "num" }, rev.revision), h("td", {}, time(rev.created_at)), h("td", {}, rev.actor), h("td", {}, rev.action), actions);
  }

  async function page() {
    const query = cursor ? `?cursor=${cursor}` : "";
    const { data } = await api(`/v1/revisions${query}`);
    rows.push(...data.items.map(row));
    cursor = data.next_cursor;
    more.hidden = !cursor;
    list.replaceChildren(table(["Revision", "When", "Actor", "Action", ""], rows));
  }

  async function refresh() {
    rows.length = 0;
    cursor = null;
    await page();
  }

  more.addEventListener("click", page);
  const form = h("form", { class: "row", onsubmit: (event) => { event.preventDefault(); diff(from.value, against.value); } },
    h("label", { for: "diff-rev" }, "Revision", from),
    h("label", { for: "diff-against" }, "Against", against),
    h("button", { type: "submit" }, "Show diff"));
  view(h("h1", {}, "Revisions"), h("section", { class: "card" }, h("h2", {}, "Compare two revisions"), form, diffOut), notice, list, more);
  await page();
}

function stateSummary(state) {
  const parts = [];
  if (state.added && state.added.length) parts.push(`added ${state.added.join(", ")}`);
  if (state.removed && state.removed.length) parts.push(`removed ${state.removed.join(", ")}`);
  if (state.changed && Object.keys(state.changed).length) parts.push(`changed ${Object.keys(state.changed).join(", ")}`);
  return parts.length ? parts.join("; ") : "no model changes";
}

// ---------- audit ----------

const OUTCOMES = ["", "success", "rejected", "denied", "replayed", "error", "dry_run"];

async function auditPage({ view }) {
  const field = (id, label, attrs = {}) => h("label", { for: id }, label, h("input", { id, name: id, ...attrs }));
  const form = h("form", { class: "row", id: "audit-filters" },
    field("actor", "Actor"),
    field("action", "Action", { placeholder: "traffic.update" }),
    field("model", "Model"),
    h("label", { for: "outcome" }, "Outcome", h("select", { id: "outcome", name: "outcome" }, OUTCOMES.map((o) => h("option", { value: o }, o || "any")))),
    field("since", "Since (UTC)", { type: "datetime-local", step: 1 }),
    field("until", "Until (UTC)", { type: "datetime-local", step: 1 }),
    h("button", { type: "submit" }, "Filter"));
  const results = h("div", { id: "audit-results", "aria-live": "polite" });
  const pager = h("div", { class: "row" });
  const exportStatus = h("div", { "aria-live": "polite" });
  const verifyStatus = h("div", { "aria-live": "polite" });
  const cursors = [null]; // the cursor of each page seen, for "Newer"

  function filters() {
    const query = new URLSearchParams();
    for (const name of ["actor", "action", "model", "outcome"]) {
      const value = form.elements[name].value.trim();
      if (value) query.set(name, value);
    }
    for (const name of ["since", "until"]) {
      const value = form.elements[name].value;
      if (value) query.set(name, `${value.length === 16 ? `${value}:00` : value}Z`);
    }
    return query;
  }

  let latest = 0; // only the newest request's answer is shown

  async function load(index) {
    const asked = ++latest;
    const query = filters();
    query.set("limit", "25");
    if (cursors[index]) query.set("cursor", cursors[index]);
    try {
      const { data } = await api(`/v1/audit/events?${query}`);
      if (asked !== latest) return;
      cursors.length = index + 1;
      if (data.next_cursor) cursors.push(data.next_cursor);
      const rows = data.items.map((e) =>
        h("tr", {},
          h("td", { class: "num" }, e.id),
          h("td", {}, time(e.created_at)),
          h("td", {}, e.actor, e.role ? h("span", { class: "muted" }, ` (${e.role})`) : null),
          h("td", {}, e.action),
          h("td", {}, e.resource_type, e.resource_id ? `: ${e.resource_id}` : ""),
          h("td", {}, e.model ?? ""),
          h("td", {}, badge(e.outcome)),
          h("td", { class: "num" }, e.status_code ?? ""),
          h("td", { class: "num" }, e.revision ?? "")));
      results.replaceChildren(
        rows.length ? table(["Id", "When", "Actor", "Action", "Resource", "Model", "Outcome", "Status", "Revision"], rows, `Page ${index + 1}`) : h("p", {}, "No events match."),
      );
      pager.replaceChildren(
        h("button", { type: "button", class: "secondary", disabled: index === 0, onclick: () => load(index - 1) }, "Newer"),
        h("button", { type: "button", class: "secondary", disabled: !data.next_cursor, onclick: () => load(index + 1) }, "Older"),
      );
    } catch (exc) {
      if (asked === latest) results.replaceChildren(message(`Could not read the audit log: ${exc.message}`, "error"));
    }
  }

  async function exportCsv() {
    const query = filters();
    query.set("format", "csv");
    exportStatus.replaceChildren(h("p", { class: "muted" }, "Exporting..."));
    try {
      const response = await fetch(`/v1/audit/export?${query}`, {
        headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` },
      });
      if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const link = h("a", { href: url, download: "turnout-audit.csv" });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      exportStatus.replaceChildren(message(`Exported ${blob.size} bytes as turnout-audit.csv.`, "ok"));
    } catch (exc) {
      exportStatus.replaceChildren(message(`The export failed: ${exc.message}`, "error"));
    }
  }

  async function verify() {
    try {
      const { data } = await api("/v1/audit/verify");
      verifyStatus.replaceChildren(
        data.ok
          ? message(`The chain is intact: ${data.checked} events checked, head at event ${data.head_id}.`, "ok")
          : message(`The chain is broken at event ${data.first_broken_id} (position ${data.first_broken_position}): ${data.reason}`, "error"),
      );
    } catch (exc) {
      verifyStatus.replaceChildren(message(`Could not verify: ${exc.message}`, "error"));
    }
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); cursors.length = 1; load(0); });
  view(
    h("h1", {}, "Audit"),
    h("section", { class: "card" },
      h("h2", {}, "Chain"),
      h("div", { class: "row" },
        h("button", { type: "button", id: "verify", onclick: verify }, "Verify the chain"),
        h("button", { type: "button", id: "export", class: "secondary", onclick: exportCsv }, "Export CSV")),
      verifyStatus, exportStatus),
    form, results, pager,
  );
  await Promise.all([load(0), verify()]);
}

// ---------- start ----------

window.addEventListener("hashchange", route);
// The skip link moves focus to the content without touching the page's address.
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  document.getElementById("view").focus();
});
document.getElementById("sign-out").addEventListener("click", () => signOut());

(async () => {
  if (!sessionStorage.getItem(KEY)) return showSignIn();
  try {
    const { status, data } = await api("/v1/whoami", { allow: [401] });
    if (status === 401) return signOut("Your key is no longer accepted. Sign in again.");
    session.me = data;
    await start();
  } catch (exc) {
    showSignIn(`Could not reach the admin API: ${exc.message}`);
  }
})();
