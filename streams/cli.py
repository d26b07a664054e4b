"""``orchestrator``: the command line.

Every command prints one clear line, ``orchestrator: error: <message>``, on stderr and exits
non-zero on error (no traceback, unless ``ORCHESTRATOR_DEBUG=1``): status 2 for a bad setting
(``ConfigurationError``) or bad input (``ValidationError``), 1 when Kafka or a worker failed or
did not answer in time (``InfrastructureError``, ``RequestTimeoutError``) and for the other
errors of the project (no such task, ...). The broker comes from ``--broker`` or
``ORCHESTRATOR_BROKER``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from streams import schedule_commands
from streams.config import load_settings, read_config_file
from streams.domain.config_events import ANY, POLICY_KEYS, RATE_LIMITS
from streams.errors import (
    ConfigurationError,
    DuplicateTaskError,
    OrchestratorError,
    ValidationError,
)

Handler = Callable[[argparse.Namespace], int]

EXIT_FAILURE = 1
"""Kafka, a worker or the task: the command could not do its work."""
EXIT_USAGE = 2
"""A bad setting or bad input (as argparse uses 2 for bad arguments)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.handler is not _worker:
        # a client command reports Kafka's failures in its one error line, not in aiokafka's logs
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        status: int = args.handler(args)
    except (ConfigurationError, ValidationError) as exc:
        return _error(exc, EXIT_USAGE)
    except OrchestratorError as exc:
        return _error(exc, EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _is_kafka_error(exc):
            raise
        return _error(exc, EXIT_FAILURE, prefix="Kafka: ")
    return status


def _error(error: Exception, status: int, prefix: str = "") -> int:
    """Print ``error`` as one line on stderr and return ``status`` (with ORCHESTRATOR_DEBUG=1,
    raise it instead, traceback and all)."""
    if os.environ.get("ORCHESTRATOR_DEBUG"):
        raise error
    line = " ".join(str(error).split()) or type(error).__name__
    print(f"orchestrator: error: {prefix}{line}", file=sys.stderr)
    return status


def _is_kafka_error(exc: BaseException) -> bool:
    """An aiokafka error that escaped a command (a broker gone mid-``tail``, ...)."""
    from aiokafka.errors import KafkaError

    return isinstance(exc, KafkaError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator", description="Event-sourced task orchestrator on Apache Kafka."
    )
    parser.set_defaults(handler=lambda _args: _usage(parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    kafka = commands.add_parser("kafka", help="run a local Kafka broker (no Docker needed)")
    kafka.set_defaults(handler=lambda _args: _usage(kafka))
    kafka_commands = kafka.add_subparsers(metavar="ACTION")
    up = kafka_commands.add_parser(
        "up", help="fetch Kafka with Maven if needed, start it, wait until it serves"
    )
    up.add_argument(
        "--port", type=int, default=9092, help="client port on 127.0.0.1 (default 9092)"
    )
    up.add_argument("--data-dir", type=Path, default=None, help="log and state directory")
    up.add_argument(
        "--secure",
        action="store_true",
        help="SASL_SSL with SCRAM-SHA-512 users (admin, worker, producer, consumer) and ACLs; "
        "prints where their config files are",
    )
    up.add_argument(
        "--brokers",
        type=int,
        default=1,
        choices=[1, 3],
        help="1 (default), or 3: a KRaft cluster on ports PORT to PORT+5 (clients PORT to "
        "PORT+2, controllers PORT+3 to PORT+5), replication 3, min ISR 2; again: restarts the "
        "nodes that are down",
    )
    _acl_scope_options(up)
    up.set_defaults(handler=_kafka_up)
    status = kafka_commands.add_parser(
        "status", help="each node (up or down), and each topic's leaders and in-sync replicas"
    )
    status.add_argument("--data-dir", type=Path, default=None)
    status.add_argument(
        "--partitions", action="store_true", help="one line per partition, not per topic"
    )
    status.set_defaults(handler=_kafka_status)
    down = kafka_commands.add_parser("down", help="stop the local broker")
    down.add_argument("--data-dir", type=Path, default=None)
    down.set_defaults(handler=_kafka_down)

    worker = commands.add_parser("worker", help="run a worker: the fold agent and the HTTP API")
    _common_options(worker)
    worker.add_argument("--web-port", type=int, help="HTTP port (env ORCHESTRATOR_WEB_PORT)")
    worker.add_argument("--data-dir", help="state directory (env ORCHESTRATOR_DATA_DIR)")
    worker.add_argument(
        "--handlers",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE, which registers handlers (repeatable; env ORCHESTRATOR_HANDLERS)",
    )
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    worker.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=None,
        help="text, or json: one object per line (env ORCHESTRATOR_LOG_FORMAT; default text)",
    )
    worker.set_defaults(handler=_worker)

    submit = commands.add_parser("submit", help="create a task")
    _common_options(submit)
    submit.add_argument("task_type")
    submit.add_argument("platform")
    submit.add_argument("target")
    submit.add_argument("--depends-on", action="append", default=[], metavar="TASK_ID")
    submit.add_argument("--priority", type=int, default=5, help="1 (most urgent) to 10")
    submit.add_argument("--task-id", default=None)
    submit.add_argument(
        "--not-before",
        metavar="TIME",
        help="not ready before this ISO-8601 time with a time zone (Z or +02:00)",
    )
    submit.set_defaults(handler=_submit)
    schedule_commands.add_commands(commands, _common_options, _overrides)

    _task_commands(commands)

    show = commands.add_parser("status", help="print a task's status as JSON")
    _common_options(show)
    show.add_argument("task_id")
    show.set_defaults(handler=_status)

    result = commands.add_parser("result", help="print a completed task's result")
    _common_options(result)
    result.add_argument("task_id")
    result.set_defaults(handler=_result)
    limits = commands.add_parser("limits", help="each platform's rate-limit status")
    _common_options(limits)
    limits.add_argument("platforms", nargs="*", help="platforms (default: those in the config)")
    limits.add_argument("--json", action="store_true", help="print JSON")
    limits.set_defaults(handler=_limits)

    pause = commands.add_parser(
        "pause", help="hold a platform's dispatches for SECONDS (0 resumes)"
    )
    _common_options(pause)
    pause.add_argument("platform")
    pause.add_argument("seconds", type=float)
    pause.set_defaults(handler=_pause)

    tail = commands.add_parser("tail", help="print a topic's records, decoded")
    _common_options(tail)
    tail.add_argument("topic", help="task.events, task.ready, task.dispatch, task.completed, ...")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    tail.add_argument("--max", type=int, default=None, help="stop after this many records")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(handler=_tail)
    _projection_commands(commands)
    _config_commands(commands)
    _acl_commands(commands)
    return parser


def _acl_scope_options(parser: argparse.ArgumentParser) -> None:
    """Which orchestrator the ACLs are for (default: the settings' ``--config`` and env)."""
    parser.add_argument("--app-id", help="the orchestrator's app_id (default: the settings')")
    parser.add_argument("--topic-prefix", help="its topic_prefix (default: the settings')")
    parser.add_argument(
        "--consumer-group",
        default=None,
        help="the consumer principal's group (default: task-completed-consumer)",
    )


def _acl_commands(commands: Any) -> None:
    acl = commands.add_parser(
        "acl", help="the least-privilege ACLs of the worker, producer and consumer principals"
    )
    actions = acl.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "print",
        help="print the kafka-acls.sh commands that grant them on a cluster of your own",
        description=(
            "Prints one kafka-acls.sh --add command per principal and resource: the set "
            "`orchestrator kafka up --secure` applies to the local broker. Run them with an "
            "admin's credentials (--command-config)."
        ),
    )
    show.add_argument("--config", type=Path, help="JSON or TOML config file (app_id, prefix)")
    show.add_argument("--principal-worker", default="User:worker", metavar="PRINCIPAL")
    show.add_argument("--principal-producer", default="User:producer", metavar="PRINCIPAL")
    show.add_argument("--principal-consumer", default="User:consumer", metavar="PRINCIPAL")
    show.add_argument(
        "--bootstrap-server", help="put in the commands (default: the settings' brokers)"
    )
    show.add_argument(
        "--command-config", default="", metavar="FILE", help="an admin client's properties file"
    )
    _acl_scope_options(show)
    show.set_defaults(handler=_acl_print)


def _config_commands(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="settings that change at run time: rate limits, task policy defaults",
        description=(
            "Rate limits and the defaults of new tasks' policies, as events on "
            "orchestrator.config: every worker's scheduler and every client takes them from "
            "there, without a restart. A setting holds for a platform and a task type, or "
            "every one ('*'); the most specific one set wins."
        ),
    )
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    scope_help = "the platform it holds for (default: every one)"
    type_help = "the task type it holds for (default: every one)"
    names = "rate_limits (or <platform>_rate_limits), " + ", ".join(POLICY_KEYS)
    set_ = actions.add_parser("set", help="set a setting (takes effect at once)")
    _common_options(set_)
    set_.add_argument("name", help=names + "; task_timeout and retry_attempts are aliases")
    set_.add_argument("value", help="JSON (2, 0.5, '{\"limits\": [...]}') or a plain string")
    set_.add_argument("--platform", default=ANY, help=scope_help)
    set_.add_argument("--task-type", default=ANY, help=type_help)
    set_.set_defaults(handler=_config_set)
    unset = actions.add_parser("unset", help="remove a setting (the next less specific holds)")
    _common_options(unset)
    unset.add_argument("name")
    unset.add_argument("--platform", default=ANY, help=scope_help)
    unset.add_argument("--task-type", default=ANY, help=type_help)
    unset.set_defaults(handler=_config_set, value=None)
    show = actions.add_parser("show", help="the settings in force")
    _common_options(show)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_config_show)
    history = actions.add_parser("history", help="every change kept (30 days at least)")
    _common_options(history)
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    history.set_defaults(handler=_config_history)


