// The modelgate dashboard: polls GET /status every two seconds and draws it.
// Everything shown is set with textContent (never innerHTML): model names, error codes and job
// ids come from the server and are never read as markup.
"use strict";

const POLL_MS = 2000;
const KEY_ITEM = "modelgate-api-key";
const SVG = "http://www.w3.org/2000/svg";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function num(value, digits) {
  if (value === null || value === undefined) return "–";
  return typeof value === "number" && digits !== undefined ? value.toFixed(digits) : String(value);
}

function pair(q) {
  return `${num(q.p50, 1)} / ${num(q.p99, 1)} ms`;
}

function ago(iso) {
  if (!iso) return "–";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 60 ? `${s.toFixed(1)} s ago` : `${Math.round(s / 60)} min ago`;
}

function headers() {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function spark(series) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 24");
  const top = Math.max(1, ...series);
  const step = series.length > 1 ? 120 / (series.length - 1) : 0;
  const points = series.map((v, i) => `${(i * step).toFixed(1)},${(22 - (20 * v) / top).toFixed(1)}`);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
  return svg;
}

function cell(row, value, cls) {
  const td = el("td", value, cls);
  row.appendChild(td);
  return td;
}

function unlessFilled(body, text, columns) {
  if (body.children.length) return;
  const row = el("tr");
  cell(row, text, "muted").colSpan = columns;
  body.appendChild(row);
}

function drawModels(report) {
  const body = document.querySelector("#models tbody");
  body.replaceChildren();
  for (const m of report.models) {
    const r = m.recent;
    const row = el("tr");
    row.dataset.model = m.name;
    cell(row, m.name);
    cell(row, m.task);
    cell(row, m.device);
    const workers = cell(row, m.ready ? `${m.live_workers} up` : "down", m.ready ? "ok" : "down");
    workers.dataset.field = "workers";
    if (m.load_error) workers.title = m.load_error;
    cell(row, `${m.queue_depth} / ${m.bulk_queue_depth}`, "num").dataset.field = "queue";
    cell(row, r.requests, "num").dataset.field = "requests";
    cell(row, num(r.requests_per_s, 2), "num").dataset.field = "rate";
    cell(row, "").appendChild(spark(r.requests_series));
    cell(row, pair(r.latency_ms), "num").dataset.field = "latency";
    cell(row, pair(r.queue_ms), "num").dataset.field = "queue_ms";
    cell(row, pair(r.compute_ms), "num").dataset.field = "compute_ms";
    cell(row, num(r.mean_batch_size, 1), "num").dataset.field = "batch";
    const ratio = r.cache_hit_ratio === null ? "–" : `${(100 * r.cache_hit_ratio).toFixed(0)} %`;
    cell(row, ratio, "num").dataset.field = "cache";
    const codes = Object.entries(r.errors).map(([code, n]) => `${code} ${n}`);
    const errors = cell(row, codes.length ? codes.join(", ") : "none", codes.length ? "err" : "");
    errors.dataset.field = "errors";
    const bulk = r.lanes.bulk;
    const lane = cell(row, `${num(bulk.items_per_s, 1)}/s, wait ${num(bulk.wait_ms.p50, 0)} ms`, "num");
    lane.dataset.field = "bulk";
    lane.title = `interactive wait p50 ${num(r.lanes.interactive.wait_ms.p50, 1)} ms`;
    body.appendChild(row);
    if (m.load_error) {
      const why = el("tr");
      const td = cell(why, `${m.name} cannot load: ${m.load_error}`, "err");
      td.colSpan = 15;
      body.appendChild(why);
    }
  }
}

function drawWorkers(report) {
  const body = document.querySelector("#workers tbody");
  body.replaceChildren();
  for (const m of report.models) {
    for (const w of m.workers) {
      const row = el("tr");
      cell(row, m.name);
      cell(row, w.name);
      cell(row, w.host);
      cell(row, w.pid, "num");
      cell(row, w.device);
      cell(row, num(w.max_batch_size), "num");
      cell(row, num(w.last_batch), "num");
      cell(row, ago(w.last_beat));
      body.appendChild(row);
    }
  }
  unlessFilled(body, "no live worker", 8);
}

function drawJobs(report) {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  for (const job of report.jobs) {
    const row = el("tr");
    row.dataset.job = job.job_id;
    cell(row, job.job_id);
    cell(row, job.model);
    cell(row, job.status).dataset.field = "status";
    const progress = cell(row, "");
    if (job.progress) {
      const bar = el("span", null, "bar");
      const fill = el("span");
      fill.style.width = `${(100 * job.progress.done) / Math.max(1, job.progress.total)}%`;
      bar.appendChild(fill);
      progress.append(bar, `${job.progress.done}/${job.progress.total}`);
    } else {
      progress.textContent = "–";
    }
    cell(row, job.created_at ? new Date(job.created_at).toLocaleTimeString() : "–");
    const action = cell(row, "");
    if (job.status === "queued" || (job.status === "started" && job.progress)) {
      const button = el("button", "cancel");
      button.addEventListener("click", () => cancel(job.job_id));
      action.appendChild(button);
    }
    body.appendChild(row);
  }
  unlessFilled(body, "no async job yet", 6);
}

function say(problem) {
  const box = document.getElementById("problem");
  box.textContent = problem || "";
  box.hidden = !problem;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.error.code}: ${body.error.message}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function cancel(jobId) {
  const response = await fetch(`/jobs/${encodeURIComponent(jobId)}/cancel`, {
    method: "POST",
    headers: headers(),
  });
  say(response.ok ? "" : `cancel ${jobId}: ${await errorText(response)}`);
  await refresh();
}

async function refresh() {
  let response;
  try {
    response = await fetch("/status", { headers: headers(), cache: "no-store" });
  } catch {
    say("the gateway does not answer; retrying");
    return;
  }
  if (response.status === 401) {
    document.getElementById("key-form").hidden = false;
    say("this gateway needs an API key");
    return;
  }
  if (!response.ok) {
    say(`/status: ${await errorText(response)}`);
    return;
  }
  const report = await response.json();
  say("");
  const up = report.models.filter((m) => m.ready).length;
  const mib = (report.redis.used_bytes / 1048576).toFixed(1);
  document.getElementById("summary").textContent =
    `${up} of ${report.models.length} models up · Redis ${mib} MiB`;
  document.getElementById("window").textContent = `(last ${report.window_s / 60} min)`;
  document.getElementById("updated").textContent =
    `updated ${new Date(report.generated_at).toLocaleTimeString()}`;
  drawModels(report);
  drawWorkers(report);
  drawJobs(report);
  document.body.dataset.loaded = "true";
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_ITEM, document.getElementById("key").value.trim());
  document.getElementById("key-form").hidden = true;
  refresh();
});

refresh();
setInterval(refresh, POLL_MS);
