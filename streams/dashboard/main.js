// The dashboard: polls the worker's API every POLL_MS and renders each section.
// URL parameters: task=ID selects a task; status, platform, task_type and limit set the
// list's filters. <body data-ready="true"> once a refresh rendered every section from
// answers that all succeeded; data-refreshes counts the refreshes.

import { getJSON, taskPath } from "./api.js";
import { dependencyGraph, sparkline } from "./charts.js";
import { bar, clock, facts, h, iso, relative, replace, statusBadge, text } from "./render.js";

const POLL_MS = 2000;
const DLQ_EVERY = 5; // refreshes between two reads of the DLQ's tail (a Kafka read each)
const SAMPLES = 60; // dispatch-rate samples kept per platform (2 minutes)
const GRAPH_NODES = 12; // dependencies (and dependents) looked up per side
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

const url = new URL(window.location.href);
const view = {
  filters: {
    status: url.searchParams.get("status") || "",
    platform: url.searchParams.get("platform") || "",
    task_type: url.searchParams.get("task_type") || "",
    limit: url.searchParams.get("limit") || "25",
  },
  after: null, // cursor of the page shown (null: the first)
  nextAfter: null,
  selected: url.searchParams.get("task") || null,
  timelineOf: null, // "id@updated_at_ms" of the timeline shown
  samples: new Map(), // platform -> [{t, dispatched, rate}]
  refreshes: 0,
  timer: null,
};

// -- platforms

function limitPerSecond(platform) {
  const rates = platform.windows.map((w) => w.effective_calls / w.period_s);
  return rates.length ? Math.min(...rates) : null;
}

function sample(platform, now) {
  const kept = view.samples.get(platform.platform) || [];
  const last = kept[kept.length - 1];
  let rate = 0;
  if (last && now > last.t && platform.dispatched >= last.dispatched) {
    rate = ((platform.dispatched - last.dispatched) * 1000) / (now - last.t);
  } // a count that went down: the platform moved to another worker, which counts anew
  kept.push({ t: now, dispatched: platform.dispatched, rate });
  while (kept.length > SAMPLES) kept.shift();
  view.samples.set(platform.platform, kept);
  return kept.slice(1);
}

function platformCard(platform, now) {
  const windows = platform.windows.map((w) => {
    const used = Math.max(0, w.effective_calls - w.remaining);
    const resets = w.remaining > 0 ? "a call may go now" : `next call ${clock(w.next_call_at_ms)} (${relative(w.next_call_at_ms, now)})`;
    return h("div", { class: "window", "data-testid": "limit-window", "data-window": `${w.calls}/${w.period_s}s` },
      h("span", { class: "window-name" }, `${w.calls} calls / ${w.period_s} s`),
      bar(used, w.effective_calls, `${used} of ${w.effective_calls} used`, "limit-bar"),
      h("span", { class: "muted" }, `${w.remaining} remaining · ${resets}`));
  });
  const cap = platform.max_concurrent;
  const held = platform.held_by;
  return h("article", { class: "card", "data-testid": "platform", "data-platform": platform.platform },
    h("h3", {}, platform.platform),
    windows.length ? windows : h("p", { class: "muted" }, "no rate limits"),
    h("div", { class: "window" }, h("span", { class: "window-name" }, "in flight"),
      cap ? bar(platform.in_flight, cap, `${platform.in_flight} of ${cap}`, "inflight-bar")
        : h("span", {}, `${platform.in_flight} (no cap)`)),
    h("dl", { class: "facts" }, facts([
      ["queue", `${platform.pending} ready`],
      ["rate factor", platform.rate_factor.toFixed(2)],
      ["paused", platform.paused_until_ms ? `until ${clock(platform.paused_until_ms)} (${relative(platform.paused_until_ms, now)})` : "no"],
      ["held by", held ? `${held.reason}${held.detail ? `: ${held.detail}` : ""}` : null],
    ])),
    sparkline(sample(platform, now), limitPerSecond(platform), 296, 64),
  );
}

