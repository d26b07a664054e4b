"""``orchestrator verify``: the live ``tasks`` table of the running workers against the log.

Each worker serves only its own partitions, so the table is read from every worker that owns a
partition of ``task.events``: the worker at ``api_url`` names them all (faust's
``/router/topics``), and each answers ``GET /state`` with its tasks and, per partition, the
offset of the last record its table reflects. The log is then folded up to exactly those
offsets (:func:`projections.replay.replay` with ``stop_offsets``), so a workload running
meanwhile cannot make the check racy: the two sides describe the same prefix of the log.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from projections.replay import ReplayResult, partition_count, replay
from projections.status import TaskStatusView
from projections.verify import Difference, compare
from streams import api_tls
from streams.auth import authorization
from streams.domain import state_to_dict
from streams.errors import InfrastructureError, UnauthorizedError
from streams.kafka_clients import KafkaConnection

RETRY_INTERVAL_S = 0.5


@dataclass(frozen=True)
class LiveTable:
    """The ``tasks`` table of every worker, put together.

    Attributes:
        workers: the HTTP APIs that answered.
        offsets: per partition, the offset of the last record the table reflects (-1: none).
        tasks: every task's state (``state_to_dict`` form), by id.
    """

    workers: tuple[str, ...]
    offsets: dict[int, int]
    tasks: dict[str, dict[str, Any]] = field(repr=False)


@dataclass(frozen=True)
class Verification:
    """The outcome of a verification: no difference means the live table is the log's fold."""

    live: LiveTable
    replayed: ReplayResult
    differences: list[Difference]


async def verify(
    kafka: KafkaConnection | str,
    topic: str,
    api_url: str,
    timeout_s: float = 60.0,
    token: str = "",
    cafile: str = "",
) -> Verification:
    """Compare the workers' live table with a fresh fold of ``topic`` up to the same offsets;
    the workers are asked with the HTTP API's bearer ``token``, if there is one, and an
    ``https://`` worker's certificate is verified with the CA bundle ``cafile`` (empty: the
    system's store).

    Raises:
        UnauthorizedError: a worker refused the token (or its lack).
        UntrustedCertificateError: a worker's certificate failed verification.
        InfrastructureError: a worker or Kafka cannot be reached, or some partition is served
            by no worker within ``timeout_s`` (no worker running, or a rebalance that lasts).
    """
    partitions = await partition_count(kafka, topic)
    live = await read_live_table(api_url, topic, partitions, timeout_s, token, cafile)
    stops = {p: offset + 1 for p, offset in live.offsets.items()}
    replayed = await replay(kafka, topic, projections=[TaskStatusView()], stop_offsets=stops)
    ours = {task_id: state_to_dict(state) for task_id, state in replayed.log.states.items()}
    return Verification(live, replayed, compare(ours, live.tasks))


async def read_live_table(
    api_url: str,
    topic: str,
    partitions: int,
    timeout_s: float = 60.0,
    token: str = "",
    cafile: str = "",
) -> LiveTable:
    """Every worker's part of the ``tasks`` table, once the workers cover all ``partitions``
    (``token`` and ``cafile`` as :func:`verify` takes them).

    Raises:
        UnauthorizedError, UntrustedCertificateError: as :func:`verify` raises them.
        InfrastructureError: no complete answer within ``timeout_s``; the message says what
            was missing.
    """
    deadline = time.monotonic() + timeout_s
    timeout = aiohttp.ClientTimeout(total=max(timeout_s, 1.0))
    headers = authorization(token)
    async with aiohttp.ClientSession(
        timeout=timeout, headers=headers, connector=api_tls.connector(cafile)
    ) as http:
        while True:
            table, problem = await _read_once(http, api_url, topic, partitions)
            if table is not None:
                return table
            if time.monotonic() >= deadline:
                raise InfrastructureError(
                    f"cannot read the whole live table within {timeout_s:g} s: {problem}",
                    retriable=True,
                )
            await asyncio.sleep(RETRY_INTERVAL_S)


async def _read_once(
    http: aiohttp.ClientSession, api_url: str, topic: str, partitions: int
) -> tuple[LiveTable | None, str]:
    try:
        workers = await _workers(http, api_url, topic)
        answers = [await _get(http, f"{worker}/state") for worker in workers]
    except (aiohttp.ClientError, TimeoutError) as exc:
        return None, f"a worker did not answer: {exc}"
    offsets: dict[int, int] = {}
    tasks: dict[str, dict[str, Any]] = {}
    for worker, (status, document) in zip(workers, answers, strict=True):
        if status != 200:
            return None, f"{worker} answered {status}: {document.get('detail', document)}"
        if offsets.keys() & {int(p) for p in document["offsets"]}:
            return None, "two workers claim the same partition (a rebalance is under way)"
        offsets.update({int(p): int(offset) for p, offset in document["offsets"].items()})
        tasks.update(document["tasks"])
    missing = sorted(set(range(partitions)) - offsets.keys())
    if missing:
        listed = ", ".join(map(str, missing))
        return None, f"partitions {listed} of {topic} are served by no worker that {api_url} knows"
    return LiveTable(tuple(workers), offsets, tasks), ""


async def _workers(http: aiohttp.ClientSession, api_url: str, topic: str) -> list[str]:
    """The HTTP APIs of the workers owning partitions of ``topic``, as ``api_url`` knows them."""
    base = api_url.rstrip("/")
    status, routes = await _get(http, f"{base}/router/topics")
    owners = (
        [host.rstrip("/") for host, topics in routes.items() if topics.get(topic)]
        if status == 200
        else []
    )
    return sorted(set(owners)) or [base]


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    try:
        async with http.get(url) as response:
            if response.status == 401:  # not retried: the token must change
                raise UnauthorizedError(url, "Authorization" in http.headers)
            document: dict[str, Any] = await response.json(content_type=None)
            return response.status, document
    except aiohttp.ClientConnectorCertificateError as exc:  # not retried: api_cafile must change
        raise api_tls.untrusted(url, exc) from exc
