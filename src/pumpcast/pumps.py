"""Pump events: per-step labels from stored events, alarm thresholds chosen on validation data to a
false-alarm budget, event-level metrics, and the calibration record a model file keeps (the baselines it
sets beside the model are in detectors.py).

Conventions (steps are bar indices of one token; A = the steps in DETECT_AFTER_MS, 2 at 1-minute bars, 8 at
15-second bars):
- a pump "starts" at its event start (the first surge bar for synthetic pumps, the announced minute for real
  ones) and is "under way" from its start to its peak (real events, whose peak is unknown: REAL_PEAK_MS);
- an alarm is a run of consecutive steps whose score reaches the threshold, counted once, at its first step;
- an event is detected if an alarmed step falls in [start - K, start + A]; an early warning if one falls in
  [start - K, start - 1]; the delay is the first such step minus the start (negative = early);
- a false alarm is an alarm that begins outside every event's [start - K, end] (end = start + A at least).
The spans after a start are times, so that a 15-second bar series is judged as its 1-minute bars would be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pumpcast.schema import Event, ModelFileError, TokenSeries

PUMP = "pump_and_dump"
REAL_PEAK_MS = 5 * 60_000  # real pumps peak within about 1-5 minutes of the announcement
#: The three pump outputs: a pump starts within K steps, one is under way, either of the two.
PUMP_TARGETS = ("soon", "now", "any")
DETECT_AFTER_MS = 2 * 60_000  # an alarm up to 2 minutes after the start still detects the event


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
    """(T, 3) float32: [a pump starts within the next `horizon` steps, a pump is under way, either], for bars of
    interval_ms."""
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


def _windows(e: Event, horizon: int, interval_ms: int) -> tuple[int, int, int]:
    """(first step that detects, last step that detects, last step that is not a false alarm)."""
    after = steps_in(DETECT_AFTER_MS, interval_ms)
    return e.start - horizon, e.start + after, max(e.end, e.start + after)


def event_metrics(items: Sequence[TokenScores], threshold: float, horizon: int, auprc: bool = True) -> dict[str, float]:
    """Recall, early warnings, false alarms per day, median delay and AUPRC over tokens (see module doc)."""
    detected = early = n_events = false_alarms = 0
    delays: list[int] = []
    days = 0.0
    labels, scores = [], []
    for it in items:
        valid = np.isfinite(it.scores)
        alarmed = valid & (it.scores >= threshold)
        days += valid.sum() / it.steps_per_day
        events = [e for e in pump_events(it.events) if 0 <= e.start < len(it.scores) and valid[e.start]]
        for e in events:
            n_events += 1
            lo, hi, _ = _windows(e, horizon, it.interval_ms)
            hits = np.flatnonzero(alarmed[max(0, lo) : hi + 1]) + max(0, lo)
            if hits.size:
                detected += 1
                delays.append(int(hits[0] - e.start))
                early += int(hits[0] < e.start)
        spans = [_windows(e, horizon, it.interval_ms)[::2] for e in pump_events(it.events)]
        for onset in alarm_onsets(alarmed):
            if not any(lo <= onset <= hi for lo, hi in spans):
                false_alarms += 1
        if auprc:
            labels.append(pump_labels(len(it.scores), it.events, horizon, it.interval_ms)[valid, 2])
            scores.append(it.scores[valid])
    y = np.concatenate(labels) if labels else np.zeros(0)
    s = np.concatenate(scores) if scores else np.zeros(0)
    return {
        "events": n_events,
        "recall": detected / n_events if n_events else float("nan"),
        "early_warning_rate": early / n_events if n_events else float("nan"),
        "false_alarms_per_day": false_alarms / days if days else float("nan"),
        "median_delay_steps": float(np.median(delays)) if delays else float("nan"),
        "auprc": average_precision(y, s) if auprc else float("nan"),
        "days": days,
        "threshold": float(threshold),
    }


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


def choose_threshold(items: Sequence[TokenScores], horizon: int, max_false_alarms_per_day: float = 1.0) -> float:
    """The lowest threshold whose false alarms per day stay within the budget, on the given (validation)
    tokens. Lower thresholds only add alarms, so the highest recall within budget is the lowest such one."""
    values = np.concatenate([it.scores[np.isfinite(it.scores)] for it in items]) if items else np.zeros(0)
    if values.size == 0:
        return float("inf")
    candidates = np.unique(np.quantile(values, np.linspace(0.5, 1.0, 401)))
    within = np.flatnonzero(false_alarms_per_day(items, horizon, candidates) <= max_false_alarms_per_day)
    return float(candidates[within[0]]) if within.size else float(np.nextafter(values.max(), np.inf))


def false_alarms_per_day(items: Sequence[TokenScores], horizon: int, thresholds: np.ndarray) -> np.ndarray:
    """event_metrics' false alarms per day at each of many thresholds in one pass: an alarm begins at step t
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
            lo, _, hi = _windows(e, horizon, it.interval_ms)
            outside[max(0, lo) : max(0, hi + 1)] = False
        top = np.sort(s[outside])
        bottom = np.sort(np.minimum(s, np.r_[-np.inf, s[:-1]])[outside])
        count += (top.size - np.searchsorted(top, thresholds, "left")) - (
            bottom.size - np.searchsorted(bottom, thresholds, "left")
        )
    return count / days if days else np.full(thresholds.size, np.nan)