def _task_commands(commands: Any) -> None:
    tasks = commands.add_parser(
        "tasks", help="list tasks, by status, platform or type (a page, sorted by id)"
    )
    _common_options(tasks)
    tasks.add_argument(
        "--status", help="a status, or several separated by commas (failed,cancelled)"
    )
    tasks.add_argument("--platform")
    tasks.add_argument("--task-type")
    tasks.add_argument("--limit", type=int, default=100, help="tasks per page, 1 to 1000")
    tasks.add_argument("--after", metavar="TASK_ID", help="start after this id (the next page)")
    tasks.add_argument("--json", action="store_true", help="print the page as JSON")
    tasks.set_defaults(handler=_tasks)

    cancel = commands.add_parser("cancel", help="cancel a task (and the tasks depending on it)")
    _common_options(cancel)
    cancel.add_argument("task_id")
    cancel.add_argument("--reason", default="cancelled by user")
    cancel.set_defaults(handler=_cancel)

    retry = commands.add_parser("retry", help="run a failed or cancelled task again")
    _common_options(retry)
    retry.add_argument("task_id")
    retry.set_defaults(handler=_retry)


def _projection_commands(commands: Any) -> None:
    until_help = "stop at this instant: ISO-8601 (UTC if it has no timezone) or epoch milliseconds"
    replay = commands.add_parser(
        "replay", help="fold task.events afresh: task status, audit timelines, platform stats"
    )
    _common_options(replay)
    replay.add_argument("--until", metavar="TIME", help=until_help)
    replay.add_argument(
        "--projection",
        action="append",
        default=[],
        choices=["status", "audit", "platforms"],
        help="build only this view (repeatable; default: all)",
    )
    replay.add_argument(
        "--out", type=Path, metavar="FILE", help="write the views as JSON to FILE ('-': stdout)"
    )
    replay.set_defaults(handler=_replay)

    audit = commands.add_parser("audit", help="a task's history: every record, in log order")
    _common_options(audit)
    audit.add_argument("task_id")
    audit.add_argument("--until", metavar="TIME", help=until_help)
    audit.add_argument("--json", action="store_true", help="print JSON")
    audit.set_defaults(handler=_audit)

    verify = commands.add_parser(
        "verify", help="compare the workers' live tasks table with a fresh fold of the log"
    )
    _common_options(verify)
    verify.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for every partition's worker"
    )
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(handler=_verify)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", help="Kafka bootstrap servers (env ORCHESTRATOR_BROKER)")
    parser.add_argument("--config", type=Path, help="JSON or TOML config file")
    parser.add_argument("--api-url", help="a worker's HTTP API (env ORCHESTRATOR_API_URL)")


