// The dashboard: four pages over the service's own API. Data from the server is only ever put on
// the page as text (textContent), never as markup; the admin token lives in this tab's
// sessionStorage and travels only as a Bearer header to this origin.

const TOKEN_KEY = "rbm-admin-token";
const PAGES = ["overview", "training", "models", "explorer"];
const $ = (id) => document.getElementById(id);

const state = {
  page: "overview",
  token: sessionStorage.getItem(TOKEN_KEY),
  timer: null,
  // Overview: the previous /metrics reading, to turn counters into rates.
  lastMetrics: null,
  // Training: the run shown, whether the operator picked it, and what its chart shows.
  runId: null,
  runPicked: false,
  curvesKey: "",
  curvesUrl: null,
  // Models: the version waiting for confirmation.
  pending: null,
  // Explorer: the user shown.
  user: null,
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Calls the API; admin calls carry the token. Resolves to the parsed JSON body (or a Blob for
// `blob: true`), rejects with the API's own error message.
async function api(path, { method = "GET", body, admin = false, blob = false } = {}) {
  const headers = {};
  if (admin) {
    if (!state.token) throw new ApiError(401, "enter the admin token first");
    headers.Authorization = `Bearer ${state.token}`;
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const error = await response.json();
      if (error && error.error) message = error.error.message || message;
    } catch (_) { /* not JSON: keep the status line */ }
    if (admin && (response.status === 401 || response.status === 403)) adminRefused(response.status, message);
    throw new ApiError(response.status, message);
  }
  if (blob) return response.blob();
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

function say(text, kind = "") {
  const message = $("message");
  message.textContent = text;
  message.className = kind;
}

function fail(error) {
  say(error.message || String(error), "error");
}

// ---- formatting ----

const number = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const fixed = (n, digits) => (n === null || n === undefined ? "–" : Number(n).toFixed(digits));
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "–");

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function seconds(s) {
  if (s === null || !Number.isFinite(s)) return "–";
  return s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms` : `${s.toFixed(2)} s`;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell;
    tr.append(td);
  }
  return tr;
}

const label = (id, title) => (title ? `${title} (${id})` : id);

// ---- the admin token ----

function showToken() {
  const held = Boolean(state.token);
  $("token-form").hidden = held;
  $("token-held").hidden = !held;
  $("admin-hint").hidden = held;
}

function adminRefused(status, message) {
  if (status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showToken();
    say(`The admin token was refused (${message}); enter it again.`, "error");
  } else {
    say(`Admin is disabled on this server: ${message}. Start it with ADMIN_TOKEN set.`, "error");
  }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  state.token = token;
  $("token-input").value = "";
  showToken();
  say("Admin token set for this tab.", "ok");
  refresh();
});

$("token-forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  showToken();
  say("Admin token forgotten.");
  refresh();
});

// ---- Overview ----

// Parses the OpenMetrics text into {name, labels, value} samples.
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

// The request counts, latency buckets and cache counters of one /metrics reading, summed over
// every route but the dashboard's own polling.
function reading(text) {
  const polled = new Set(["/metrics", "/stats", "/readyz", "/", "/dashboard/{file}"]);
  const read = { at: performance.now(), requests: 0, buckets: new Map(), hits: 0, misses: 0 };
  for (const { name, labels, value } of parseMetrics(text)) {
    if (name.startsWith("http_request_duration_seconds") && polled.has(labels.route)) continue;
    if (name === "http_request_duration_seconds_count") read.requests += value;
    else if (name === "http_request_duration_seconds_bucket") {
      const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
      read.buckets.set(le, (read.buckets.get(le) || 0) + value);
    } else if (name === "ranking_cache_hits_total") read.hits = value;
    else if (name === "ranking_cache_misses_total") read.misses = value;
  }
  return read;
}

// The q-quantile of a cumulative histogram, interpolated inside its bucket as Prometheus does.
function quantile(q, buckets) {
  const bounds = [...buckets.keys()].sort((a, b) => a - b);
  const total = buckets.get(Infinity) || 0;
  if (total === 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const bound of bounds) {
    const count = buckets.get(bound);
    if (count >= rank) {
      if (bound === Infinity) return lower;
      return lower + ((bound - lower) * (rank - below)) / Math.max(count - below, 1e-9);
    }
    lower = bound;
    below = count;
  }
  return lower;
}

function showTraffic(now, before) {
  const delta = new Map();
  for (const [le, count] of now.buckets) delta.set(le, count - ((before && before.buckets.get(le)) || 0));
  const requests = now.requests - (before ? before.requests : 0);
  if (before) {
    const rate = requests / Math.max((now.at - before.at) / 1000, 1e-3);
    $("traffic-rate").textContent = `${rate.toFixed(rate < 10 ? 2 : 0)} per second`;
  } else {
    $("traffic-rate").textContent = `${number(requests)} since start`;
  }
  $("traffic-p50").textContent = seconds(quantile(0.5, delta));
  $("traffic-p99").textContent = seconds(quantile(0.99, delta));
  const hits = now.hits - (before ? before.hits : 0);
  const lookups = hits + now.misses - (before ? before.misses : 0);
  $("cache-hits").textContent = lookups ? `${((100 * hits) / lookups).toFixed(1)} % of ${number(lookups)}` : "no lookups";
}

function showActiveModel(model) {
  $("active-model-facts").hidden = !model;
  $("active-params").hidden = !model;
  $("no-model").hidden = Boolean(model);
  if (!model) return;
  const m = model.metrics || {};
  $("active-version").textContent = `v${model.version}`;
  $("active-trained").textContent = when(model.created_at);
  $("active-rmse").textContent = fixed(m.valid_rmse, 4);
  $("active-ndcg").textContent = fixed(m.valid_ndcg, 4);
  $("active-epoch").textContent = m.best_epoch ?? "–";
  $("active-data").textContent = `${number(m.n_train)} ratings, ${number(m.users)} users, ${number(m.items)} items`;
  $("active-size").textContent = bytes(model.size_bytes);
  const rows = $("active-params-rows");
  rows.replaceChildren();
  const flatten = (value, path) => {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) flatten(inner, path ? `${path}.${key}` : key);
    } else {
      rows.append(row([path, JSON.stringify(value)]));
    }
  };
  flatten(model.params, "");
}

async function overview() {
  const [health, ready, stats, metrics] = await Promise.allSettled([
    api("/healthz"),
    api("/readyz"),
    api("/stats"),
    fetch("/metrics", { cache: "no-store" }).then((r) => r.text()),
  ]);
  $("health").textContent = health.status === "fulfilled" ? health.value.status : "unreachable";
  if (ready.status === "fulfilled") {
    $("database").textContent = ready.value.database;
    $("serving-version").textContent = ready.value.model_loaded ? `v${ready.value.model_version}` : "none yet (popular items)";
  } else {
    $("database").textContent = `not ready: ${ready.reason.message}`;
  }
  if (stats.status === "fulfilled") {
    $("count-users").textContent = number(stats.value.users);
    $("count-items").textContent = number(stats.value.items);
    $("count-ratings").textContent = number(stats.value.ratings);
  }
  if (metrics.status === "fulfilled") {
    const now = reading(metrics.value);
    showTraffic(now, state.lastMetrics);
    state.lastMetrics = now;
  }
  if (state.token) {
    const { models } = await api("/admin/models", { admin: true });
    showActiveModel(models.find((m) => m.active));
  } else {
    for (const id of ["active-model-facts", "active-params", "no-model"]) $(id).hidden = true;
  }
}

// ---- Training ----

function retrainRequest() {
  const request = {};
  const integer = (id, key) => {
    const value = $(id).value.trim();
    if (value !== "") request[key] = Number.parseInt(value, 10);
  };
  const real = (id, key) => {
    const value = $(id).value.trim();
    if (value !== "") request[key] = Number(value);
  };
  integer("retrain-epochs", "epochs");
  integer("retrain-hidden", "hidden");
  real("retrain-lr", "learning_rate");
  real("retrain-valid", "valid_frac");
  integer("retrain-patience", "patience");
  integer("retrain-seed", "seed");
  if ($("retrain-model").value) request.model = $("retrain-model").value;
  return request;
}

$("retrain-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const { run_id: id } = await api("/admin/retrain", { method: "POST", body: retrainRequest(), admin: true });
    state.runId = id;
    state.runPicked = true;
    say(`Training run ${id} started.`, "ok");
    await training();
  } catch (error) {
    fail(error);
  }
});

$("run-cancel").addEventListener("click", async () => {
  try {
    await api(`/admin/training-runs/${state.runId}/cancel`, { method: "POST", admin: true });
    say(`Asked run ${state.runId} to stop.`);
    await training();
  } catch (error) {
    fail(error);
  }
});

async function showCurves(run) {
  const progress = run.progress || {};
  const points = (progress.user || []).length + (progress.item || []).length;
  const key = `${run.id}:${points}:${run.status}`;
  if (key === state.curvesKey) return;
  const svg = await api(`/admin/training-runs/${run.id}/curves.svg`, { admin: true, blob: true });
  const url = URL.createObjectURL(svg);
  const img = $("run-curves");
  img.src = url;
  img.dataset.points = String(points);
  if (state.curvesUrl) URL.revokeObjectURL(state.curvesUrl);
  state.curvesUrl = url;
  state.curvesKey = key;
}

function showRun(run) {
  $("run-detail").hidden = false;
  $("run-title").textContent = `Run ${run.id}`;
  const status = $("run-status");
  status.textContent = run.status;
  status.className = `badge ${run.status}`;
  const p = run.progress || {};
  const live = run.status === "running" || run.status === "queued";
  let text = "";
  if (p.epochs) {
    text = `${p.rbm === "item" ? "item-based" : "user-based"} RBM, epoch ${p.epoch} of ${p.epochs}`;
    const last = (p[p.rbm] || []).at(-1);
    if (last) text += `: train RMSE ${fixed(last.train_rmse, 4)}, validation ${fixed(last.valid_rmse, 4)}`;
  } else if (live) {
    text = "reading the ratings…";
  }
  if (run.model_version) text += `${text ? "; " : ""}model v${run.model_version}`;
  $("run-progress-text").textContent = text;
  const bar = $("run-progress");
  bar.max = p.epochs || 1;
  bar.value = live ? p.epoch || 0 : bar.max;
  $("run-error").hidden = !run.error;
  $("run-error").textContent = run.error || "";
  $("run-cancel").hidden = !live;
}

async function training() {
  const { runs } = await api("/admin/training-runs", { admin: true });
  if (!state.runPicked || !runs.some((r) => r.id === state.runId)) {
    state.runId = runs.length ? runs[0].id : null;
  }
  const rows = $("runs");
  rows.replaceChildren();
  for (const run of runs) {
    const status = element("span", run.status, `badge ${run.status}`);
    const took = run.started_at ? (run.finished_at || Date.now()) - run.started_at : null;
    const tr = row([`${run.id}`, status, when(run.started_at), duration(took), run.model_version ? `v${run.model_version}` : "–"]);
    tr.dataset.run = run.id;
    tr.className = `selectable${run.id === state.runId ? " selected" : ""}`;
    tr.addEventListener("click", () => {
      state.runId = run.id;
      state.runPicked = true;
      training().catch(fail);
    });
    rows.append(tr);
  }
  const run = runs.find((r) => r.id === state.runId);
  if (!run) {
    $("run-detail").hidden = true;
    return;
  }
  showRun(run);
  await showCurves(run);
  return run.status === "running" || run.status === "queued";
}

// ---- Models ----

function askToActivate(version) {
  state.pending = version;
  $("confirm-text").textContent = `Activate model v${version}? Every replica serves it from the next request on.`;
  $("confirm").hidden = false;
}

$("confirm-no").addEventListener("click", () => {
  state.pending = null;
  $("confirm").hidden = true;
});

$("confirm-yes").addEventListener("click", async () => {
  const version = state.pending;
  $("confirm").hidden = true;
  state.pending = null;
  try {
    await api(`/admin/models/${version}/activate`, { method: "POST", admin: true });
    say(`Model v${version} is active.`, "ok");
    await models();
  } catch (error) {
    fail(error);
  }
});

async function models() {
  const { models: versions } = await api("/admin/models", { admin: true });
  const rows = $("model-rows");
  rows.replaceChildren();
  for (const model of versions) {
    const m = model.metrics || {};
    let action;
    if (model.active) {
      action = element("span", "active", "badge active");
    } else {
      action = element("button", "Activate", "secondary activate");
      action.type = "button";
      action.addEventListener("click", () => askToActivate(model.version));
    }
    const tr = row([`v${model.version}`, when(model.created_at), bytes(model.size_bytes), fixed(m.valid_rmse, 4), fixed(m.valid_ndcg, 4), number(m.n_train), action]);
    tr.dataset.version = model.version;
    if (model.active) tr.className = "selected";
    rows.append(tr);
  }
  if (!versions.length) rows.append(row(["No model yet: start a retrain on the Training page.", "", "", "", "", "", ""]));
}

// ---- Explorer ----

function recommendationItem(item, scoreLabel) {
  const li = element("li");
  li.dataset.item = item.item_id;
  li.append(element("strong", label(item.item_id, item.title)));
  li.append(element("div", `${scoreLabel} ${fixed(item.score, 3)} · expected rating ${fixed(item.expected_rating, 2)}`, "meta"));
  if (item.because && item.because.length) {
    const because = element("ul", null, "because");
    for (const reason of item.because) {
      const entry = element("li", `${label(reason.item_id, reason.title)} ${reason.rating} (+${fixed(reason.contribution, 3)})`);
      entry.dataset.item = reason.item_id;
      because.append(entry);
    }
    li.append(because);
  }
  return li;
}

async function showUser(user) {
  const path = `/users/${encodeURIComponent(user)}`;
  const [page, rated] = await Promise.all([
    api(`${path}/recommendations?limit=10&explain=true`),
    api(`${path}/ratings`),
  ]);
  state.user = user;
  $("user-view").hidden = false;
  const source = $("user-source");
  source.textContent = page.source === "model" ? `model v${page.model_version}` : "popular items";
  source.className = `badge ${page.source}`;
  const list = $("user-recs");
  list.replaceChildren();
  for (const item of page.items) list.append(recommendationItem(item, page.order === "popularity" ? "ratings" : "score"));
  if (!page.items.length) list.append(element("li", "Nothing left to recommend."));
  const rows = $("user-ratings");
  rows.replaceChildren();
  for (const { item_id: item, rating } of rated.ratings) rows.append(row([item, `${rating}`]));
  $("user-count").textContent = rated.ratings.length;
}

$("user-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await showUser($("user-id").value.trim());
    say("");
  } catch (error) {
    fail(error);
  }
});

$("rate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const item = $("rate-item").value.trim();
  const rating = Number($("rate-value").value);
  try {
    await api("/ratings", { method: "POST", body: { user_id: state.user, item_id: item, rating } });
    say(`Rated ${item} ${rating} for ${state.user}.`, "ok");
    $("rate-item").value = "";
    $("rate-value").value = "";
    await showUser(state.user);
  } catch (error) {
    fail(error);
  }
});

$("item-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = $("item-id").value.trim();
  const path = `/items/${encodeURIComponent(id)}`;
  try {
    const [item, similar] = await Promise.allSettled([api(path), api(`${path}/similar?limit=10`)]);
    if (item.status === "rejected" && similar.status === "rejected") throw item.reason;
    $("item-view").hidden = false;
    $("item-key").textContent = id;
    $("item-title").textContent = item.status === "fulfilled" ? item.value.title ?? "–" : "not in the catalogue";
    $("item-metadata").textContent = item.status === "fulfilled" && item.value.metadata ? JSON.stringify(item.value.metadata) : "–";
    const list = $("item-similar");
    list.replaceChildren();
    if (similar.status === "fulfilled") {
      for (const s of similar.value.items) {
        const li = element("li");
        li.dataset.item = s.item_id;
        li.append(element("strong", label(s.item_id, s.title)));
        li.append(element("div", `similarity ${fixed(s.similarity, 3)}`, "meta"));
        list.append(li);
      }
    } else {
      list.append(element("li", similar.reason.message));
    }
    say("");
  } catch (error) {
    fail(error);
  }
});

// ---- navigation and refresh ----

const REFRESH = { overview: 5000, training: 4000, models: 0, explorer: 0 };
// While a run is going its page follows every epoch.
const LIVE_REFRESH = 700;

async function refresh() {
  clearTimeout(state.timer);
  const page = state.page;
  let live = false;
  try {
    if (page === "overview") await overview();
    else if (!state.token) {
      if (page !== "explorer") say("This page needs the admin token: enter it above.", "error");
    } else if (page === "training") live = await training();
    else if (page === "models") await models();
  } catch (error) {
    fail(error);
  }
  const every = live ? LIVE_REFRESH : REFRESH[page];
  if (every && page === state.page) state.timer = setTimeout(refresh, every);
}

function navigate() {
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "overview";
  state.page = page;
  for (const name of PAGES) {
    $(name).hidden = name !== page;
    $(`nav-${name}`).classList.toggle("current", name === page);
  }
  say("");
  refresh();
}

window.addEventListener("hashchange", navigate);
showToken();
navigate();
