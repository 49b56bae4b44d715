"""What a pump event is, for every part that labels, scores or judges one: when it starts and is under way,
the per-step labels the pump head learns, alarm runs and the spans an alarm is judged in.

Conventions (steps are bar indices of one token; A = the steps in DETECT_AFTER_MS, 2 at 1-minute bars, 8 at
15-second bars; K = the pump horizon):
- a pump "starts" at its event start (the first surge bar for synthetic pumps, the announced minute for real
  ones) and is "under way" from its start to its peak (real events, whose peak is unknown: REAL_PEAK_MS);
- an alarm is a run of consecutive steps whose score reaches the threshold, counted once, at its first step;
- an event is detected if an alarmed step falls in [start - K, start + A]; an early warning if one falls in
  [start - K, start - 1]; the delay is the first such step minus the start (negative = early);
- a false alarm is an alarm that begins outside every event's [start - K, end] (end = start + A at least).
The spans after a start are times, so that a 15-second bar series is judged as its 1-minute bars would be.
The numbers computed from these (recall, false alarms per day, AUPRC, ...) are in metrics.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pumpcast.schema import Event, TokenSeries

PUMP = "pump_and_dump"
REAL_PEAK_MS = 5 * 60_000  # real pumps peak within about 1-5 minutes of the announcement
DETECT_AFTER_MS = 2 * 60_000  # an alarm up to 2 minutes after the start still detects the event
#: The pump head's outputs: a pump starts within K steps, one is under way, either of the two.
PUMP_TARGETS = ("soon", "now", "any")
ANY = PUMP_TARGETS.index("any")  # the column of "either": what AUPRC and the baselines' labels use


def steps_in(ms: int, interval_ms: int) -> int:
    """Bars of interval_ms that a span of ms covers (at least 1)."""
    return max(1, -(-int(ms) // int(interval_ms)))


def is_real(source: str) -> bool:
    """Whether a token's source is real market data (anything the simulator did not write)."""
    return not source.startswith("synthetic")


def judged_kind(tokens: Sequence[TokenSeries]) -> list[TokenSeries]:
    """The tokens alarm thresholds are chosen on: the real ones when any of them has a pump (a threshold must
    suit the kind of data it will judge, and real markets are not synthetic ones), else all."""
    real = [t for t in tokens if is_real(t.source)]
    return real if any(pump_events(t.events) for t in real) else list(tokens)


def pump_events(events: Sequence[Event]) -> list[Event]:
    return [e for e in events if e.type == PUMP]


def pump_labels(n_steps: int, events: Sequence[Event], horizon: int, interval_ms: int = 60_000) -> np.ndarray:
    """(T, len(PUMP_TARGETS)) float32: [a pump starts within the next `horizon` steps, a pump is under way,
    either], for bars of interval_ms."""
    soon = np.zeros(n_steps, dtype=bool)
    now = np.zeros(n_steps, dtype=bool)
    for e in pump_events(events):
        soon[max(0, e.start - horizon) : max(0, e.start)] = True  # steps t with start in (t, t + horizon]
        peak = e.peak if e.peak >= e.start else e.start + steps_in(REAL_PEAK_MS, interval_ms) - 1
        now[max(0, e.start) : min(n_steps, peak + 1)] = True
    return np.stack([soon, now, soon | now], axis=1).astype(np.float32)


def alarm_onsets(alarmed: np.ndarray) -> np.ndarray:
    """Steps where a run of alarmed steps begins."""
    a = np.asarray(alarmed, dtype=bool)
    return np.flatnonzero(a & ~np.concatenate([[False], a[:-1]]))


def event_span(e: Event, horizon: int, interval_ms: int) -> tuple[int, int, int]:
    """(first step that detects, last step that detects, last step that is not a false alarm)."""
    after = steps_in(DETECT_AFTER_MS, interval_ms)
    return e.start - horizon, e.start + after, max(e.end, e.start + after)


@dataclass
class TokenScores:
    """One token's per-step scores over the steps it is evaluated on, with its pump events."""

    token_id: int
    scores: np.ndarray  # (T,), NaN where not evaluated (no full window yet, or outside the split)
    events: list[Event]
    steps_per_day: float
    source: str = ""

    @property
    def interval_ms(self) -> int:
        return round(86_400_000 / self.steps_per_day)
