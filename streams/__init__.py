"""Discovery Orchestrator: an event-sourced task orchestrator on Apache Kafka.

The public names: ``TaskManager`` and ``SmartScheduler`` (``streams.client``), the handler
decorator ``handler`` with ``RateLimitedError`` and ``NonRetryableError`` (``streams.handlers``).
"""

from streams.handlers import NonRetryableError, RateLimitedError, TaskContext, handler

__all__ = ["NonRetryableError", "RateLimitedError", "TaskContext", "handler"]