async function loadPlatforms() {
  const answer = await getJSON("/platforms");
  if (!answer.ok) return answer;
  const { platforms, unserved, now_ms: now } = answer.data;
  replace(document.getElementById("platform-cards"),
    platforms.length ? platforms.map((p) => platformCard(p, now)) : h("p", { class: "muted" }, "No platform yet."));
  text("platforms-note", unserved.length ? `Partitions ${unserved.join(", ")} of task.ready are scheduled by no worker yet.` : "");
  return answer;
}

// -- the task list

function taskRow(task) {
  const selected = task.task_id === view.selected;
  const link = h("a", { href: selectHref(task.task_id), "data-testid": "task-link" }, task.task_id);
  link.addEventListener("click", (event) => { event.preventDefault(); select(task.task_id); });
  return h("tr", { "data-testid": "task-row", "data-task-id": task.task_id, class: selected ? "selected" : null },
    h("td", { class: "mono nowrap" }, link),
    h("td", {}, statusBadge(task.status)),
    h("td", {}, task.platform),
    h("td", {}, task.task_type),
    h("td", {}, `${task.attempt}/${task.max_attempts}`),
    h("td", {}, bar(task.progress, 1, `${Math.round(task.progress * 100)} %`, "progress-bar", "progress")),
    h("td", { "data-testid": "waiting-on" }, task.waiting_on_text || ""),
    h("td", { class: "error" }, task.last_error || ""),
    h("td", { title: iso(task.updated_at_ms) }, clock(task.updated_at_ms)));
}