def fit_platt(logits: np.ndarray, labels: np.ndarray, iters: int = 200) -> tuple[float, float]:
    """Platt scaling on validation data: (a, b) so that sigmoid(a * logit + b) is calibrated. The pump head is
    trained with positives up-weighted (pumps are rare), which inflates its raw probabilities; this undoes it.
    Identity when the data has no positive or no negative."""
    import torch

    y = np.asarray(labels, dtype=np.float64)
    keep = np.isfinite(y) & np.isfinite(logits)
    if keep.sum() < 2 or y[keep].min() == y[keep].max():
        return 1.0, 0.0
    x_t = torch.tensor(np.asarray(logits)[keep], dtype=torch.float64)
    y_t = torch.tensor(y[keep], dtype=torch.float64)
    a = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * x_t + b, y_t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(a.detach()), float(b.detach())


def calibrated(logits: np.ndarray, calibration: Sequence[Sequence[float]]) -> np.ndarray:
    """Raw pump logits (..., 3) -> calibrated probabilities (..., 3); NaN stays NaN."""
    ab = np.asarray(calibration, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(np.asarray(logits) * ab[:, 0] + ab[:, 1])))


def _legacy_baselines(d: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Model files before tuned baselines kept only the thresholds of volume_z and buys_z, which were z-scores
    over 60 bars with the standard deviation floored at 0.5."""
    return {
        str(name): {"kind": "ZScoreDetector", "signal": str(name), "window": 60, "floor": 0.5, "threshold": float(th)}
        for name, th in d.get("baseline_thresholds", {}).items()
    }


@dataclass
class PumpCalibration:
    """Everything chosen on validation data for a model's pump head, stored in its model file: Platt (a, b)
    per pump output, which output raises alarms ("any" or "now"), the alarm threshold for the false-alarm
    budget, the tuned baselines with their thresholds for the same budget (`detectors.BaselineSet.to_dict`), the
    ensemble of the model and its best baseline with its threshold, and the validation metrics behind the
    choices."""

    horizon: int
    calibration: list[list[float]] = field(default_factory=lambda: [[1.0, 0.0]] * len(PUMP_TARGETS))
    threshold: float = float("inf")
    max_false_alarms_per_day: float = 1.0
    alarm_output: str = "any"
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    ensemble: dict[str, Any] = field(default_factory=dict)  # detectors.Ensemble fields and its threshold
    val_metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def probability(self, logits: np.ndarray) -> np.ndarray:
        """Raw pump logits (T, 3) -> the calibrated probability (T,) of the output that raises alarms."""
        return calibrated(logits, self.calibration)[:, PUMP_TARGETS.index(self.alarm_output)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model file") -> PumpCalibration:
        try:
            cal = cls(
                horizon=int(d["horizon"]),
                calibration=[[float(a), float(b)] for a, b in d["calibration"]],
                threshold=float(d["threshold"]),
                max_false_alarms_per_day=float(d["max_false_alarms_per_day"]),
                alarm_output=str(d.get("alarm_output", "any")),
                baselines=dict(d["baselines"]) if "baselines" in d else _legacy_baselines(d),
                ensemble=dict(d.get("ensemble", {})),
                val_metrics=dict(d.get("val_metrics", {})),
                note=str(d.get("note", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: damaged pump calibration ({type(exc).__name__}: {exc})") from exc
        if len(cal.calibration) != len(PUMP_TARGETS) or cal.alarm_output not in PUMP_TARGETS:
            raise ModelFileError(f"{where}: damaged pump calibration (outputs or alarm_output)")
        ensemble_threshold = float(cal.ensemble.get("threshold", 0.0)) if cal.ensemble else 0.0
        for name, value, ok, rule in (
            ("pump.horizon", cal.horizon, cal.horizon >= 1, "a number of steps >= 1"),
            ("pump.calibration", cal.calibration, np.isfinite(cal.calibration).all(), "finite Platt parameters"),
            ("pump.threshold", cal.threshold, 0.0 <= cal.threshold <= 1.0 or cal.threshold == np.inf,
             "a probability in [0, 1] (or inf: no alarms)"),
            ("pump.max_false_alarms_per_day", cal.max_false_alarms_per_day,
             0.0 < cal.max_false_alarms_per_day < np.inf, "a positive number"),
            ("pump.ensemble.threshold", ensemble_threshold, ensemble_threshold >= 0.0, "a surprise >= 0 (or inf)"),
        ):
            if not ok:
                raise ModelFileError(f"{where}: {name} is {value!r}, it must be {rule}; retrain or restore the file")
        return cal
