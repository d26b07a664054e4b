"""The dashboard in a real browser: headless Chromium opens a real worker's ``/dashboard``.

A worker with the test handlers runs a small workload on a platform limited to 4 calls an
hour: a task with progress, one depending on it, one failing with markup in its error, one
more, then one held by the limit and one waiting on that one. The test waits until the page
says it rendered a full refresh (``data-ready``) with every task listed, then reads the
rendered DOM (through ``data-testid`` attributes) and saves a screenshot: under the test's
tmp dir always, and as ``docs/dashboard.png`` with ``UPDATE_SCREENSHOT=1``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streams.client import TaskManager
from streams.errors import IllegalTransitionError
from tests.integration.chromium import CHROMIUM, Page
from tests.integration.conftest import HANDLERS, PARTITIONS, REPO_ROOT, Cluster, platform

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install chromium; `make test` installs it)",
)

LIFECYCLE = ["TaskCreated", "TaskDispatched", "TaskStarted", "TaskProgress", "TaskCompleted"]
MARKUP = '<img src=x onerror="document.title=1">'


async def _wait_status(tm: TaskManager, task_id: str, done: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        status = await tm.get_task_status(task_id)
        if done(status):
            return status
        assert time.monotonic() < deadline, f"{task_id} stayed {status}"
        await asyncio.sleep(0.2)


def _terminal(status: dict[str, Any]) -> bool:
    return status["status"] in ("completed", "failed", "cancelled")


async def _workload(config: dict[str, Any], name: str, prefix: str) -> dict[str, str]:
    ids = {letter: f"{prefix}-{letter}" for letter in "abcdef"}
    async with TaskManager(config) as tm:
        await tm.create_task("slow", name, "in/ada", task_id=ids["a"], priority=1)
        await _wait_status(tm, ids["a"], _terminal)
        await tm.create_task("noop", name, "in/ada", dependencies=[ids["a"]], task_id=ids["b"])
        await _wait_status(tm, ids["b"], _terminal)
        await tm.create_task("fatal", name, MARKUP, task_id=ids["c"])
        await _wait_status(tm, ids["c"], _terminal)
        await tm.create_task("noop", name, "in/bob", task_id=ids["d"])
        await _wait_status(tm, ids["d"], _terminal)
        with pytest.raises(IllegalTransitionError):  # refused: a dead letter to show
            await tm.start_task(ids["d"])
        # the window's 4 calls are spent: e waits for the limit, f for e
        await tm.create_task("noop", name, "in/eve", task_id=ids["e"])
        await _wait_status(
            tm, ids["e"], lambda s: (s["waiting_on"] or {}).get("reason") == "rate_limit"
        )
        await tm.create_task("noop", name, "in/fay", dependencies=[ids["e"]], task_id=ids["f"])
        await _wait_status(tm, ids["f"], lambda s: s["status"] == "pending")
    return ids


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


RENDERED = """(() => {
  const all = (root, id) => [...root.querySelectorAll(`[data-testid="${id}"]`)];
  const one = (root, id) => root.querySelector(`[data-testid="${id}"]`);
  return {
    platforms: all(document, "platform").map((card) => ({
      name: card.dataset.platform,
      windows: all(card, "limit-window").map((w) => ({
        window: w.dataset.window,
        used: Number(one(w, "limit-bar").dataset.value),
        max: Number(one(w, "limit-bar").dataset.max),
        text: w.textContent,
      })),
      inflight: one(card, "inflight-bar") && one(card, "inflight-bar").textContent,
      chart: card.querySelector("svg.spark") !== null,
    })),
    rows: all(document, "task-row").map((row) => ({
      id: row.dataset.taskId,
      status: one(row, "status").textContent,
      progress: Number(one(row, "progress-bar").dataset.value),
      waiting: one(row, "waiting-on").textContent,
      text: row.textContent,
    })),
    title: one(document, "task-title").textContent,
    timeline: all(document, "timeline-entry").map((e) => ({
      kind: e.dataset.kind, verdict: e.dataset.verdict, at: e.lastElementChild.textContent,
    })),
    timelineNote: one(document, "timeline-note").textContent,
    graph: all(document, "graph-node").map((n) => n.dataset.taskId),
    result: one(document, "task-result").textContent,
    foldPartitions: all(document, "fold-partition").length,
    dlqReasons: one(document, "dlq-reasons").textContent,
    deadLetters: all(document, "dlq-record").map((r) => r.textContent),
    banner: one(document, "banner").hidden,
    images: document.images.length,
    documentTitle: document.title,
  };
})()"""


async def test_the_dashboard_shows_limits_tasks_and_a_timeline(
    bootstrap_servers: str, cluster: Cluster, tmp_path: Path
) -> None:
    name = platform("dash")
    limits = {"limits": [{"calls": 4, "period": 3600}, {"calls": 2, "period": 1}]}
    config = {f"{name}_rate_limits": {**limits, "max_concurrent": 2}}
    worker = cluster.start("dash", config, handlers=HANDLERS, default_timeout="30")
    client = {
        "bootstrap_servers": bootstrap_servers,
        "api_url": worker.api_url,
        "partitions": PARTITIONS,
        "read_timeout": 60.0,
        "topic_prefix": cluster.topic_prefix,
        **config,
    }
    ids = await _workload(client, name, f"dash-{uuid.uuid4().hex[:6]}")
    async with aiohttp.ClientSession() as http:
        served = await _get(http, f"{worker.api_url}/tasks/{ids['a']}/timeline")
        # the refusal is committed to the DLQ before the page first reads it
        deadline = time.monotonic() + 30
        while not (await _get(http, f"{worker.api_url}/dlq"))["records"]:
            assert time.monotonic() < deadline, "the refused start never reached the DLQ"
            await asyncio.sleep(0.2)

    async with Page(tmp_path / "chromium") as page:
        await page.navigate(f"{worker.api_url}/dashboard?task={ids['a']}")
        wanted = json.dumps(sorted(ids.values()))
        await page.wait_until(
            f"""location.pathname === "/dashboard" && document.body !== null
                && document.body.dataset.ready === "true"
                && document.querySelectorAll('[data-testid="timeline-entry"]').length > 0
                && {wanted}.every((id) => [...document.querySelectorAll(
                     '[data-testid="task-row"]')].some((row) => row.dataset.taskId === id))""",
            timeout_s=60,
            what="a full refresh listing every task of the workload, with a timeline",
        )
        shown = await page.evaluate(RENDERED)
        png = await page.screenshot()
        exceptions = list(page.exceptions)

    screenshot = tmp_path / "dashboard.png"
    screenshot.write_bytes(png)
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, REPO_ROOT / "docs" / "dashboard.png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000, screenshot

    assert exceptions == []
    assert shown["banner"] is True, "a problem banner is shown"

    # the platform's limit bars: the hour window spent (4 of 4), the second window present
    cards = {card["name"]: card for card in shown["platforms"]}
    windows = {w["window"]: w for w in cards[name]["windows"]}
    assert windows["4/3600s"]["used"] == 4 and windows["4/3600s"]["max"] == 4
    assert "0 remaining" in windows["4/3600s"]["text"]
    assert "next call" in windows["4/3600s"]["text"]
    assert windows["2/1s"]["max"] == 2
    assert cards[name]["inflight"].endswith("of 2") and cards[name]["chart"]

    # the task list: every task of the workload, with its status and why it waits
    rows = {row["id"]: row for row in shown["rows"]}
    assert set(ids.values()) <= set(rows)
    assert {rows[ids[x]]["status"] for x in "abd"} == {"completed"}
    assert rows[ids["a"]]["progress"] == 1.0
    assert rows[ids["c"]]["status"] == "failed"
    assert rows[ids["e"]]["status"] == "ready"
    assert rows[ids["e"]]["waiting"].startswith("held by a rate limit")
    assert rows[ids["f"]]["waiting"] == f"waiting for 1 dependency: {ids['e']}"
    # user input is shown as text, never as markup
    assert MARKUP in rows[ids["c"]]["text"]
    assert shown["images"] == 0 and shown["documentTitle"] == "Discovery Orchestrator"

    # one task: its timeline from the log, in log order, its dependent and its result
    assert shown["title"] == ids["a"]
    kinds = [entry["kind"] for entry in shown["timeline"]]
    assert kinds == [entry["kind"] for entry in served["entries"]]
    assert kinds[0] == "TaskCreated"
    remaining = iter(kinds)
    assert all(kind in remaining for kind in LIFECYCLE), kinds  # in this order
    positions = [tuple(map(int, entry["at"].split(":"))) for entry in shown["timeline"]]
    assert positions == sorted(positions)
    assert all(entry["verdict"] != "rejected" for entry in shown["timeline"])
    assert "Read offsets" in shown["timelineNote"]
    assert set(shown["graph"]) == {ids["a"], ids["b"]}
    assert json.loads(shown["result"]) == {"attempt": 1}
    assert shown["foldPartitions"] == PARTITIONS
    assert "illegal_transition" in shown["dlqReasons"]
    assert any(ids["d"] in text and "illegal_transition" in text for text in shown["deadLetters"])