def _settings(args: argparse.Namespace) -> Any:
    """The settings of ``args``, and for a command that reads Kafka itself, its login checked:
    a refused login is one clear line (the worker checks it in its own loop, a ``TaskManager``
    in ``start``)."""
    settings = _loaded(args)
    if settings.kafka.security_protocol != "PLAINTEXT" and args.handler is not _worker:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            return settings  # inside a running loop: its client checks the login
        asyncio.run(settings.kafka.check_login())
    return settings


def _loaded(args: argparse.Namespace) -> Any:
    """The settings of the config file and the options in ``args``, every key checked."""
    overrides = {
        key: value
        for key, value in (
            ("bootstrap_servers", args.broker),
            ("api_url", getattr(args, "api_url", None)),
            ("web_port", getattr(args, "web_port", None)),
            ("data_dir", getattr(args, "data_dir", None)),
            ("handlers", ",".join(getattr(args, "handlers", None) or []) or None),
        )
        if value is not None
    }
    return load_settings(file=args.config, overrides=overrides)


def _kafka_up(args: argparse.Namespace) -> int:
    from streams import localbroker

    scope = _acl_scope(args, None) if args.secure else None  # a bad setting: before starting
    info = localbroker.up(
        port=args.port, data_dir=args.data_dir, brokers=args.brokers, secure=args.secure
    )
    print(_describe(info))
    if len(info.nodes) > 1:
        print(_nodes(info))
        print(
            "workers and clients need: "
            f"ORCHESTRATOR_BROKER={info.bootstrap_servers} "
            f"ORCHESTRATOR_REPLICATION_FACTOR={info.replication_factor} "
            "(bootstrap_servers and replication_factor in a config file), "
            "before the topics are first created"
        )
    if scope is not None:
        from streams.acls import acl_set
        from streams.local_security import ADMIN, LocalSecurity, apply_acls

        security = LocalSecurity.of(info.data_dir)
        asyncio.run(apply_acls(security.connection(ADMIN, info.bootstrap_servers), acl_set(scope)))
        print(
            f"ACLs applied for the orchestrator {scope.orchestrator_id!r} (topic prefix "
            f"{scope.topic_prefix!r}, consumer group {scope.consumer_group!r}): "
            "orchestrator acl print shows them"
        )
    return 0


