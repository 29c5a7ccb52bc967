"""The flexorch page: one HTML document whose script reads ``/flexorch/api`` and redraws itself
every few seconds (no full reload). Three views by path: the overview (``/flexorch/``), one job
(``/flexorch/jobs/<dag>/<run>/<task>``) and one service (``/flexorch/services/<name>``). All text
from the API goes in through ``textContent``: nothing a job prints becomes markup."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>flexorch</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  :root { --fg: #1f2933; --muted: #61707f; --line: #d9dee3; --ok: #1b7f46; --bad: #b3261e; --warn: #a15c00;
          --bg: #ffffff; --head: #f4f6f8; }
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg);
         margin: 0; padding: 16px 24px; }
  h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
  .muted { color: var(--muted); } .ok { color: var(--ok); } .bad { color: var(--bad); } .warn { color: var(--warn); }
  table { border-collapse: collapse; width: 100%; margin-bottom: 8px; }
  th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
  th { background: var(--head); font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .bar { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; margin: 8px 0; }
  select { font: inherit; padding: 2px 4px; }
  pre { background: #0f1720; color: #e6edf3; padding: 8px 10px; overflow: auto; max-height: 360px; margin: 4px 0 12px;
        font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
  .pill { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; border: 1px solid currentColor; }
  a { color: #0b5cad; }
</style>
</head>
<body>
<h1>flexorch <span id="view-title" class="muted"></span></h1>
<div class="bar"><span id="status" class="muted">loading…</span></div>
<div id="root"></div>
<script>
"use strict";
const REFRESH_MS = 5000;
const ROOT = location.pathname.split("/flexorch")[0] + "/flexorch";
const VIEW = location.pathname.slice(ROOT.length).replace(/^\\/+/, "").split("/").map(decodeURIComponent);
const root = document.getElementById("root");
const filters = new URLSearchParams(location.search);
let logCursors = null, logs = {};

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v; else if (k === "href") e.href = v; else e.setAttribute(k, v);
  }
  for (const k of kids.flat()) e.append(k instanceof Node ? k : document.createTextNode(k === null || k === undefined ? "" : String(k)));
  return e;
}
function table(headers, rows, empty) {
  if (!rows.length) return el("p", {class: "muted"}, empty);
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map(h => el("th", {}, h)))),
            el("tbody", {}, rows.map(r => el("tr", {}, r.map(c => c instanceof Node ? el("td", {}, c) : el("td", {}, c))))));
}
function ago(s) { if (s === null || s === undefined) return ""; s = Math.round(s);
  return s < 90 ? s + "s" : s < 5400 ? Math.round(s / 60) + "m" : (s / 3600).toFixed(1) + "h"; }
function reading(r) {
  if (!r) return "";
  if (r.error) return el("span", {class: "bad", title: r.error}, "error: " + r.error);
  if (r.slow) return el("span", {class: "warn", title: r.slow}, "slow: " + r.slow);
  if (r.note) return el("span", {class: "muted"}, r.note);
  return el("span", {class: "muted"}, r.age_s === null ? "" : "read " + ago(r.age_s) + " ago");
}
function state(s, reason) {
  const cls = {running: "ok", succeeded: "ok", pending: "warn", failed: "bad", lost: "bad", timeout: "bad",
               cancelled: "bad", unknown: "warn", up: "ok", unreachable: "bad", down: "bad", "no-driver": "bad"}[s] || "muted";
  return el("span", {}, el("span", {class: "pill " + cls}, s || "?"), reason ? " " + reason : "");
}
async function get(path) {
  const r = await fetch(ROOT + "/api/" + path, {credentials: "same-origin", headers: {Accept: "application/json"}});
  if (!r.ok) throw new Error(r.status + " " + (await r.text()).slice(0, 300));
  return r.json();
}

function filterBar(data) {
  const opts = {target: new Set(), pool: new Set(), team: new Set()};
  for (const p of (data.pools.pools || [])) opts.pool.add(p.pool);
  for (const j of (Array.isArray(data.jobs) ? data.jobs : [])) { if (j.target) opts.target.add(j.target);
    if (j.gpu_pool) opts.pool.add(j.gpu_pool); if (j.team) opts.team.add(j.team); }
  for (const s of (Array.isArray(data.services) ? data.services : [])) opts.target.add(s.target);
  for (const t of ["local", "ssh", "slurm", "kubernetes"]) opts.target.add(t);
  const bar = el("div", {class: "bar"});
  for (const key of ["target", "pool", "team"]) {
    const current = filters.get(key) || "";
    if (current) opts[key].add(current);
    const sel = el("select", {id: "filter-" + key}, el("option", {value: ""}, "all"),
                   [...opts[key]].sort().map(v => { const o = el("option", {value: v}, v); if (v === current) o.selected = true; return o; }));
    sel.onchange = () => { if (sel.value) filters.set(key, sel.value); else filters.delete(key);
      history.replaceState(null, "", location.pathname + (filters.toString() ? "?" + filters : "")); refresh(); };
    bar.append(el("label", {}, key + " ", sel));
  }
  return bar;
}

function gibRange(mib) {  // as `flexorch gpus` prints it: whole GiB at least free, a range where GPUs differ
  if (!mib) return "";
  const [lo, hi] = mib.map(m => Math.floor(m / 1024) + "Gi");
  return lo === hi ? lo : lo + "-" + hi;
}

function poolsSection(p) {
  const out = [el("h2", {}, "GPU pools")];
  if (p.error) return [...out, el("p", {class: "bad"}, p.error)];
  for (const pool of p.pools) {
    out.push(el("h3", {}, pool.pool + " ", el("span", {class: "muted"}, "(" + pool.source + ", Airflow pool " + pool.airflow_pool + ") "),
                pool.total === null ? "" : pool.free + " of " + pool.total + " GPUs free ", reading(pool.reading)));
    out.push(table(["node", "state", "models", "GPUs free", "free memory per GPU", "GPUs"], pool.nodes.map(n => [
      n.name, state(n.state, n.detail), n.models.join(", "), el("span", {class: "num"}, n.free + " / " + n.total),
      gibRange(n.free_memory_per_gpu_mib),
      n.gpus.map(g => (g.busy ? "●" : "○") + g.index).join(" ")]), "no nodes read yet"));
  }
  if (!p.pools.length) out.push(el("p", {class: "muted"}, "no pools defined in " + p.file));
  return out;
}

function restarts(j) {
  return j.restarts ? el("span", {class: "warn", title: "recovered from the infrastructure in the same try, not counted in retries"},
                         "restart " + j.restarts + (j.restart_cause ? " (" + j.restart_cause + ")" : "")) : "";
}

function jobsSection(jobs) {
  const out = [el("h2", {}, "Jobs pending or running")];
  if (jobs.error) return [...out, el("p", {class: "bad"}, jobs.error)];
  out.push(table(["task", "target", "job", "where", "GPUs", "state", "elapsed", "owner / team"], jobs.map(j => [
    el("span", {}, el("a", {href: j.ti_url, target: "_top"}, j.dag_id + " / " + j.task_id + (j.map_index >= 0 ? " [" + j.map_index + "]" : "")),
       el("br"), el("span", {class: "muted"}, j.run_id)),
    j.choice ? el("span", {}, j.target || "", el("br"), el("span", {class: "muted"}, j.choice)) : (j.target || ""),
    j.job_id ? el("a", {href: j.view_url}, j.job_id) : "",
    j.where ? j.where.summary : "", j.gpus ? j.gpus + (j.gpu_pool ? " (" + j.gpu_pool + ")" : "") : "",
    el("span", {}, state(j.state, j.reason), " ", restarts(j), " ", j.reading ? reading(j.reading) : ""), ago(j.elapsed_s),
    [j.owner, j.team].filter(Boolean).join(" / ")]), "no flex job is pending or running"));
  return out;
}

function servicesSection(services) {
  const out = [el("h2", {}, "Services")];
  if (services.error) return [...out, el("p", {class: "bad"}, services.error)];
  out.push(table(["service", "target", "replicas (healthy / running / desired)", "revision", "replicas on", "read"], services.map(s => [
    el("a", {href: s.view_url}, s.service), s.target,
    s.deployed ? el("span", {class: s.healthy === s.desired ? "ok" : "warn"},
                    (s.healthy ?? "?") + " / " + (s.running ?? "?") + " / " + s.desired)
               : el("span", {class: "muted"}, "not deployed"),
    (s.revisions || []).join(", "),
    (s.replicas || []).map(r => r.slot + ": " + r.host + (r.healthy ? "" : " (" + (r.detail || r.state) + ")")).join("; ")
      + Object.entries(s.unreachable || {}).map(([h, why]) => "; " + h + " unreachable: " + why).join(""),
    reading(s.reading)]), "no services in the specs folder"));
  return out;
}

async function overview() {
  const data = await get("overview?" + filters);
  root.replaceChildren(filterBar(data), ...poolsSection(data.pools), ...jobsSection(data.jobs), ...servicesSection(data.services));
}

async function jobView(dag, run, task) {
  document.getElementById("view-title").textContent = "· job " + dag + " / " + task;
  const mi = filters.get("map_index");
  const j = await get("jobs/" + [dag, run, task].map(encodeURIComponent).join("/") + (mi ? "?map_index=" + mi : ""));
  const w = j.where || {};
  const rows = [["DAG / task", el("a", {href: j.ti_url, target: "_top"}, j.dag_id + " / " + j.task_id)], ["run", j.run_id],
    ["Airflow state", j.ti_state + " (try " + j.try_number + ")"], ["target", j.target || ""],
    ...(j.choice ? [["target choice", j.choice]] : []), ["job id", j.job_id || ""],
    ["where", w.summary || ""], ["state", state(j.state, j.reason)],
    ...(j.restarts ? [["restarts", restarts(j)]] : []), ["GPUs", j.gpus ?? ""], ["elapsed", ago(j.elapsed_s)],
    ["owner / team", [j.owner, j.team].filter(Boolean).join(" / ")]];
  for (const [k, v] of Object.entries(w)) if (k !== "summary" && typeof v !== "object") rows.push([k, String(v)]);
  root.replaceChildren(table(["", ""], rows, ""), el("h2", {}, "Last log lines"),
    j.log_error ? el("p", {class: "warn"}, j.log_error) : "", el("pre", {id: "job-log"}, (j.log_tail || []).join("\\n")));
}

async function serviceView(name) {
  document.getElementById("view-title").textContent = "· service " + name;
  const s = await get("services/" + encodeURIComponent(name));
  const q = logCursors ? "?cursor=" + encodeURIComponent(JSON.stringify(logCursors)) : "?tail=50";
  const l = await get("services/" + encodeURIComponent(name) + "/logs" + q);
  logCursors = l.cursors;
  for (const r of l.replicas) { const key = r.run_dir; logs[key] = ((logs[key] || []).concat(r.lines)).slice(-500); }
  const live = new Set(l.replicas.map(r => r.run_dir));
  root.replaceChildren(...servicesSection([s]), el("h2", {}, "Replica logs"), l.mask_note ? el("p", {class: "warn"}, l.mask_note) : "",
    ...l.replicas.flatMap(r => [el("h3", {}, "replica " + r.slot + " on " + r.host + " ", el("span", {class: "muted"}, r.run_dir)),
      r.error ? el("p", {class: "bad"}, r.error) : "", el("pre", {class: "replica-log"}, (logs[r.run_dir] || []).join("\\n"))]),
    live.size ? "" : el("p", {class: "muted"}, "no replica is running"));
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    if (VIEW[0] === "jobs" && VIEW.length >= 4) await jobView(VIEW[1], VIEW[2], VIEW[3]);
    else if (VIEW[0] === "services" && VIEW[1]) await serviceView(VIEW[1]);
    else await overview();
    status.textContent = "updated " + new Date().toLocaleTimeString() + " · refreshes every " + REFRESH_MS / 1000 + "s";
    status.className = "muted";
  } catch (e) {
    status.textContent = "could not update: " + e.message; status.className = "bad";
  }
}
let timer = null;
async function loop() { await refresh(); timer = setTimeout(loop, REFRESH_MS); }
loop();
</script>
</body>
</html>
"""
