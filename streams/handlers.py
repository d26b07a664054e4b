"""The handler registry: user coroutines that run dispatched tasks.

::

    from streams import handler, RateLimitedError

    @handler("profile_scrape", non_retryable=(ProfileGoneError,))
    async def scrape(task):
        await task.progress(0.5)
        if response.status == 429:
            raise RateLimitedError(retry_after_s=30)
        return {"followers": 1234}          # becomes the task's result

The worker imports the modules that register handlers: ``orchestrator worker --handlers my.module``.
A handler's return value is the result (bytes as they are, anything else as JSON); an exception
fails the attempt (retried while attempts remain), except :class:`NonRetryableError` and the
types listed in ``non_retryable``, which fail the task at once, and :class:`RateLimitedError`,
which pauses the platform and retries the task without spending an attempt, up to the task's
``max_rate_limited`` answers in a row (default 10: the answer that reaches it fails the task).

A handler runs until it returns, raises, reaches the attempt's timeout, or is cancelled: when
its task is cancelled (or otherwise ends elsewhere), and when the worker stops and the handler
has not finished within ``shutdown_grace`` (the attempt is then retried at once, elsewhere).
Cancellation arrives as :class:`asyncio.CancelledError` at the handler's current ``await``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from streams.errors import ConfigurationError, OrchestratorError


class RateLimitedError(OrchestratorError):
    """The platform answered "rate limited, retry after ``retry_after_s`` seconds".

    The attempt is not spent; ``max_rate_limited`` such answers in a row fail the task.
    """

    def __init__(self, retry_after_s: float = 60.0, message: str = "") -> None:
        super().__init__(message or f"rate limited, retry after {retry_after_s:g} s")
        self.retry_after_s = retry_after_s


class NonRetryableError(OrchestratorError):
    """Raise from a handler to fail the task at once, without retries."""


@dataclass(frozen=True)
class TaskContext:
    """What a handler gets: the task, and a way to report progress."""

    task_id: str
    task_type: str
    platform: str
    target: str
    attempt: int
    report_progress: Callable[[float], Awaitable[None]]
    dispatch_id: str = ""
    """The go-ahead this call runs under (unique per dispatch; a retry gets another)."""

    async def progress(self, fraction: float) -> None:
        """Report progress of this attempt, a fraction in [0, 1] that never decreases."""
        await self.report_progress(fraction)


HandlerFunction = Callable[[TaskContext], Awaitable[Any]]


@dataclass(frozen=True)
class Handler:
    """A registered handler and the exception types that must not be retried."""

    task_type: str
    function: HandlerFunction
    non_retryable: tuple[type[BaseException], ...] = ()

    def is_retryable(self, error: BaseException) -> bool:
        """False for errors that must fail the task at once."""
        return not isinstance(error, (NonRetryableError, *self.non_retryable))


_REGISTRY: dict[str, Handler] = {}


def handler(
    task_type: str, *, non_retryable: Iterable[type[BaseException]] = ()
) -> Callable[[HandlerFunction], HandlerFunction]:
    """Register the decorated coroutine function as the handler of ``task_type``.

    Raises:
        ConfigurationError: another handler is already registered for ``task_type``.
    """

    def register(function: HandlerFunction) -> HandlerFunction:
        existing = _REGISTRY.get(task_type)
        if existing is not None and existing.function is not function:
            raise ConfigurationError(f"a handler for task type {task_type!r} is already registered")
        _REGISTRY[task_type] = Handler(task_type, function, tuple(non_retryable))
        return function

    return register


def handler_for(task_type: str) -> Handler | None:
    """The handler registered for ``task_type``, if any."""
    return _REGISTRY.get(task_type)


def registered_task_types() -> frozenset[str]:
    """Task types that have a handler in this process."""
    return frozenset(_REGISTRY)


def load_handler_modules(modules: Iterable[str]) -> None:
    """Import the modules that register handlers.

    Raises:
        ConfigurationError: a module cannot be imported (the message says which and why).
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot import handler module {name!r}: {type(exc).__name__}: {exc}"
            ) from exc
