"""The project's exceptions: one root, a branch per kind of failure.

Infrastructure errors say whether retrying can help (``retriable``), as aiokafka's do, so a caller
can tell "the broker is still starting" from "Java is not installed".
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigurationError(OrchestratorError):
    """A setting is missing or malformed; the message names the key."""


class UnauthorizedError(ConfigurationError):
    """A worker's HTTP API answered 401: this client has no ``api_token`` (or
    ``api_token_file``) or not the workers' one. Not retried: the configuration must change.
    The message names the URL, never the token."""

    def __init__(self, url: str, has_token: bool) -> None:
        given = "the api_token given is not the worker's" if has_token else "no api_token is set"
        super().__init__(
            f"the worker at {url} requires a bearer token and refused this client's: {given}"
            " (set ORCHESTRATOR_API_TOKEN or api_token_file)"
        )
        self.url = url


class UntrustedCertificateError(ConfigurationError):
    """A worker's HTTPS certificate failed this caller's verification: ``api_cafile`` is not
    the CA bundle that signed the workers' certificates (or the certificate does not name the
    host of the URL). Not retried: the configuration must change. The message names the URL."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"certificate verify failed for the worker at {url}: {reason} (set api_cafile, env"
            " ORCHESTRATOR_API_CAFILE, to the CA bundle that signed the workers' certificates)"
        )
        self.url = url


class ValidationError(OrchestratorError, ValueError):
    """A client call was given bad input; nothing was written."""


class SchemaError(OrchestratorError):
    """Bytes could not be decoded, or a value could not be encoded, with the Avro schemas."""


class UnknownSchemaError(SchemaError):
    """The message was written with a schema (or an event type) this reader does not know."""


class InfrastructureError(OrchestratorError):
    """Kafka, the local broker or a worker could not be reached or started.

    Attributes:
        retriable: True if the same call may succeed later without a change by the user.
    """

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class RequestTimeoutError(InfrastructureError):
    """A client call did not finish within ``request_timeout``; the message names the call and
    what it waited for. Always ``retriable``: a write that timed out may still be written when
    Kafka answers again (creating a task with the same ``task_id`` again is safe).

    Attributes:
        call: the client method, e.g. ``create_task``.
        timeout_s: the deadline it had, in seconds.
        waiting_for: what had not answered when the deadline passed.
    """

    def __init__(self, call: str, timeout_s: float, waiting_for: str) -> None:
        super().__init__(
            f"{call} did not finish within {timeout_s} s (request_timeout): {waiting_for}",
            retriable=True,
        )
        self.call = call
        self.timeout_s = timeout_s
        self.waiting_for = waiting_for

    def __reduce__(self) -> tuple[type[RequestTimeoutError], tuple[str, float, str]]:
        return type(self), (self.call, self.timeout_s, self.waiting_for)


class LocalBrokerError(InfrastructureError):
    """The local Kafka broker (``orchestrator kafka``) could not be fetched, started or stopped."""


class KafkaLoginError(InfrastructureError):
    """Kafka refused this client's login (SASL credentials or mechanism) or its TLS handshake.
    Not retried: the configuration must change. The message names the server, the protocol,
    the mechanism and the principal, never the password."""


class TaskNotFoundError(OrchestratorError, LookupError):
    """No task with that id is known to the worker that owns it."""


class EventRejectedError(OrchestratorError):
    """The fold refused the event a client call wrote (it is in the DLQ; nothing changed).

    Attributes:
        reason: the DLQ reason (``illegal_transition``, ``unknown_task``, ...).
        detail: the fold's explanation.
    """

    def __init__(self, call: str, reason: str, detail: str) -> None:
        super().__init__(f"{call} was refused ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


class UnconfirmedWriteError(InfrastructureError):
    """The event was written (Kafka acknowledged it) but the fold's verdict could not be read.

    The worker that owns the task did not answer in time (starting, restoring, a full disk).
    The event stands in the log and will be folded; repeating the call writes it again.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True)


class IllegalTransitionError(EventRejectedError):
    """The event is not allowed in the task's status (``start_task`` on a failed task, ...)."""


class UnknownTaskError(EventRejectedError, TaskNotFoundError):
    """The event is about a task that does not exist."""


class DuplicateTaskError(EventRejectedError):
    """``create_task`` with the id of a task that already exists."""


class ForgedEventError(EventRejectedError):
    """The event may only come from the orchestrator's own workers: an internal kind or
    source, or a report on an attempt a worker runs (``streams.domain.signatures``)."""


class BatchWriteError(OrchestratorError):
    """Some writes of a batch (``create_tasks``) were refused, or their verdict was not read;
    the others were applied.

    Attributes:
        task_ids: every task id of the batch, in the order given.
        errors: the error of each task that was not applied (an ``EventRejectedError`` or an
            ``UnconfirmedWriteError``), by task id; the tasks not named here were applied.
    """

    def __init__(self, call: str, task_ids: list[str], errors: dict[str, OrchestratorError]):
        shown = "; ".join(f"{task_id}: {error}" for task_id, error in list(errors.items())[:5])
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        super().__init__(f"{call}: {len(errors)} of {len(task_ids)} writes failed: {shown}{more}")
        self.task_ids = task_ids
        self.errors = errors


REJECTION_ERRORS: dict[str, type[EventRejectedError]] = {
    "illegal_transition": IllegalTransitionError,
    "unknown_task": UnknownTaskError,
    "duplicate_task": DuplicateTaskError,
    "forged": ForgedEventError,
}
"""The error a refused event raises in the client, by DLQ reason (others: the base class)."""


class ResultExpiredError(OrchestratorError):
    """The task completed, but its result is older than ``result_ttl`` and is no longer served."""


class ResultNotReadyError(OrchestratorError):
    """The task has not completed (yet), so it has no result."""
