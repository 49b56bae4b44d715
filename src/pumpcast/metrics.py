"""Every number pumpcast judges a model by, each defined once (numpy only); every report, benchmark and test
uses these.

Forecasts (of the log price change from a forecast origin's last known step):
- skill: 1 - MAE / MAE of persistence (no change) on the same steps;
- direction: credit 1 when the forecast moves the way the price did, 0 when it moves the other way, and one
  half when either did not move (a "no change" forecast earns one half whatever happens, as a coin would);
- pinball: the mean over the quantile levels of the pinball loss (the quantile form of CRPS);
- coverage and width of the central 50/80/90% intervals (the 0.25-0.75, 0.1-0.9 and 0.05-0.95 quantiles).
Sums of these over origins (FORECAST_STATS) are what a backtest keeps per token and resamples by bootstrap.

Pump events (see events.py for what an event, an alarm and their spans are): per token the counts
(EventCounts: events, detected, early, delays, false alarms, days scored), pooled into EventMetrics (recall,
early-warning rate, false alarms per day, median delay, AUPRC), with 95% bootstrap intervals over tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pumpcast.events import ANY, TokenScores, alarm_onsets, event_span, pump_events, pump_labels

#: Central intervals, by the name of their coverage statistic: (lower level, upper level).
INTERVALS = {"cov50": (0.25, 0.75), "cov80": (0.1, 0.9), "cov90": (0.05, 0.95)}
#: What is summed over forecast origins: count, absolute and squared error of the median, direction credit of
#: the mean, pinball loss, and per interval the origins inside it and its width.
FORECAST_STATS = ("n", "abs", "sq", "dir", "pinball", *INTERVALS, *(f"width{k[3:]}" for k in INTERVALS))


# ----------------------------------------------------------------------------------------------- forecasts


def direction_credit(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per forecast: 1 if it moves the way the price did, 0 if the other way, 0.5 if either did not move."""
    product = np.asarray(predicted) * np.asarray(actual)
    return np.where(product > 0, 1.0, np.where(product < 0, 0.0, 0.5))