def _acl_scope(args: argparse.Namespace, config: Path | None) -> Any:
    from dataclasses import replace as with_values

    from streams.acls import DEFAULT_CONSUMER_GROUP, Scope

    values = {
        key: value
        for key, value in (("app_id", args.app_id), ("topic_prefix", args.topic_prefix))
        if value is not None
    }
    settings = load_settings(file=config, overrides=values)
    scope = Scope(settings.topic_prefix, settings.orchestrator_id, DEFAULT_CONSUMER_GROUP)
    if args.consumer_group:
        scope = with_values(scope, consumer_group=args.consumer_group)
    return scope


def _acl_print(args: argparse.Namespace) -> int:
    from streams.acls import Principals, acl_set, kafka_acls_commands

    scope = _acl_scope(args, args.config)
    principals = Principals(args.principal_worker, args.principal_producer, args.principal_consumer)
    for name, principal in (
        ("worker", principals.worker),
        ("producer", principals.producer),
        ("consumer", principals.consumer),
    ):
        if not principal.startswith("User:") or principal == "User:":
            raise ConfigurationError(f"--principal-{name} must be User:<name>, got {principal!r}")
    bootstrap = args.bootstrap_server or load_settings(file=args.config).bootstrap_servers
    print(
        f"# ACLs of the orchestrator {scope.orchestrator_id!r} (topic prefix "
        f"{scope.topic_prefix!r}); run each as a Kafka admin"
    )
    for command in kafka_acls_commands(acl_set(scope, principals), bootstrap, args.command_config):
        print(command)
    return 0


