"""Retry backoff: exponential in the attempt number, with jitter drawn from an event id.

The jitter comes from a hash of the failing event's id rather than a random generator, so the
fold stays a pure function and the chosen delay is still spread between tasks that failed at the
same moment. The delay is written into ``TaskRetryScheduled``.
"""

from __future__ import annotations

import hashlib

MAX_RETRY_DELAY_MS = 6 * 60 * 60 * 1000
JITTER_FRACTION = 0.25


def retry_delay_ms(base_delay_ms: int, failed_attempt: int, seed: str) -> int:
    """The delay before retrying after attempt ``failed_attempt`` (1-based) failed.

    ``base_delay_ms * 2 ** (failed_attempt - 1)``, plus up to ``JITTER_FRACTION`` of it, capped
    at ``MAX_RETRY_DELAY_MS``.
    """
    exponent = max(failed_attempt - 1, 0)
    backoff = base_delay_ms * (2 ** min(exponent, 32))
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    return min(int(backoff * (1 + JITTER_FRACTION * unit)), MAX_RETRY_DELAY_MS)