async function loadTasks() {
  const answer = await getJSON("/tasks", { ...view.filters, after: view.after });
  if (!answer.ok) return answer;
  const { tasks, next_after: nextAfter } = answer.data;
  view.nextAfter = nextAfter;
  replace(document.getElementById("task-rows"),
    tasks.length ? tasks.map(taskRow) : h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No task matches.")));
  document.getElementById("next-page").disabled = !nextAfter;
  document.getElementById("first-page").disabled = !view.after;
  text("page-note", view.after ? `after ${view.after}` : "first page");
  return answer;
}

// -- one task

function selectHref(taskId) {
  const next = new URL(window.location.href);
  next.searchParams.set("task", taskId);
  return next.pathname + next.search;
}

function select(taskId) {
  view.selected = taskId;
  view.timelineOf = null;
  window.history.replaceState(null, "", selectHref(taskId));
  refreshSoon();
}

async function statusOf(ids) {
  const answers = await Promise.all(ids.slice(0, GRAPH_NODES).map((id) => getJSON(taskPath(id))));
  return ids.slice(0, GRAPH_NODES).map((id, i) => ({ id, status: answers[i].ok ? answers[i].data.status : answers[i].status === 404 ? "missing" : "?" }));
}

async function renderResult(task) {
  const box = document.getElementById("task-result");
  if (task.status !== "completed") { box.textContent = `none: the task is ${task.status}`; return; }
  if (!task.result_available) { box.textContent = task.result_expired ? "expired" : "none"; return; }
  const answer = await getJSON(taskPath(task.task_id, "/result"));
  if (!answer.ok) { box.textContent = `${answer.error}: ${answer.detail}`; return; }
  const bytes = Uint8Array.from(atob(answer.data.result_b64), (c) => c.charCodeAt(0));
  const type = answer.data.content_type || "";
  if (type.includes("json") || type.startsWith("text/")) {
    const decoded = new TextDecoder().decode(bytes);
    try { box.textContent = JSON.stringify(JSON.parse(decoded), null, 2); } catch { box.textContent = decoded; }
  } else {
    box.textContent = `${bytes.length} bytes of ${type || "application/octet-stream"}`;
  }
}

function timelineRow(entry, index) {
  const transition = entry.entered.length
    ? `${entry.status_before || "∅"} → ${entry.entered.join(" → ")}`
    : entry.status_before === entry.status_after ? (entry.status_after || "") : `${entry.status_before || "∅"} → ${entry.status_after || "∅"}`;
  const details = entry.verdict === "rejected" ? `${entry.reason}: ${entry.detail}` : entry.summary;
  return h("tr", { "data-testid": "timeline-entry", "data-kind": entry.kind, "data-verdict": entry.verdict, class: `verdict-${entry.verdict}` },
    h("td", {}, String(index + 1)),
    h("td", { title: iso(entry.occurred_at_ms || entry.timestamp_ms) }, clock(entry.occurred_at_ms || entry.timestamp_ms, true)),
    h("td", {}, entry.source),
    h("td", { class: "mono", "data-testid": "timeline-kind" }, entry.kind),
    h("td", {}, transition),
    h("td", {}, entry.verdict),
    h("td", { class: "summary" }, details),
    h("td", { class: "mono muted" }, entry.position));
}

function timelineNote(doc) {
  const scan = doc.scan;
  const read = `Read offsets ${scan.from_offset} to ${scan.read_to} of partition ${doc.partition} (${doc.scanned} records, at most ${scan.max_records}).`;
  if (doc.complete) return `${read} That is the whole partition: nothing is missing.`;
  const gaps = [];
  if (!scan.from_beginning) gaps.push(`records before offset ${scan.from_offset} (earlier than a minute before the task was first heard of) were not read`);
  if (scan.read_to < scan.partition_end) gaps.push(`the read stopped before the end (${scan.partition_end})`);
  const omitted = doc.omitted ? ` ${doc.omitted} entries in the middle are left out.` : "";
  return `${read} ${gaps.length ? `Not complete: ${gaps.join("; ")}; orchestrator audit reads it all.` : ""}${omitted}`;
}

async function renderTimeline(taskId) {
  const answer = await getJSON(taskPath(taskId, "/timeline"));
  if (!answer.ok) { text("timeline-note", `The timeline could not be read: ${answer.error}: ${answer.detail}`); return answer; }
  const doc = answer.data;
  const rows = doc.entries.map(timelineRow);
  if (doc.omitted && doc.omitted_after !== null) {
    rows.splice(doc.omitted_after, 0, h("tr", {}, h("td", { colspan: 8, class: "muted" }, `… ${doc.omitted} entries left out …`)));
  }
  replace(document.getElementById("timeline-rows"), rows);
  text("timeline-note", timelineNote(doc));
  return answer;
}

async function loadTask(now) {
  const taskId = view.selected;
  if (!taskId) return { ok: true };
  text("task-title", taskId);
  const answer = await getJSON(taskPath(taskId));
  if (!answer.ok) {
    text("task-note", answer.status === 404 ? `No task ${taskId} (never created, or retired from the table).` : `${answer.error}: ${answer.detail}`);
    document.getElementById("task-body").hidden = answer.status !== 404;
    if (answer.status !== 404) return answer;
    return renderTimeline(taskId); // a retired task still has its history in the log
  }
  const task = answer.data;
  text("task-note", "");
  document.getElementById("task-body").hidden = false;
  replace(document.getElementById("task-facts"), facts([
    ["status", statusBadge(task.status)],
    ["type · platform", `${task.task_type} · ${task.platform}`],
    ["target", task.target],
    ["priority", String(task.priority)],
    ["attempt", `${task.attempt} of ${task.policy.max_attempts}`],
    ["progress", bar(task.progress, 1, `${Math.round(task.progress * 100)} %`, "progress-bar", "progress")],
    ["waiting on", task.waiting_on_text],
    ["last error", task.last_error],
    ["created", `${clock(task.created_at_ms)} (${relative(task.created_at_ms, now)})`],
    ["updated", `${clock(task.updated_at_ms)} (${relative(task.updated_at_ms, now)})`],
  ]));
  const [dependencies, dependents] = await Promise.all([statusOf(task.dependencies), statusOf(task.dependents)]);
  replace(document.getElementById("task-graph"), dependencyGraph({ id: taskId, status: task.status }, dependencies, dependents, select));
  await renderResult(task);
  const version = `${taskId}@${task.updated_at_ms}`;
  if (view.timelineOf !== version || !TERMINAL.has(task.status)) {
    const timeline = await renderTimeline(taskId);
    if (!timeline.ok) return timeline;
    view.timelineOf = version;
  }
  return answer;
}

// -- the fold

async function loadFold() {
  const answer = await getJSON("/fold");
  if (!answer.ok) return answer;
  const { workers, commits, dlq, unserved } = answer.data;
  replace(document.getElementById("fold-rows"), workers.flatMap((w) => w.partitions.map((p) =>
    h("tr", { "data-testid": "fold-partition", "data-partition": p.partition },
      h("td", { class: "mono" }, w.worker), h("td", {}, String(p.partition)),
      h("td", {}, String(p.position)), h("td", {}, p.lag === null ? "?" : String(p.lag))))));
  replace(document.getElementById("fold-commits"), facts(Object.entries(commits).map(([k, v]) => [k, String(v)])));
  const reasons = Object.entries(dlq);
  replace(document.getElementById("dlq-reasons"), reasons.length ? facts(reasons.map(([k, v]) => [k, String(v)])) : h("dd", { class: "muted" }, "none"));
  text("fold-note", unserved.length ? `Partitions ${unserved.join(", ")} of task.events are folded by no worker yet.` : `${workers.length} worker(s) fold every partition.`);
  return answer;
}

async function loadDeadLetters() {
  const answer = await getJSON("/dlq", { limit: 20 });
  if (!answer.ok) return answer;
  const records = answer.data.records;
  replace(document.getElementById("dlq-rows"), records.length ? records.map((r) => h("tr", { "data-testid": "dlq-record" },
    h("td", { title: iso(r.timestamp_ms) }, clock(r.timestamp_ms)), h("td", { class: "mono" }, r.key ?? "(no key)"),
    h("td", {}, r.reason), h("td", { class: "summary" }, r.detail), h("td", { class: "mono muted" }, r.source || "")))
    : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "The DLQ is empty.")));
  return answer;
}