def _kafka_status(args: argparse.Namespace) -> int:
    from streams import localbroker
    from streams.partition_layout import read_layout, render

    info = localbroker.status(args.data_dir)
    if info is None:
        print("Kafka is not running (start it with: orchestrator kafka up)")
        return 1
    print(_describe(info))
    print(_nodes(info))
    running: Any = ",".join(node.address for node in info.nodes if node.is_running)
    if info.secure:  # read as the secure broker's admin
        from streams.local_security import ADMIN, LocalSecurity

        running = LocalSecurity.of(info.data_dir).connection(ADMIN, running)
    try:
        layout = asyncio.run(asyncio.wait_for(read_layout(running), 20.0))
    except (OSError, TimeoutError) as exc:
        print(f"cannot read the topics' partitions: {exc!r}")
        return 1
    lines = render(layout, every_partition=args.partitions)
    print(f"topics (leaders as node:partitions; controller: node {layout.controller_id}):")
    print("\n".join(lines) if lines else "  none yet")
    return 0


def _describe(info: Any) -> str:
    if len(info.nodes) > 1:
        up = sum(node.is_running for node in info.nodes)
        line = (
            f"Kafka {info.version}: a cluster of {len(info.nodes)} nodes, {up} up, at "
            f"{info.bootstrap_servers} (data dir {info.data_dir})"
        )
    else:
        line = (
            f"Kafka {info.version} is up at {info.bootstrap_servers} "
            f"(pid {info.pid}, log {info.log_file})"
        )
    if not info.secure:
        return line
    from streams.local_security import MECHANISM, PROTOCOL, SCRAM_USERS, LocalSecurity

    security = LocalSecurity.of(info.data_dir)
    files = "\n".join(f"  {name}: {security.config_file(name)}" for name in SCRAM_USERS)
    return (
        f"{line}\n{PROTOCOL} with {MECHANISM} and ACLs; CA certificate {security.ca_file}\n"
        "a config file per principal (--config FILE; its password is in a file next to it, "
        f"mode 0600):\n{files}"
    )


def _nodes(info: Any) -> str:
    return "\n".join(
        f"  node {node.node_id}  {node.address:<16} "
        + (f"up    pid {node.pid}" if node.is_running else f"DOWN  (last pid {node.pid})")
        + f"  log {node.log_file}"
        for node in info.nodes
    )


def _kafka_down(args: argparse.Namespace) -> int:
    from streams import localbroker

    stopped = localbroker.down(args.data_dir)
    print("Kafka stopped" if stopped else "Kafka was not running")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    settings = _settings(args)
    if args.log_format is not None:
        settings = replace(settings, log_format=args.log_format)
    config_file = Path(args.config) if args.config else None
    run_worker(settings, loglevel=args.loglevel, config_file=config_file)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from streams.client import TaskManager

    task = {
        "task_type": args.task_type,
        "platform": args.platform,
        "target": args.target,
        "dependencies": args.depends_on,
        "priority": args.priority,
        "task_id": args.task_id,
    }
    tm = TaskManager(_overrides(args))
    tm._new_task(**task, timeout=None, max_retries=None, retry_delay=None)  # before connecting
    not_before = (
        None
        if args.not_before is None
        else schedule_commands.instant(args.not_before, "--not-before")
    )

    async def submit() -> str:
        async with tm:
            if args.task_id is not None:
                await _refuse_existing(tm, args.task_id)
            try:
                return await tm.create_task(**task, not_before=not_before)
            except DuplicateTaskError as exc:
                raise DuplicateTaskError("submit", exc.reason, _exists(args.task_id)) from exc

    print(asyncio.run(submit()))
    return 0


async def _refuse_existing(tm: Any, task_id: str) -> None:
    """Raise if ``task_id`` is a task already: submitting it again would do nothing (the
    creation is idempotent), which would look like a success."""
    from streams.errors import TaskNotFoundError

    try:
        status = await tm.get_task_status(task_id)
    except TaskNotFoundError:
        return
    raise DuplicateTaskError("submit", "duplicate_task", _exists(task_id, status["status"]))


def _exists(task_id: str, status: str | None = None) -> str:
    known = f" (status {status})" if status else ""
    return f"task {task_id} already exists{known}; to run it again: orchestrator retry {task_id}"


