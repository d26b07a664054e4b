"""Listing tasks: the query of ``GET /tasks`` (parsed and refused as the worker does), which
tasks a query matches, the compact items, pages merged from several workers, and the tasks
table scanned in id order after a cursor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.client import TaskPage, task_query
from streams.domain import Status, TaskState
from streams.domain.state import evolve
from streams.listing import (
    DEFAULT_LIMIT,
    ITEM_FIELDS,
    MAX_LIMIT,
    Part,
    TaskQuery,
    list_item,
    merge,
    parse_query,
    select,
)
from streams.state_codec import decode_state, encode_state
from streams.task_store import PartitionStore, TaskStore
from streams.web import status_document
from tests.unit import taskflow as tf


def test_no_parameter_lists_every_task_a_page_of_the_default_size() -> None:
    assert parse_query([]) == TaskQuery(limit=DEFAULT_LIMIT)


def test_every_parameter_is_read() -> None:
    query = parse_query(
        [
            ("status", "failed,cancelled"),
            ("platform", "linkedin"),
            ("task_type", "profile_scrape"),
            ("limit", "7"),
            ("after", "wf-1/fetch"),
            ("local", "1"),
        ]
    )
    assert query == TaskQuery(
        statuses=frozenset({Status.FAILED, Status.CANCELLED}),
        platform="linkedin",
        task_type="profile_scrape",
        limit=7,
        after="wf-1/fetch",
        local=True,
    )
    assert parse_query(query.params().items()) == query
    assert query.params(local=False).get("local") is None


def test_empty_values_mean_any() -> None:
    pairs = [("status", ""), ("platform", ""), ("task_type", ""), ("after", ""), ("limit", "")]
    assert parse_query(pairs) == TaskQuery()


def test_an_unknown_status_is_refused_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown status 'done'") as info:
        parse_query([("status", "failed,done")])
    for status in ("pending", "ready", "dispatched", "running", "retrying", "completed"):
        assert status in str(info.value)
    assert "failed, cancelled" in str(info.value)


@pytest.mark.parametrize("placeholder", ["awaited", "missing"])
def test_placeholders_are_no_status_to_list(placeholder: str) -> None:
    with pytest.raises(ValueError, match=f"unknown status '{placeholder}'"):
        parse_query([("status", placeholder)])


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "ten", "1.5", "1e3", " "])
def test_a_limit_outside_1_to_1000_is_refused(limit: str) -> None:
    with pytest.raises(ValueError, match=f"limit must be an integer from 1 to {MAX_LIMIT}"):
        parse_query([("limit", limit)])


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("state", "failed")], "unknown parameter 'state'; the parameters are status"),
        ([("status", "failed"), ("status", "ready")], "status is given twice"),
        ([("platform", "linked in")], "platform"),
        ([("task_type", "x" * 65)], "task_type"),
        ([("after", "../etc")], "after is the last task id of the previous page"),
        ([("local", "yes")], "local must be 1 or 0"),
    ],
)
def test_bad_parameters_are_refused_with_what_is_wrong(
    pairs: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_query(pairs)


def _task(task_id: str, status: Status, platform: str = "linkedin") -> TaskState:
    state = tf.state_in(status, task_id)
    assert state is not None
    return evolve(state, platform=platform)


def test_a_query_matches_by_status_platform_and_type() -> None:
    failed = _task("x", Status.FAILED)
    assert TaskQuery().matches(failed)
    assert TaskQuery(statuses=frozenset({Status.FAILED, Status.READY})).matches(failed)
    assert not TaskQuery(statuses=frozenset({Status.READY})).matches(failed)
    assert TaskQuery(platform="linkedin", task_type="profile_scrape").matches(failed)
    assert not TaskQuery(platform="twitter").matches(failed)
    assert not TaskQuery(task_type="content_analysis").matches(failed)
    awaited = tf.state_in(Status.AWAITED, "z")
    assert awaited is not None and not TaskQuery().matches(awaited)


def test_an_item_is_the_status_document_cut_to_its_fields() -> None:
    state = _task("x", Status.RUNNING)
    item = list_item(state)
    assert tuple(item) == ITEM_FIELDS
    document = status_document(state, 0)
    for name in ITEM_FIELDS:
        if name != "max_attempts":
            assert item[name] == document[name], name
    assert item["max_attempts"] == document["policy"]["max_attempts"]


def test_select_takes_the_first_matches_up_to_the_limit() -> None:
    states = [_task(f"t{i}", Status.FAILED if i % 2 else Status.READY) for i in range(10)]
    part = select(states, TaskQuery(statuses=frozenset({Status.FAILED}), limit=3))
    assert [item["task_id"] for item in part.tasks] == ["t1", "t3", "t5"]
    assert part.complete_to == "t5"


def test_select_that_reads_every_state_is_complete() -> None:
    states = [_task(f"t{i}", Status.READY) for i in range(4)]
    part = select(states, TaskQuery(statuses=frozenset({Status.FAILED})))
    assert part == Part([], None)


def test_select_stops_at_its_budget_and_says_how_far_it_read() -> None:
    states = [_task(f"t{i}", Status.FAILED if i == 8 else Status.READY) for i in range(10)]
    query = TaskQuery(statuses=frozenset({Status.FAILED}))
    assert select(states, query, budget=5) == Part([], "t4")
    assert select(states[5:], query, budget=5).tasks == [list_item(states[8])]


def _items(*ids: str) -> list[dict[str, Any]]:
    return [{"task_id": task_id} for task_id in ids]


def _ids(page: list[dict[str, Any]]) -> list[str]:
    return [item["task_id"] for item in page]


def test_parts_of_several_workers_merge_in_id_order_up_to_the_limit() -> None:
    page, after = merge([Part(_items("a", "d", "e"), "e"), Part(_items("b", "c"), None)], 4)
    assert (_ids(page), after) == (["a", "b", "c", "d"], "d")


def test_the_last_page_has_no_cursor() -> None:
    page, after = merge([Part(_items("a", "c"), None), Part(_items("b"), None)], 4)
    assert (_ids(page), after) == (["a", "b", "c"], None)


def test_a_page_stops_where_a_worker_stopped_reading() -> None:
    """The second worker read up to "c" only (its budget): "d" of the first worker may come
    after matches of the second that it has not read, so the page ends at "c" and the next
    one starts there."""
    parts = [Part(_items("a", "d"), None), Part(_items("b"), "c")]
    page, after = merge(parts, 10)
    assert (_ids(page), after) == (["a", "b"], "c")
    empty, after = merge([Part([], None), Part([], "m")], 10)
    assert (empty, after) == ([], "m")


def test_a_task_two_workers_list_during_a_rebalance_is_listed_once() -> None:
    page, _ = merge([Part(_items("a", "b"), None), Part(_items("b", "c"), None)], 10)
    assert _ids(page) == ["a", "b", "c"]


@settings(deadline=None, max_examples=200)
@given(
    ids=st.sets(st.integers(0, 999), max_size=60),
    workers=st.integers(1, 4),
    limit=st.integers(1, 12),
    budget=st.integers(1, 15),
)
def test_paging_through_every_worker_lists_each_match_once_in_order(
    ids: set[int], workers: int, limit: int, budget: int
) -> None:
    """However the tasks are spread over the workers, and whatever the page size and scan
    budget, following the cursors lists every match exactly once, in id order."""
    states = {
        f"t{i:03d}": _task(f"t{i:03d}", Status.FAILED if i % 3 else Status.READY) for i in ids
    }
    owned = [sorted(t for t in states if int(t[1:]) % workers == w) for w in range(workers)]
    query = TaskQuery(statuses=frozenset({Status.FAILED}), limit=limit)
    listed: list[str] = []
    for _ in range(len(ids) + 2):
        parts = [
            select(
                (states[t] for t in mine if query.after is None or t > query.after), query, budget
            )
            for mine in owned
        ]
        page, after = merge(parts, limit)
        listed += _ids(page)
        if after is None:
            break
        query = TaskQuery(statuses=query.statuses, limit=limit, after=after)
    assert listed == sorted(t for t, s in states.items() if s.status is Status.FAILED)


def test_the_store_scans_in_key_order_after_the_cursor_with_uncommitted_writes(
    tmp_path: Path,
) -> None:
    store = PartitionStore(tmp_path / "p0", encode_state)
    for key in (b"d", b"b", b"f"):
        store.put(key, b"stored-" + key)
    store.commit(1)
    store.put(b"c", b"written-c")  # uncommitted
    store.put(b"d", b"written-d")  # overwrites a stored one
    state = _task("e", Status.READY)
    store.put_object(b"e", state)  # kept as an object
    assert list(store.items_after(None)) == [
        (b"b", b"stored-b"),
        (b"c", b"written-c"),
        (b"d", b"written-d"),
        (b"e", state),
        (b"f", b"stored-f"),
    ]
    assert [key for key, _ in store.items_after(b"c")] == [b"d", b"e", b"f"]
    assert [key for key, _ in store.items_after(b"cc")] == [b"d", b"e", b"f"]
    store.delete(b"f")
    assert [key for key, _ in store.items_after(b"d")] == [b"e"]


def test_the_table_scans_every_open_partition_in_one_key_order(tmp_path: Path) -> None:
    table = TaskStore(tmp_path, 4, encode_state)
    ids = [f"task-{i:03d}" for i in range(40)]
    for task_id in ids:
        key = task_id.encode()
        partition = table.partition_of(key)
        table.open[partition] = table.database(partition)
        table.open[partition].put(key, encode_state(_task(task_id, Status.READY)))
    assert len(table.open) > 1
    scanned = [key.decode() for key, _ in table.items_after(None)]
    assert scanned == ids
    assert [key.decode() for key, _ in table.items_after(b"task-029")] == ids[30:]
    key, value = next(table.items_after(None))
    assert decode_state(value).task_id == key.decode()
    table.close()


def test_the_client_refuses_a_bad_query_before_asking() -> None:
    with pytest.raises(ValueError, match="unknown status 'done'"):
        task_query("done", None, None, 100, None)
    with pytest.raises(ValueError, match="limit must be an integer"):
        task_query(None, None, None, True, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="platform must be a non-empty string"):
        task_query(None, "", None, 100, None)
    assert task_query(["failed", "cancelled"], "x", None, 5, "t1") == TaskQuery(
        statuses=frozenset({Status.FAILED, Status.CANCELLED}), platform="x", limit=5, after="t1"
    )


def test_a_page_is_a_sequence_of_its_tasks() -> None:
    page = TaskPage(tuple(_items("a", "b")), next_after="b")
    assert len(page) == 2 and page[0] == {"task_id": "a"} and list(page) == _items("a", "b")
