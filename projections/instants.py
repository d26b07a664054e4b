"""Instants given on the command line (``--until``): ISO-8601 times or epoch milliseconds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from streams.errors import ValidationError

_MIN_EPOCH_MS_DIGITS = 11
"""Fewer digits than this is before 1973 in milliseconds, and most likely epoch *seconds*."""


@dataclass(frozen=True)
class Instant:
    """A point in time.

    Attributes:
        ms: Unix time in milliseconds.
        assumed_utc: True if the text had no timezone and was read as UTC.
    """

    ms: int
    assumed_utc: bool = False

    @property
    def iso(self) -> str:
        """The instant in ISO-8601, UTC, to the millisecond."""
        return iso_utc(self.ms)


def parse_instant(text: str) -> Instant:
    """The instant ``text`` names.

    Accepted: epoch milliseconds (``1764086400000``), or ISO-8601 with a timezone
    (``2025-11-25T16:00:00+01:00``, ``2025-11-25T15:00:00Z``) or without one, read as UTC
    (``2025-11-25T15:00:00``, ``2025-11-25``).

    Raises:
        ValidationError: anything else, with the accepted forms named.
    """
    value = text.strip()
    if value.isdigit():
        if len(value) < _MIN_EPOCH_MS_DIGITS:
            raise ValidationError(
                f"{text!r} looks like epoch seconds: give epoch milliseconds "
                f"({value}000) or an ISO-8601 time"
            )
        return Instant(int(value))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            f"{text!r} is not a time: give ISO-8601 (2025-11-25T15:00:00Z, or without a "
            "timezone for UTC) or epoch milliseconds (1764082800000)"
        ) from None
    assumed = moment.tzinfo is None
    if assumed:
        moment = moment.replace(tzinfo=UTC)
    return Instant(int(moment.timestamp() * 1000), assumed_utc=assumed)


def iso_utc(ms: int) -> str:
    """``ms`` (Unix milliseconds) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
