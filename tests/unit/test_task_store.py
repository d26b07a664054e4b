"""The tasks table's store: only committed writes reach RocksDB, with their checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.partitions import partition_of
from streams.task_store import CHECKPOINT_KEY, PartitionStore, TaskStore


def test_uncommitted_writes_are_read_but_not_stored(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.put(b"a", b"1")
    assert store.get(b"a") == b"1"
    store.close()  # a kill before the commit
    reopened = PartitionStore(tmp_path / "p0")
    assert reopened.get(b"a") is None
    assert reopened.checkpoint == 0


def test_a_commit_stores_the_writes_and_the_checkpoint_together(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.put(b"a", b"1")
    store.put(b"b", b"2")
    store.commit(17)
    store.put(b"a", b"3")  # the next transaction, never committed
    store.close()
    reopened = PartitionStore(tmp_path / "p0")
    assert (reopened.get(b"a"), reopened.get(b"b"), reopened.checkpoint) == (b"1", b"2", 17)


def test_a_commit_without_a_changelog_write_keeps_the_checkpoint(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.put(b"a", b"1")
    store.commit(5)
    store.commit(None)
    assert store.checkpoint == 5


def test_discard_forgets_the_aborted_writes(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.put(b"a", b"1")
    store.commit(1)
    store.put(b"a", b"2")
    store.put(b"b", b"9")
    store.discard()
    assert (store.get(b"a"), store.get(b"b")) == (b"1", None)


def test_items_merge_uncommitted_writes_and_hide_the_checkpoint(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.put(b"a", b"1")
    store.put(b"b", b"2")
    store.commit(3)
    store.put(b"b", b"20")
    store.put(b"c", b"30")
    assert sorted(store.items()) == [(b"a", b"1"), (b"b", b"20"), (b"c", b"30")]
    assert store.get(CHECKPOINT_KEY) is not None  # there, but never listed as a task


def test_restore_applies_changelog_records_and_tombstones(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.put(b"gone", b"x")
    store.commit(1)
    store.restore([(b"a", b"1"), (b"gone", None), (b"a", b"2")], 42)
    assert (store.get(b"a"), store.get(b"gone"), store.checkpoint) == (b"2", None, 42)


def test_the_table_finds_a_task_in_its_partition_and_only_when_open(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path, partitions=4)
    key = b"task-7"
    partition = partition_of(key, 4)
    store = tasks.database(partition)
    store.put(key, b"state")
    assert tasks.get(key) is None  # not open: this worker does not fold that partition
    tasks.open[partition] = store
    assert tasks.is_open(partition)
    assert tasks.get(key) == b"state"
    assert list(tasks.items()) == [(key, b"state")]


def test_partitions_agree_with_kafkas_default_partitioner() -> None:
    # values of Kafka's Java DefaultPartitioner (murmur2, positive, modulo) for 8 partitions
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"a", b"task-1", b"\xe2\x9c\x93 unicode", b"x" * 100):
        expected = DefaultPartitioner()(key, list(range(8)), list(range(8)))
        assert partition_of(key, 8) == expected


def test_wipe_starts_an_empty_database(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path, partitions=2)
    store = tasks.database(1)
    store.put(b"a", b"1")
    store.commit(9)
    tasks.open[1] = store
    fresh = tasks.wipe(1)
    assert (fresh.get(b"a"), fresh.checkpoint, tasks.is_open(1)) == (None, 0, False)
    tasks.close()


def test_objects_are_encoded_once_at_the_commit_and_read_through_before(tmp_path: Path) -> None:
    encoded: list[str] = []

    def encode(value: str) -> bytes:
        encoded.append(value)
        return value.encode()

    store = PartitionStore(tmp_path / "p0", encode)
    store.put(b"a", b"committed-a")
    store.commit(3)
    store.put_object(b"a", "a1")
    store.put_object(b"a", "a2")  # changed twice in one transaction
    store.put_object(b"b", "b1")
    assert store.get_object(b"a", bytes.decode) == "a2"
    assert store.get(b"b") == b"b1"  # a reader between two records sees the latest state
    assert dict(store.items()) == {b"a": b"a2", b"b": b"b1"}
    with pytest.raises(RuntimeError):
        store.commit(5)  # objects must be encoded (and sent to the changelog) first
    encoded.clear()
    assert store.encode_objects() == [(b"a", b"a2"), (b"b", b"b1")]
    assert encoded == ["a2", "b1"]  # once per key, the latest value only
    store.commit(5)
    assert (store.checkpoint, store.get(b"a"), store.objects) == (5, b"a2", {})


def test_objects_of_an_aborted_transaction_are_forgotten(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0", str.encode)
    store.put(b"a", b"committed")
    store.commit(1)
    store.put_object(b"a", "uncommitted")
    store.discard()
    assert store.get_object(b"a", bytes.decode) == "committed"