def pinball(actual: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Per forecast (actual (n,), quantiles (n, K) at levels): the pinball loss averaged over the K levels."""
    tau = np.asarray(levels, dtype=np.float64)
    diff = np.asarray(actual)[:, None] - quantiles
    return np.maximum(tau * diff, (tau - 1) * diff).mean(axis=1)


def skill(abs_error: np.ndarray, abs_error_persistence: np.ndarray) -> np.ndarray:
    """1 - MAE / MAE of persistence (sums or means over the same steps); NaN where persistence made none."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1 - np.asarray(abs_error, dtype=np.float64) / abs_error_persistence


def forecast_sums(
    actual: np.ndarray,
    median: np.ndarray,
    mean: np.ndarray,
    quantiles: np.ndarray | None,
    levels: Sequence[float],
) -> np.ndarray:
    """FORECAST_STATS summed over the forecasts of one method ((n,) arrays; quantiles (n, K) at levels, or None
    for a point forecast: its interval statistics are NaN) whose outcome is known."""
    ok = np.isfinite(actual)
    y, med, mu = actual[ok], median[ok], mean[ok]
    out = np.full(len(FORECAST_STATS), np.nan)
    out[:4] = [y.size, np.abs(med - y).sum(), ((med - y) ** 2).sum(), direction_credit(mu, y).sum()]
    if quantiles is not None:
        q = quantiles[ok]
        out[4] = pinball(y, q, levels).sum()
        levels = list(levels)
        for j, (lo, hi) in enumerate(INTERVALS.values()):
            low, high = q[:, levels.index(lo)], q[:, levels.index(hi)]
            out[5 + j] = ((low <= y) & (y <= high)).sum()
            out[5 + len(INTERVALS) + j] = (high - low).sum()
    return out


def from_sums(sums: np.ndarray, persistence_abs: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from summed FORECAST_STATS (..., stats): skill against persistence's summed absolute error
    (broadcast against sums[..., abs]), MAE, RMSE, direction, pinball, and coverage and width per interval."""
    s = {name: sums[..., i] for i, name in enumerate(FORECAST_STATS)}
    n = s["n"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "skill": skill(s["abs"], persistence_abs),
            "mae": s["abs"] / n,
            "rmse": np.sqrt(s["sq"] / n),
            "directional_accuracy": s["dir"] / n,
            "pinball": s["pinball"] / n,
        }
        out.update({name: s[name] / n for name in FORECAST_STATS[5:]})
    return out


# ----------------------------------------------------------------------------------------------- pump events


@dataclass
class EventCounts:
    """One token's pump events judged at one threshold: what pooled metrics and the bootstrap add up. With
    `scores` and `positives` (the scored steps and which of them are pump steps) it also carries what the
    AUPRC needs."""

    token: int
    events: int
    detected: int
    early: int
    delays: list[int]  # first detecting alarm minus start, per detected event (negative = early)
    false_alarms: int
    days: float
    threshold: float
    scores: list[float] = field(default_factory=list)
    positives: list[int] = field(default_factory=list)
    interval_ms: int = 60_000  # the bar length, which turns delays into seconds

    @property
    def delays_s(self) -> list[float]:
        """Seconds from each detected event's start (the announced time of a real pump) to its first alarm
        line, which is printed when the alarm's bar closes: (delay + 1) bars; early alarms are negative or 0."""
        return [(d + 1) * self.interval_ms / 1000 for d in self.delays]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EventCounts:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class EventMetrics:
    """Pump-event metrics pooled over tokens at one threshold (NaN where undefined: no event, no day)."""

    events: int
    detected: int
    early: int
    recall: float
    early_warning_rate: float
    false_alarms_per_day: float
    median_delay_steps: float
    auprc: float
    days: float
    threshold: float
    median_delay_s: float = float("nan")  # seconds from the start to the first alarm line (EventCounts.delays_s)
    within_30s: int = 0  # events whose first alarm line came at most 30 s after the start (early ones included)
    within_60s: int = 0
    within_120s: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def event_counts(item: TokenScores, threshold: float, horizon: int, keep_scores: bool = False) -> EventCounts:
    """The counts of one token's events and alarms at a threshold (steps with NaN scores are not scored)."""
    valid = np.isfinite(item.scores)
    alarmed = valid & (item.scores >= threshold)
    detected = early = 0
    delays: list[int] = []
    events = [e for e in pump_events(item.events) if 0 <= e.start < len(item.scores) and valid[e.start]]
    for e in events:
        lo, hi, _ = event_span(e, horizon, item.interval_ms)
        hits = np.flatnonzero(alarmed[max(0, lo) : hi + 1]) + max(0, lo)
        if hits.size:
            detected += 1
            delays.append(int(hits[0] - e.start))
            early += int(hits[0] < e.start)
    spans = [event_span(e, horizon, item.interval_ms)[::2] for e in pump_events(item.events)]
    false_alarms = sum(not any(lo <= t <= hi for lo, hi in spans) for t in alarm_onsets(alarmed))
    counts = EventCounts(
        item.token_id, len(events), detected, early, delays, int(false_alarms), valid.sum() / item.steps_per_day,
        float(threshold), interval_ms=item.interval_ms,
    )
    if keep_scores:
        labels = pump_labels(len(item.scores), item.events, horizon, item.interval_ms)[valid, ANY]
        counts.scores = item.scores[valid].round(6).tolist()
        counts.positives = np.flatnonzero(labels).tolist()
    return counts


def pooled(counts: Sequence[EventCounts], labels: np.ndarray | None = None, scores: np.ndarray | None = None):
    """EventMetrics of tokens' counts; AUPRC over the given step labels and scores (NaN without them)."""
    n_events = sum(c.events for c in counts)
    days = float(sum(c.days for c in counts))
    delays = [d for c in counts for d in c.delays]
    seconds = np.asarray([d for c in counts for d in c.delays_s])
    detected, early = sum(c.detected for c in counts), sum(c.early for c in counts)
    return EventMetrics(
        events=n_events,
        detected=detected,
        early=early,
        recall=detected / n_events if n_events else float("nan"),
        early_warning_rate=early / n_events if n_events else float("nan"),
        false_alarms_per_day=sum(c.false_alarms for c in counts) / days if days else float("nan"),
        median_delay_steps=float(np.median(delays)) if delays else float("nan"),
        auprc=average_precision(labels, scores) if labels is not None else float("nan"),
        days=days,
        threshold=counts[0].threshold if counts else float("nan"),
        median_delay_s=float(np.median(seconds)) if seconds.size else float("nan"),
        within_30s=int((seconds <= 30).sum()),
        within_60s=int((seconds <= 60).sum()),
        within_120s=int((seconds <= 120).sum()),
    )


def pooled_counts(counts: Sequence[EventCounts]) -> EventMetrics:
    """EventMetrics of tokens' counts, the AUPRC from the scores and positives they carry."""
    labels, scores = scored_steps(counts)
    return pooled(counts, np.concatenate([np.zeros(0, bool), *labels]), np.concatenate([np.zeros(0), *scores]))


def scored_steps(counts: Sequence[EventCounts]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per token: its scored steps' labels (pump step or not) and scores."""
    labels = [np.isin(np.arange(len(c.scores)), c.positives) for c in counts]
    return labels, [np.asarray(c.scores, dtype=np.float64) for c in counts]


def event_metrics(items: Sequence[TokenScores], threshold: float, horizon: int, auprc: bool = True) -> EventMetrics:
    """Recall, early warnings, false alarms per day, median delay and AUPRC over tokens at a threshold."""
    counts = [event_counts(it, threshold, horizon) for it in items]
    if not auprc:
        return pooled(counts)
    labels, scores = [np.zeros(0)], [np.zeros(0)]
    for it in items:
        valid = np.isfinite(it.scores)
        labels.append(pump_labels(len(it.scores), it.events, horizon, it.interval_ms)[valid, ANY])
        scores.append(it.scores[valid])
    return pooled(counts, np.concatenate(labels), np.concatenate(scores))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision over the positives, ties resolved together)."""
    labels = np.asarray(labels, dtype=bool)
    if labels.sum() == 0:
        return float("nan")
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    s, y = np.asarray(scores)[order], labels[order]
    tp = np.cumsum(y)
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    precision = tp[last_of_tie] / (np.flatnonzero(last_of_tie) + 1)
    recall_gain = np.diff(np.r_[0, tp[last_of_tie]])
    return float((precision * recall_gain).sum() / y.sum())


def false_alarms_per_day(items: Sequence[TokenScores], horizon: int, thresholds: np.ndarray) -> np.ndarray:
    """event_counts' false alarms per day at each of many thresholds in one pass: an alarm begins at step t
    for every threshold in (score[t - 1], score[t]], so the onsets outside the event spans are counted by
    sorting those bounds once."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    count = np.zeros(thresholds.size)
    days = 0.0
    for it in items:
        s = np.where(np.isfinite(it.scores), it.scores, -np.inf)
        days += np.isfinite(it.scores).sum() / it.steps_per_day
        outside = np.ones(s.size, dtype=bool)
        for e in pump_events(it.events):
            lo, _, hi = event_span(e, horizon, it.interval_ms)
            outside[max(0, lo) : max(0, hi + 1)] = False
        top = np.sort(s[outside])
        bottom = np.sort(np.minimum(s, np.r_[-np.inf, s[:-1]])[outside])
        count += (top.size - np.searchsorted(top, thresholds, "left")) - (
            bottom.size - np.searchsorted(bottom, thresholds, "left")
        )
    return count / days if days else np.full(thresholds.size, np.nan)


def percentile_interval(draws: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 95% percentile interval of bootstrap draws along axis, NaN draws left out (all NaN: NaN, quietly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a metric undefined in every draw, e.g. no delay
        lo, hi = np.nanpercentile(draws, [2.5, 97.5], axis=axis)
    return lo, hi


def choose_threshold(items: Sequence[TokenScores], horizon: int, max_false_alarms_per_day: float) -> float:
    """The lowest threshold whose false alarms per day stay within the budget, on the given (validation)
    tokens. Lower thresholds only add alarms, so the highest recall within budget is the lowest such one. Every
    score above the median is a candidate (a grid of quantiles would jump over the thresholds that spend the
    budget: at 1-minute bars one quantile step of 0.1% is many alarms)."""
    values = np.concatenate([it.scores[np.isfinite(it.scores)] for it in items]) if items else np.zeros(0)
    if values.size == 0:
        return float("inf")
    candidates = np.unique(values[values >= np.median(values)])
    within = np.flatnonzero(false_alarms_per_day(items, horizon, candidates) <= max_false_alarms_per_day)
    return float(candidates[within[0]]) if within.size else float(np.nextafter(values.max(), np.inf))



#: The pooled event metrics the bootstrap gives intervals for.
EVENT_RATES = ("recall", "early_warning_rate", "false_alarms_per_day", "median_delay_steps", "median_delay_s", "auprc")


def bootstrap_events(counts: Sequence[EventCounts], n_boot: int, rng: np.random.Generator) -> dict[str, Any]:
    """Pooled metrics of tokens' counts (with their scores and positives) and 95% bootstrap intervals over
    tokens (n_boot resamples drawn from rng): events, detected and early as counts, each of EVENT_RATES as
    [value, low, high]."""
    labels, scores = scored_steps(counts)
    n = len(counts)
    values = []
    for draw in [np.arange(n)] + [rng.integers(0, n, n) for _ in range(n_boot)]:
        sel = [counts[i] for i in draw]
        m = pooled(sel, np.concatenate([labels[i] for i in draw]), np.concatenate([scores[i] for i in draw]))
        values.append([getattr(m, k) for k in EVENT_RATES])
    v = np.asarray(values, dtype=np.float64)
    lo, hi = percentile_interval(v[1:])
    return {
        "events": int(sum(c.events for c in counts)),
        "detected": int(sum(c.detected for c in counts)),
        "early": int(sum(c.early for c in counts)),
        **{f"within_{s}s": int(sum(d <= s for c in counts for d in c.delays_s)) for s in (30, 60, 120)},
        **{key: [float(v[0, i]), float(lo[i]), float(hi[i])] for i, key in enumerate(EVENT_RATES)},
    }
