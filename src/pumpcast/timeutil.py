"""Bar durations and timestamps, shared by the simulator, ingestion and the store."""

from __future__ import annotations

import pandas as pd

from pumpcast.schema import ConfigError


def parse_interval(interval: str, field: str = "interval") -> int:
    """'1min', '5s', '1h' -> milliseconds; `field` names the setting in the error."""
    try:
        ms = int(pd.Timedelta(interval).total_seconds() * 1000)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{field} {interval!r}: not a duration; use e.g. 1min, 5s or 1h", field) from exc
    if ms <= 0:
        raise ConfigError(f"{field} {interval!r}: must be positive", field)
    return ms


def iso(ms: int) -> str:
    """Unix ms -> ISO-8601 UTC text."""
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").isoformat()
