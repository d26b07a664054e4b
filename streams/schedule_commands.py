"""The command line of delayed and periodic tasks: ``submit --not-before`` and
``orchestrator periodic add | list | remove`` (registered by ``streams.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from streams.errors import ValidationError

Overrides = Callable[[argparse.Namespace], dict[str, Any]]


def instant(text: str, option: str) -> datetime:
    """An ISO-8601 time with a time zone (``2026-01-01T09:00:00Z``, ``...+02:00``).

    Raises:
        ValidationError: not ISO-8601, or without a time zone (refused, not guessed).
    """
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValidationError(f"{option}: not an ISO-8601 time: {text!r}") from exc
    if value.tzinfo is None:
        raise ValidationError(
            f"{option}: {text!r} has no time zone: add Z (UTC) or an offset such as +02:00"
        )
    return value


def add_commands(
    commands: Any, common_options: Callable[[argparse.ArgumentParser], None], overrides: Overrides
) -> None:
    """Add ``periodic add | list | remove`` to the ``commands`` subparsers."""
    periodic = commands.add_parser("periodic", help="periodic definitions: add, list, remove")
    periodic.set_defaults(handler=lambda args: _usage(periodic))
    actions = periodic.add_subparsers(metavar="ACTION")

    add = actions.add_parser("add", help="define (or change) a periodic task")
    common_options(add)
    add.add_argument("name", help="1 to 100 characters of A-Z a-z 0-9 . _ : = + ~ -")
    add.add_argument("task_type")
    add.add_argument("platform")
    add.add_argument("target")
    schedule = add.add_mutually_exclusive_group(required=True)
    schedule.add_argument("--every", type=float, metavar="SECONDS", help="interval, >= 1")
    schedule.add_argument("--cron", metavar="EXPR", help='five fields, UTC: "*/5 * * * *"')
    add.add_argument("--start-at", metavar="TIME", help="ISO-8601 with a time zone")
    add.add_argument("--priority", type=int, default=5, help="1 (most urgent) to 10")
    add.set_defaults(handler=lambda args: _add(args, overrides))

    listing = actions.add_parser("list", help="every periodic definition")
    common_options(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=lambda args: _list(args, overrides))

    remove = actions.add_parser("remove", help="remove a periodic definition")
    common_options(remove)
    remove.add_argument("name")
    remove.set_defaults(handler=lambda args: _remove(args, overrides))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add(args: argparse.Namespace, overrides: Overrides) -> int:
    from streams.client import TaskManager

    start_at = None if args.start_at is None else instant(args.start_at, "--start-at")
    definition: dict[str, Any] = {
        "task_type": args.task_type,
        "platform": args.platform,
        "target": args.target,
        "every": None if args.every is None else timedelta(seconds=args.every),
        "cron": args.cron,
        "start_at": start_at,
        "priority": args.priority,
    }
    tm = TaskManager(overrides(args))
    tm._new_periodic(args.name, **definition)  # refuse bad input before connecting

    async def add() -> str:
        async with tm:
            return await tm.schedule_periodic(args.name, **definition)

    print(asyncio.run(add()))
    return 0


def _list(args: argparse.Namespace, overrides: Overrides) -> int:
    from streams.client import TaskManager

    async def fetch() -> list[dict[str, Any]]:
        async with TaskManager(overrides(args)) as tm:
            return await tm.list_periodic()

    definitions = asyncio.run(fetch())
    if args.json:
        print(json.dumps(definitions, indent=2, sort_keys=True))
        return 0
    for d in definitions:
        spec = d.get("periodic") or {}
        schedule = f"cron {spec.get('cron')}" if spec.get("cron") else f"every {_every(spec)}"
        nxt = (d.get("waiting_on") or {}).get("detail", "") if d["status"] == "periodic" else ""
        print(
            f"{d['name']}\t{d['status']}\t{schedule}\t{d['task_type']} on {d['platform']}\t"
            f"created {spec.get('occurrences', 0)}, skipped {spec.get('skipped', 0)}\t{nxt}"
        )
    return 0


def _every(spec: dict[str, Any]) -> str:
    return f"{int(spec.get('every_ms', 0)) / 1000:g} s"


def _remove(args: argparse.Namespace, overrides: Overrides) -> int:
    from streams.client import TaskManager

    async def remove() -> None:
        async with TaskManager(overrides(args)) as tm:
            await tm.cancel_periodic(args.name)

    asyncio.run(remove())
    print(f"removed periodic:{args.name}")
    return 0