// -- the loop

function showProblems(problems) {
  const banner = document.getElementById("banner");
  if (!problems.length) { banner.hidden = true; banner.replaceChildren(); return; }
  const notReady = problems.some((p) => p.status === 503 || p.status === 0);
  banner.hidden = false;
  replace(banner,
    h("strong", {}, notReady ? "A worker is not ready (starting, rebalancing or restoring): the figures below may be stale. " : "Some figures could not be read. "),
    problems.map((p) => h("span", { class: "problem" }, `${p.what}: ${p.error} (${p.status || "no answer"}) ${p.detail}`)));
}

async function refresh() {
  const now = Date.now();
  const loads = [["platforms", loadPlatforms()], ["tasks", loadTasks()], ["fold", loadFold()], ["task", loadTask(now)]];
  if (view.refreshes % DLQ_EVERY === 0) loads.push(["dead letters", loadDeadLetters()]);
  const answers = await Promise.all(loads.map(([, p]) => p.catch((e) => ({ ok: false, status: -1, error: "script", detail: String(e) }))));
  const problems = answers.map((a, i) => ({ ...a, what: loads[i][0] })).filter((a) => !a.ok);
  showProblems(problems);
  view.refreshes += 1;
  document.body.dataset.refreshes = String(view.refreshes);
  text("updated", `updated ${clock(Date.now())} UTC`);
  if (!problems.length && document.body.dataset.ready !== "true") {
    document.body.dataset.ready = "true";
  }
}

async function loop() {
  view.timer = null;
  try { await refresh(); } finally { view.timer = window.setTimeout(loop, POLL_MS); }
}

function refreshSoon() {
  if (view.timer !== null) { window.clearTimeout(view.timer); loop(); }
}

function wireFilters() {
  const form = document.getElementById("filters");
  for (const [name, value] of Object.entries(view.filters)) form.elements[name].value = value;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const name of Object.keys(view.filters)) view.filters[name] = form.elements[name].value.trim();
    view.after = null;
    const next = new URL(window.location.href);
    for (const [name, value] of Object.entries(view.filters)) {
      if (value) next.searchParams.set(name, value); else next.searchParams.delete(name);
    }
    window.history.replaceState(null, "", next.pathname + next.search);
    refreshSoon();
  });
  document.getElementById("next-page").addEventListener("click", () => { if (view.nextAfter) { view.after = view.nextAfter; refreshSoon(); } });
  document.getElementById("first-page").addEventListener("click", () => { view.after = null; refreshSoon(); });
}

wireFilters();
loop();
