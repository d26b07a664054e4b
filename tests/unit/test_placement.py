"""Placement of tasks on partitions: Kafka's murmur2, groups, and records put elsewhere."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as kafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from streams.domain.placement import misplaced, murmur2, partition_of
from streams.partitions import partitioner


@given(st.binary(max_size=300))
def test_murmur2_is_kafkas(data: bytes) -> None:
    assert murmur2(data) & 0x7FFFFFFF == kafka_murmur2(data) & 0x7FFFFFFF


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@=+~-]{0,40}", fullmatch=True))
def test_an_id_without_a_group_is_placed_as_kafkas_default_partitioner_places_it(
    task_id: str,
) -> None:
    key = task_id.encode()
    assert partition_of(key, 8) == (kafka_murmur2(key) & 0x7FFFFFFF) % 8


def test_every_task_of_a_group_is_on_the_partition_of_its_group() -> None:
    partitions = {partition_of(f"wf-42/step-{i}".encode(), 8) for i in range(50)}
    assert partitions == {partition_of(b"wf-42", 8)}


def test_the_producers_partitioner_places_as_partition_of() -> None:
    assert partitioner(b"wf-7/a", list(range(12)), []) == partition_of(b"wf-7", 12)
    assert partitioner(None, [0, 1, 2], [2]) == 2  # no key: an available partition


def test_a_record_on_another_partition_is_misplaced_and_says_where_it_belongs() -> None:
    key = b"wf-42/fetch"
    home = partition_of(key, 8)
    assert misplaced(key, home, 8) is None
    problem = misplaced(key, (home + 1) % 8, 8)
    assert problem is not None
    assert f"belong on partition {home} of 8" in problem and "its group" in problem
