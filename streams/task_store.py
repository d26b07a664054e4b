"""The ``tasks`` table: each task's state, one RocksDB database per partition of ``task.events``.

A partition's database only ever holds *committed* state. The fold's writes since the last
commit wait in memory (:attr:`PartitionStore.uncommitted`, read through by :meth:`get`); when
the partition's transaction commits they go to RocksDB in one atomic write batch, together
with the changelog offset they reach (the *checkpoint*). A store given an ``encode`` function
also keeps values as objects (:meth:`PartitionStore.put_object`): the fold keeps each task's
latest state decoded, and encodes it once per commit however often it changed
(:meth:`PartitionStore.encode_objects`), as Kafka Streams' record cache does. A worker killed
at any moment leaves a database that equals the changelog up to its checkpoint, so a restart
replays the changelog from there and nothing else: no write of an aborted transaction survives
in the table, and a new owner of the partition never needs the old owner's files.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rocksdict import Options, Rdict, WriteBatch

from streams.partitions import partition_of

log = logging.getLogger(__name__)

CHECKPOINT_KEY = b"\xff\xfe.checkpoint"
"""Where a database keeps its checkpoint. Not valid UTF-8, so no task id can be this key."""

WRITE_BUFFER_BYTES = 8 << 20
"""RocksDB memtable size per partition (its default, 64 MiB, times 8 partitions is too much)."""

FAULT_DISK_FULL_ENV = "ORCHESTRATOR_FAULT_INJECT_DISK_FULL"
"""A fault injection for tests, never set otherwise: while the file this variable names
exists, every write to the worker's stores (the tasks table, the scheduler's tables) fails as
on a full disk. Tests use it where they cannot mount a small tmpfs."""


def _key(item: tuple[bytes, Any]) -> bytes:
    return item[0]


def raise_if_disk_full_injected() -> None:
    """Raise ``OSError(ENOSPC)`` while the test hook :data:`FAULT_DISK_FULL_ENV` says so."""
    path = os.environ.get(FAULT_DISK_FULL_ENV)
    if path and os.path.exists(path):
        raise OSError(errno.ENOSPC, f"No space left on device (injected: {path} exists)")


class PartitionStore:
    """The tasks of one partition: committed state in RocksDB, uncommitted writes in memory."""

    def __init__(self, path: Path, encode: Callable[[Any], bytes] | None = None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(2)
        self._db = Rdict(str(path), options)
        self.uncommitted: dict[bytes, bytes | None] = {}
        self.objects: dict[bytes, Any] = {}
        """Values written as objects since the last commit, not encoded yet (newer than
        ``uncommitted``)."""
        self._encode = encode

    @property
    def checkpoint(self) -> int:
        """The changelog offset to restore from: everything before it is in the database."""
        stored = self._db.get(CHECKPOINT_KEY)
        return int(stored) if stored is not None else 0

    def get(self, key: bytes) -> bytes | None:
        """The task's latest state, uncommitted writes included (None: no such task)."""
        if key in self.objects:
            latest = self.objects[key]
            return None if latest is None else self._encoded(latest)
        if key in self.uncommitted:
            return self.uncommitted[key]
        value: bytes | None = self._db.get(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        """Store a new state; it reaches the database when the transaction commits."""
        self.objects.pop(key, None)
        self.uncommitted[key] = value

    def get_object(self, key: bytes, decode: Callable[[bytes], Any]) -> Any:
        """The latest value of ``key`` as an object (None: no such key); ``decode`` reads
        a stored one."""
        if key in self.objects:
            return self.objects[key]
        stored = self.get(key)
        return decode(stored) if stored is not None else None

    def put_object(self, key: bytes, value: Any) -> None:
        """Store a new value as an object: it is encoded once, when the transaction commits
        (None deletes the key)."""
        self.objects[key] = value

    def encode_objects(self) -> list[tuple[bytes, bytes | None]]:
        """Encode the values written as objects into :attr:`uncommitted`, for the commit;
        returns them (key, encoded value or None for a deletion), for the changelog."""
        encoded = [
            (key, None if value is None else self._encoded(value))
            for key, value in self.objects.items()
        ]
        self.uncommitted.update(encoded)
        self.objects = {}
        return encoded

    def _encoded(self, value: Any) -> bytes:
        if self._encode is None:
            raise TypeError("this store was given no encode function for objects")
        return self._encode(value)

    def delete(self, key: bytes) -> None:
        """Delete a key; the deletion reaches the database when the transaction commits."""
        self.objects.pop(key, None)
        self.uncommitted[key] = None

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every task of the partition, uncommitted writes included."""
        for key, value in self._db.items():
            if (
                not isinstance(key, bytes)
                or key == CHECKPOINT_KEY
                or key in self.uncommitted
                or key in self.objects
            ):
                continue
            yield key, value
        for key, pending in self.uncommitted.items():
            if pending is not None and key not in self.objects:
                yield key, pending
        for key, value in self.objects.items():
            if value is not None:
                yield key, self._encoded(value)

    def items_after(self, after: bytes | None) -> Iterator[tuple[bytes, Any]]:
        """The tasks with keys after ``after`` (None: all), in key order, uncommitted writes
        included; a value written as an object comes as that object, any other as bytes.

        Consume it without awaiting in between: the uncommitted writes are read as they are
        when it starts, the database as it is at its first step.
        """
        overlay: dict[bytes, Any] = {**self.uncommitted, **self.objects}
        pending = sorted(k for k in overlay if after is None or k > after)
        stored = (
            (key, value)
            for key, value in self._db.items(from_key=after)
            if isinstance(key, bytes)
            and key != CHECKPOINT_KEY
            and key not in overlay
            and (after is None or key > after)
        )
        written = ((key, overlay[key]) for key in pending if overlay[key] is not None)
        return heapq.merge(stored, written, key=_key)

    def commit(self, checkpoint: int | None) -> None:
        """The transaction committed: write its states (and the new checkpoint) atomically.

        Values written as objects must have been encoded (:meth:`encode_objects`) first: the
        checkpoint covers the changelog records of what is written.
        """
        if self.objects:
            raise RuntimeError("commit with values not encoded: call encode_objects first")
        batch = WriteBatch(raw_mode=True)
        for key, value in self.uncommitted.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if checkpoint is not None:
            batch.put(CHECKPOINT_KEY, str(checkpoint).encode())
        raise_if_disk_full_injected()
        self._db.write(batch)
        self.uncommitted = {}

    def discard(self) -> None:
        """The transaction was aborted (or fenced): forget its writes."""
        self.uncommitted = {}
        self.objects = {}

    def restore(self, records: list[tuple[bytes, bytes | None]], checkpoint: int) -> None:
        """Apply committed changelog records (a None value deletes) up to ``checkpoint``."""
        self.uncommitted = dict(records)
        self.commit(checkpoint)

    def close(self) -> None:
        """Close the database (uncommitted writes are dropped)."""
        self.uncommitted = {}
        self.objects = {}
        self._db.close()

    def abandon(self) -> None:
        """Close the database at once, after a failed write (uncommitted writes are dropped).

        RocksDB takes about a second (blocking the event loop) to close a database in error,
        unless its background work is cancelled first. What it acknowledged is in its log
        file (the next open replays it), so the flush that closing attempts is not needed:
        it fails (as the writes did, or "Shutdown in progress"), and that is ignored.
        """
        self.uncommitted = {}
        self.objects = {}
        with contextlib.suppress(Exception):
            self._db.cancel_all_background(False)
        with contextlib.suppress(Exception):
            self._db.close()


class TaskStore:
    """The tasks of the partitions this worker has open, looked up by task id."""

    def __init__(
        self, root: Path, partitions: int, encode: Callable[[Any], bytes] | None = None
    ) -> None:
        self.root = root
        self.partitions = partitions
        self.encode = encode
        """How the databases encode values written as objects (see ``PartitionStore``)."""
        self.open: dict[int, PartitionStore] = {}
        """The partitions the fold has open (owned and restored), with their databases."""
        self.failure: str | None = None
        """Why the last write to a database failed (a full disk, say), until one succeeds."""
        self._databases: dict[int, PartitionStore] = {}

    def partition_of(self, key: bytes) -> int:
        """The partition of ``task.events`` (and of this table) that holds ``key``."""
        return partition_of(key, self.partitions)

    def is_open(self, partition: int) -> bool:
        """Whether this worker has ``partition`` open (owned and restored)."""
        return partition in self.open

    def get(self, key: bytes) -> bytes | None:
        """The state of task ``key`` if its partition is open here, else None."""
        store = self.open.get(self.partition_of(key))
        return store.get(key) if store is not None else None

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every task of the open partitions."""
        for partition in sorted(self.open):
            yield from self.open[partition].items()

    def items_after(self, after: bytes | None) -> Iterator[tuple[bytes, Any]]:
        """The tasks of the open partitions with keys after ``after``, in key order (see
        :meth:`PartitionStore.items_after`)."""
        sources = [self.open[p].items_after(after) for p in sorted(self.open)]
        return heapq.merge(*sources, key=_key)

    def database(self, partition: int) -> PartitionStore:
        """``partition``'s database, opened on first use and kept open."""
        store = self._databases.get(partition)
        if store is None:
            path = self.root / f"p{partition}"
            store = self._databases[partition] = PartitionStore(path, self.encode)
        return store

    def reopen(self) -> None:
        """Close every database, so the next :meth:`database` opens it afresh.

        After a failed write (ENOSPC) RocksDB refuses all writes until it is reopened; the
        committed data is on disk, and what the failed write held is in the changelog.
        """
        self.open.clear()
        for store in self._databases.values():
            try:
                store.abandon()
            except Exception:  # a database in error may fail to close; it is dropped anyway
                log.warning("a task database did not close cleanly", exc_info=True)
        self._databases.clear()

    def wipe(self, partition: int) -> PartitionStore:
        """Delete ``partition``'s database and start an empty one (its changelog was replaced)."""
        self.open.pop(partition, None)
        store = self._databases.pop(partition, None)
        if store is not None:
            store.close()
        Rdict.destroy(str(self.root / f"p{partition}"))
        return self.database(partition)

    def close(self) -> None:
        """Close every database."""
        self.open.clear()
        for store in self._databases.values():
            store.close()
        self._databases.clear()