def _tasks(args: argparse.Namespace) -> int:
    from streams.client import TaskManager, task_query

    task_query(args.status, args.platform, args.task_type, args.limit, args.after)  # first

    async def page() -> Any:
        async with TaskManager(_overrides(args)) as tm:
            return await tm.list_tasks(
                args.status, args.platform, args.task_type, args.limit, args.after
            )

    found = asyncio.run(page())
    if args.json:
        document = {"tasks": list(found), "next_after": found.next_after}
        print(json.dumps(document, indent=2, sort_keys=True))
        return 0
    print(_table(list(found), more=found.next_after is not None))
    if found.next_after is not None:
        print(f"more: orchestrator tasks ... --after {found.next_after}", file=sys.stderr)
    return 0


def _table(tasks: list[dict[str, Any]], more: bool = False) -> str:
    """The tasks as an aligned text table: id, status, platform, type, attempt, updated."""
    from datetime import UTC, datetime

    header = ("ID", "STATUS", "PLATFORM", "TYPE", "ATTEMPT", "UPDATED")
    rows = [
        (
            task["task_id"],
            task["status"],
            task["platform"],
            task["task_type"],
            f"{task['attempt']}/{task['max_attempts']}",
            datetime.fromtimestamp(task["updated_at_ms"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )
        for task in tasks
    ]
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    if not rows:
        lines.append("(none in this page)" if more else "(no tasks)")
    return "\n".join(lines)


def _cancel(args: argparse.Namespace) -> int:
    from streams.client import TaskManager

    _check_task_id(args.task_id)

    async def cancel() -> None:
        async with TaskManager(_overrides(args)) as tm:
            await tm.cancel_task(args.task_id, args.reason)

    asyncio.run(cancel())
    print(f"{args.task_id}: cancelled")
    return 0


def _retry(args: argparse.Namespace) -> int:
    from streams.client import TaskManager

    _check_task_id(args.task_id)

    async def retry() -> None:
        async with TaskManager(_overrides(args)) as tm:
            await tm.retry_task(args.task_id)

    asyncio.run(retry())
    print(f"{args.task_id}: retried (a new attempt: orchestrator status {args.task_id})")
    return 0


def _status(args: argparse.Namespace) -> int:
    from streams.client import TaskManager

    _check_task_id(args.task_id)

    async def status() -> dict[str, Any]:
        async with TaskManager(_overrides(args)) as tm:
            return await tm.get_task_status(args.task_id)

    print(json.dumps(asyncio.run(status()), indent=2, sort_keys=True))
    return 0


def _result(args: argparse.Namespace) -> int:
    from streams.client import TaskManager

    _check_task_id(args.task_id)

    async def result() -> Any:
        async with TaskManager(_overrides(args)) as tm:
            return await tm.get_task_result(args.task_id)

    value = asyncio.run(result())
    if isinstance(value, bytes):
        sys.stdout.buffer.write(value)
    else:
        print(json.dumps(value, indent=2, sort_keys=True))
    return 0


def _limits(args: argparse.Namespace) -> int:
    from streams.client import SmartScheduler

    async def fetch() -> dict[str, Any]:
        scheduler = SmartScheduler(_overrides(args))  # connects on first use: after validation
        try:
            names = args.platforms or scheduler.settings.limited_platforms
            return {name: await scheduler.limit_status(name) for name in names}
        finally:
            await scheduler.close()

    statuses = asyncio.run(fetch())
    if args.json:
        print(json.dumps(statuses, indent=2, sort_keys=True))
        return 0
    if not statuses:
        print("no platforms: name them, or pass a --config with <platform>_rate_limits keys")
    for name, status in statuses.items():
        windows = ", ".join(
            f"{w['remaining']}/{w['effective_calls']} left per {w['period_s']:g} s"
            for w in status["windows"]
        )
        held = status["held_by"]
        print(
            f"{name}: {windows or 'no rate limits'}; {status['in_flight']} running"
            f"{' of ' + str(status['max_concurrent']) if status['max_concurrent'] else ''}, "
            f"{status['pending']} queued, rate factor {status['rate_factor']:g}"
            f"{'; held: ' + held['reason'] + ' (' + held['detail'] + ')' if held else ''}"
        )
    return 0


def _pause(args: argparse.Namespace) -> int:
    from streams.client import SmartScheduler

    async def pause() -> None:
        scheduler = SmartScheduler(_overrides(args))  # connects on first use: after validation
        try:
            await scheduler.pause_platform(args.platform, args.seconds)
        finally:
            await scheduler.close()

    asyncio.run(pause())
    print(f"{args.platform}: " + (f"paused for {args.seconds:g} s" if args.seconds else "resumed"))
    return 0


def _config_set(args: argparse.Namespace) -> int:
    import time

    from streams.config import setting_value
    from streams.config_log import changed_by_cli, write_changes
    from streams.domain.config_events import ConfigChange, scope_problem

    settings = _settings(args)
    name, platform = args.name, args.platform
    if name.endswith("_rate_limits") and name != RATE_LIMITS:
        name, platform = RATE_LIMITS, name.removesuffix("_rate_limits")
    name = {"task_timeout": "default_timeout", "retry_attempts": "max_retries"}.get(name, name)
    problem = scope_problem(name, platform, args.task_type)
    if problem is not None:
        raise ConfigurationError(problem)
    value = None
    if args.value is not None:
        try:
            value = json.loads(args.value)
        except ValueError:
            value = args.value
        value = setting_value(name, platform, value)
    change = ConfigChange(
        name, platform, args.task_type, value, int(time.time() * 1000), changed_by_cli()
    )
    asyncio.run(write_changes(settings, [change]))
    shown = "unset" if value is None else json.dumps(value)
    print(f"{name} for platform {platform}, task type {args.task_type}: {shown}")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from streams.config_log import read_table

    table = asyncio.run(read_table(_settings(args)))
    rows = [
        {"name": name, "platform": platform, "task_type": task_type, "value": value}
        for (name, platform, task_type), value in sorted(table.values.items())
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("nothing set at run time: each worker's and client's own configuration holds")
    for row in [] if args.json else rows:
        print(
            f"{row['name']:<18} {row['platform']:<20} {row['task_type']:<20} "
            f"{json.dumps(row['value'])}"
        )
    return 0


def _config_history(args: argparse.Namespace) -> int:
    from streams.config_log import read_changes

    changes = asyncio.run(read_changes(_settings(args)))
    for change in sorted(changes, key=lambda c: c.at_ms):
        if args.json:
            print(json.dumps(change.as_dict()))
        else:
            shown = "unset" if change.value is None else json.dumps(change.value)
            print(
                f"{_iso(change.at_ms)} {change.name} platform={change.platform} "
                f"task_type={change.task_type} {shown} by {change.by}"
            )
    return 0


def _iso(at_ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _tail(args: argparse.Namespace) -> int:
    from streams.tail import tail

    return asyncio.run(tail(_settings(args), args.topic, args.from_beginning, args.max, args.json))


def _replay(args: argparse.Namespace) -> int:
    from projections.console import replay_command

    settings = _settings(args)
    until = _instant(args.until)
    return replay_command(settings.kafka, settings.topics.events, until, args.projection, args.out)


def _audit(args: argparse.Namespace) -> int:
    from projections.console import audit_command
    from streams.config_log import read_changes

    settings = _settings(args)
    until = _instant(args.until)
    changes = asyncio.run(read_changes(settings))  # the settings in force during its life
    return audit_command(
        settings.kafka, settings.topics.events, args.task_id, until, args.json, changes
    )


def _verify(args: argparse.Namespace) -> int:
    from projections.console import verify_command

    settings = _settings(args)
    events = settings.topics.events
    return verify_command(
        settings.kafka,
        events,
        settings.api_url,
        args.timeout,
        args.json,
        settings.api_token,
        settings.api_cafile,
    )


def _instant(text: str | None) -> Any:
    from projections.instants import parse_instant

    return parse_instant(text) if text is not None else None


def _check_task_id(task_id: str) -> None:
    from streams.domain.bounds import id_problem

    problem = id_problem("task_id", task_id)
    if problem is not None:
        raise ValidationError(problem)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The client's config: every key of the config file and the options given (the client
    reads the environment itself). Only keys given are passed: a task policy default that is
    not given comes from the run-time settings in force (``orchestrator config``)."""
    _loaded(args)  # every key checked, the file's and the options', before anything runs
    # (the login is checked by the client's start)
    values: dict[str, Any] = dict(read_config_file(args.config)) if args.config else {}
    values.update(
        (key, value)
        for key, value in (
            ("bootstrap_servers", args.broker),
            ("api_url", getattr(args, "api_url", None)),
        )
        if value is not None
    )
    return values
