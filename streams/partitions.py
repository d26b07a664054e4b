"""The project's partitioner: every producer it builds places task records with it.

The rule itself is the pure core's (:mod:`streams.domain.placement`): a task lives on the
partition of its group (``group/name``) or, without a group, where Kafka's default partitioner
puts its id. faust's topic router uses the same function, so a read goes where the writes went.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from streams.domain.placement import misplaced, on_partition, partition_of

__all__ = ["misplaced", "on_partition", "partition_of", "partitioner"]


def partitioner(key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
    """aiokafka's (and faust's) ``partitioner`` interface over :func:`partition_of`.

    A record without a key goes to a random available partition, as with Kafka's default.
    """
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[partition_of(key, len(all_partitions))]
