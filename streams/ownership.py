"""A worker joins only its own orchestrator's consumer groups.

Groups, transactional ids and changelogs are named by the orchestrator id, ``topic_prefix``
followed by ``app_id`` (``streams.config.Settings.orchestrator_id``). Two different settings can
give one id: prefix ``a.`` with app id ``b``, and no prefix with app id ``a.b``. A worker of the
second would then resume from the first one's offsets in topics it does not read, fence its
producers and load its tables. So before it starts, a worker reads which topics the fold's and
the scheduler's groups have committed offsets for, and refuses to start if they are not its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaError

from streams.agents.fold import fold_group
from streams.agents.scheduler import scheduler_group
from streams.config import Settings
from streams.errors import ConfigurationError, InfrastructureError

COORDINATOR_WAIT_S = 30.0
"""How long a group's coordinator may take to appear (on a new cluster Kafka creates its
offsets topic when first asked)."""


async def _committed(admin: AIOKafkaAdminClient, group: str) -> dict[Any, Any]:
    deadline = time.monotonic() + COORDINATOR_WAIT_S
    while True:
        try:
            offsets: dict[Any, Any] = await admin.list_consumer_group_offsets(group)
            return offsets
        except GroupCoordinatorNotAvailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)  # the coordinator is being set up: ask again


async def check_own_groups(settings: Settings) -> None:
    """Refuse (one clear line) a worker that would join another orchestrator's groups.

    Raises:
        ConfigurationError: a group of this worker's orchestrator id holds offsets of topics
            this worker does not read: another orchestrator's settings give the same id.
        InfrastructureError: Kafka could not be asked.
    """
    topics = settings.topics
    wanted = {
        fold_group(settings.orchestrator_id): {topics.events},
        scheduler_group(settings.orchestrator_id): {topics.ready, topics.signals, topics.config},
    }
    admin = settings.kafka.admin()
    try:
        await admin.start()
        for group, own in wanted.items():
            offsets = await _committed(admin, group)
            foreign = {tp.topic for tp in offsets} - own
            if foreign:
                raise ConfigurationError(
                    f"consumer group {group} belongs to another orchestrator (it reads "
                    f"{', '.join(sorted(foreign))}; this worker reads {', '.join(sorted(own))}): "
                    f"topic_prefix {settings.topic_prefix!r} and app_id {settings.app_id!r} give "
                    f"the id {settings.orchestrator_id!r} of another orchestrator; choose another "
                    "app_id"
                )
    except KafkaError as exc:
        raise InfrastructureError(
            f"cannot read the consumer groups at {settings.kafka.describe()}: {exc}",
            retriable=True,
        ) from exc
    finally:
        await admin.close()
