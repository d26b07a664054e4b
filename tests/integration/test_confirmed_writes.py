"""Client writes wait for the fold's verdict: a refused event raises, as the spec's pattern needs.

``try: await tm.start_task(id) except Exception as e: await tm.fail_task(id, str(e))`` only
works if ``start_task`` raises when the task cannot start.
"""

from __future__ import annotations

import uuid

import pytest

from streams.client import TaskManager
from streams.errors import (
    EventRejectedError,
    IllegalTransitionError,
    UnknownTaskError,
)


async def test_refused_writes_raise_with_the_folds_reason(client_config: dict[str, object]) -> None:
    async with TaskManager(client_config) as tm:
        task_id = await tm.create_task("profile_scrape", "linkedin", "ada")
        await tm.start_task(task_id)
        await tm.fail_task(task_id, "", retryable=False)  # any reason, empty included
        with pytest.raises(IllegalTransitionError, match="not allowed in status failed") as info:
            await tm.start_task(task_id)
        assert info.value.reason == "illegal_transition"

        done = await tm.create_task("profile_scrape", "linkedin", "bob")
        await tm.start_task(done)
        await tm.complete_task(done, {"followers": 1})
        with pytest.raises(IllegalTransitionError, match="TaskCompleted is not allowed"):
            await tm.complete_task(done, {"followers": 2})
        assert (await tm.get_task_result(done)) == {"followers": 1}  # the first one stands

        with pytest.raises(UnknownTaskError, match="does not exist"):
            await tm.start_task(f"ghost-{uuid.uuid4()}")
        running = await tm.create_task("profile_scrape", "linkedin", "cy")
        await tm.start_task(running)
        await tm.update_task_progress(running, 0.6)
        with pytest.raises(EventRejectedError, match="progress_out_of_range") as info:
            await tm.update_task_progress(running, 0.2)  # progress never goes down
        assert type(info.value) is EventRejectedError  # no subclass for this reason


async def test_an_unconfirmed_write_returns_at_once_and_is_still_refused(
    client_config: dict[str, object],
) -> None:
    async with TaskManager(client_config) as tm:
        task_id = await tm.create_task("profile_scrape", "linkedin", "eve")
        await tm.start_task(task_id)
        await tm.complete_task(task_id, {"ok": True})
        await tm.complete_task(task_id, {"ok": False}, confirm=False)  # no verdict asked
        status = await tm.get_task_status(task_id)
    assert status["status"] == "completed"
