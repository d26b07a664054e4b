"""Where a task lives: the partition of ``task.events`` (and of every table) that holds it.

A task id may name a group: ``group/name`` (one ``/``). Every task of a group lives on the
partition of its group, so the fold resolves a dependency between two of them in one step and
one transaction (:func:`streams.domain.apply_here`) instead of two trips through the log. An id
without ``/`` is placed as Kafka's default partitioner places a key (murmur2 of the whole key),
so placement is unchanged for every id that was valid before groups existed (``/`` was not).

Every producer the project builds writes task records with this placement
(``streams.partitions.partitioner``), and faust's topic router finds a task's worker with it,
so writes, reads and the fold agree. A record another producer put elsewhere is refused
(``wrong_partition``, see :func:`misplaced`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import lru_cache

GROUP_SEPARATOR = b"/"

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` (``org.apache.kafka.common.utils.Utils.murmur2``), as
    an unsigned 32-bit number."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    words = length // 4
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length - words * 4
    index = words * 4
    if tail == 3:
        h ^= data[index + 2] << 16
    if tail >= 2:
        h ^= data[index + 1] << 8
    if tail >= 1:
        h ^= data[index]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def placement_key(key: bytes) -> bytes:
    """The bytes that place ``key``: its group (before the first ``/``), or the whole key."""
    group, separator, _ = key.partition(GROUP_SEPARATOR)
    return group if separator else key


@lru_cache(maxsize=65_536)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition of task ``key`` among ``partitions`` (memoised: the fold checks the
    partition of every record it folds)."""
    return (murmur2(placement_key(key)) & 0x7FFFFFFF) % partitions


def on_partition(partition: int, partitions: int) -> Callable[[str], bool]:
    """Whether a task (by id) lives on ``partition`` of ``partitions``: what the fold and the
    replay pass to :func:`streams.domain.apply_here` as ``here``."""
    return lambda task_id: partition_of(task_id.encode(), partitions) == partition


def misplaced(key: bytes | None, partition: int, partitions: int) -> str | None:
    """Why a task record keyed ``key`` does not belong on ``partition`` (None if it does).

    A producer that does not place records as the project's producers do (another client's
    default partitioner, a grouped id placed by its whole key, an explicit partition) would
    split a task's history over two partitions, and reads would never find one of them.
    """
    if key is None:
        return None  # refused for its key anyway (key_mismatch)
    wanted = partition_of(key, partitions)
    if wanted == partition:
        return None
    placed_by = "its group" if GROUP_SEPARATOR in key else "its id"
    return (
        f"the task's records belong on partition {wanted} of {partitions} (placed by "
        f"{placed_by}, murmur2), not on {partition}"
    )
