"""Scoring a fixed model on given tokens and ranges, beside the baselines: what `backtest` does in each fold
after training, and what `evaluate` does once, on the split a model was trained with; so one model on one
split gives the same numbers in backtest.json and report.json.

Every origin of a held-out range is scored (or every `every`-th) at each horizon h: the change of log price
from the origin's last known step to h steps later. Per horizon, for the model and every baseline
(baselines.py), the sums of metrics.FORECAST_STATS over origins, overall and in pump windows (an hour before
a pump to two hours after it), per token: the units a bootstrap resamples. With a pump head, the event counts
of the model, the baselines and the ensemble per token, at the thresholds stored in the model file. Each token
is read from the store once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pumpcast import baselines
from pumpcast.channels import model_inputs
from pumpcast.detection import PumpDetector, event_scores, score_token_range
from pumpcast.events import TokenScores, pump_events
from pumpcast.forecasting import Forecaster
from pumpcast.losses import QuantileLoss
from pumpcast.metrics import (
    FORECAST_STATS,
    EventCounts,
    bootstrap_events,
    event_counts,
    forecast_sums,
    from_sums,
    percentile_interval,
)
from pumpcast.modelfile import ModelBundle
from pumpcast.schema import PRICE, DataError, TokenSeries
from pumpcast.splits import Split
from pumpcast.store import TokenDataManager

log = logging.getLogger(__name__)

METHODS = ("model", "model_raw", "persistence", "drift", "ridge", "empirical")
SUBSETS = ("all", "pump")
PUMP_BEFORE_MS, PUMP_AFTER_MS = 3_600_000, 7_200_000  # a pump window: one hour before to two hours after
BATCH = 512  # origins forecast together


@dataclass
class Origins:
    """The origins scored in one token's range and what happened after each."""

    token_id: int
    origins: np.ndarray  # (n,) first unknown step
    actual: np.ndarray  # (n, H) log price change at each horizon (NaN past the range's end)
    pump: np.ndarray  # (n,) bool: the origin lies in a pump window
    key: str  # the token's store key
    times: pd.DatetimeIndex  # (T,) the token's bar times, for long-format frames


def range_origins(
    tok: TokenSeries, rng: tuple[int, int], horizons: tuple[int, ...], first: int, every: int
) -> Origins | None:
    """Origins every `every` steps inside rng with `first` steps of history before them; targets past rng's
    end are NaN (never read)."""
    a, b = rng
    origins = np.arange(max(a, first), b, every)
    if origins.size == 0:
        return None
    actual = baselines.changes(tok.features[:b], origins, horizons)
    before, after = PUMP_BEFORE_MS // tok.interval_ms, PUMP_AFTER_MS // tok.interval_ms
    pump = np.zeros(origins.size, dtype=bool)
    for e in pump_events(tok.events):
        pump |= (origins - 1 >= e.start - before) & (origins - 1 <= e.start + after)
    times = pd.to_datetime(tok.timestamps, unit="ms", utc=True)
    return Origins(tok.token_id, origins, actual, pump, tok.key, times)


def model_forecasts(
    forecaster: Forecaster, feats: np.ndarray, origins: np.ndarray, horizons: tuple[int, ...], calibrated: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Forecast quantiles (n, H, K) and means (n, H) of the log price change at each horizon, in batches."""
    L = forecaster.seq_len
    quantiles, means = [], []
    cols = [h - 1 for h in horizons]
    for i in range(0, origins.size, BATCH):
        o = origins[i : i + BATCH]
        hist = feats[(o - L)[:, None] + np.arange(L)]  # (B, L, 6)
        q, mean = forecaster.forecast(hist, max(horizons), calibrated=calibrated)
        last = np.log(hist[:, -1, PRICE])[:, None]
        quantiles.append(np.log(q[:, cols, PRICE]) - last[..., None])
        means.append(np.log(mean[:, cols]) - last)
    return np.concatenate(quantiles), np.concatenate(means)


def score_token(
    feats: np.ndarray,
    org: Origins,
    horizons: tuple[int, ...],
    forecaster: Forecaster | None,
    ridge: baselines.Ridge,
    context: int,
    frames: list[pd.DataFrame] | None = None,
) -> np.ndarray:
    """(methods, H, subsets, stats) sums for one token's origins (feats: its raw features); with `frames`,
    every forecast is also appended to it as a long-format frame (see forecast_frame)."""
    levels = QuantileLoss.levels
    out = np.full((len(METHODS), len(horizons), len(SUBSETS), len(FORECAST_STATS)), np.nan)
    zero = np.zeros(org.origins.size)
    ridge_pred = ridge.predict(baselines.ridge_features(feats, org.origins))
    drift = baselines.drift(feats, org.origins, horizons)
    models = {}
    if forecaster is not None:
        models["model"] = model_forecasts(forecaster, feats, org.origins, horizons, calibrated=True)
        if forecaster.bundle.forecast_calibration is not None:
            models["model_raw"] = model_forecasts(forecaster, feats, org.origins, horizons, calibrated=False)
    windows = baselines.context_windows(feats, org.origins, context)
    emp_q, emp_mean = baselines.empirical_quantiles(windows, horizons, levels)  # (n, H, K), (n, H)
    for j, h in enumerate(horizons):
        forecasts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {
            "persistence": (zero, zero, None),
            "drift": (drift[:, j], drift[:, j], None),
            "ridge": (ridge_pred[:, j], ridge_pred[:, j], None),
            "empirical": (emp_q[:, j, levels.index(0.5)], emp_mean[:, j], emp_q[:, j]),
        }
        for name, (quantiles, means) in models.items():
            mlevels = forecaster.quantile_levels
            q = quantiles[:, j]
            forecasts[name] = (q[:, mlevels.index(0.5)], means[:, j], q if mlevels == levels else None)
        for name, (med, mean, quant) in forecasts.items():
            m = METHODS.index(name)
            for s, sel in enumerate((np.ones(org.origins.size, dtype=bool), org.pump)):
                out[m, j, s] = forecast_sums(
                    org.actual[sel, j], med[sel], mean[sel], None if quant is None else quant[sel], levels
                )
            if frames is not None:
                frames.append(forecast_frame(org, j, h, name, med, mean, quant, levels))
    return out


def forecast_frame(
    org: Origins,
    j: int,
    h: int,
    method: str,
    median: np.ndarray,
    mean: np.ndarray,
    quantiles: np.ndarray | None,
    levels: tuple[float, ...],
) -> pd.DataFrame:
    """One method's forecasts at horizon h for one token, in the long format of NeuralForecast's
    cross_validation: token (key), cutoff (the last known bar), time (the forecast bar), horizon, method, actual,
    median, mean and q05..q95 (empty for point forecasts); values are log price changes from the cutoff."""
    times = org.times
    target = np.minimum(org.origins - 1 + h, len(times) - 1)
    frame = pd.DataFrame(
        {
            "token": org.key,
            "cutoff": times[org.origins - 1],
            "time": times[target].where(org.origins - 1 + h < len(times)),
            "horizon": h,
            "method": method,
            "actual": org.actual[:, j],
            "median": median,
            "mean": mean,
        }
    )
    for k, level in enumerate(levels):
        frame[f"q{round(level * 100):02d}"] = quantiles[:, k] if quantiles is not None else np.nan
    return frame


# --------------------------------------------------------------------------------------------- one fold


@dataclass
class FoldScores:
    """What scoring one fold gives (and what a backtest's fold file keeps, in FORMAT): the split's tokens, the
    forecast sums per scored token (tokens, methods, H, subsets, stats) and, with a pump head, each detector's
    event counts per test token with known events."""

    FORMAT = 3  # 2: typed event counts with every delay, interval widths among the stats; 3: their bar length

    fold: int
    train_tokens: list[int]
    val_tokens: list[int]
    test_tokens: list[int]
    ranges: dict[str, Any]
    ridge_penalty: list[float]
    rollout_damping: float
    tokens: list[int]
    sums: np.ndarray
    events: dict[str, list[EventCounts]] | None
    train_seconds: float = 0.0
    seconds: float = 0.0
    fingerprint: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("sums", "events")}
        out["format"] = self.FORMAT
        out["sums"] = self.sums.tolist()
        out["events"] = {n: [c.to_dict() for c in rows] for n, rows in self.events.items()} if self.events else None
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], horizons: tuple[int, ...]) -> FoldScores:
        """A fold file's record; ValueError (or KeyError, TypeError) when it is of another format or shape."""
        if d.get("format") != cls.FORMAT:
            raise ValueError(f"fold file format {d.get('format')!r}, this pumpcast writes {cls.FORMAT}")
        sums = np.asarray(d["sums"], dtype=np.float64)
        if sums.shape != (len(d["tokens"]), len(METHODS), len(horizons), len(SUBSETS), len(FORECAST_STATS)):
            raise ValueError(f"the fold file's sums have shape {sums.shape}, not one row per token of this backtest")
        events = d["events"]
        return cls(
            **{k: d[k] for k in cls.__dataclass_fields__ if k not in ("sums", "events") and k in d},
            sums=sums,
            events={n: [EventCounts.from_dict(c) for c in rows] for n, rows in events.items()} if events else None,
        )


def fold_token_scores(
    bundle: ModelBundle,
    store: TokenDataManager,
    split: Split,
    horizons: tuple[int, ...],
    every: int = 1,
    context: int = 500,
    frames: list[pd.DataFrame] | None = None,
    on_events: Callable[[TokenSeries, dict[str, TokenScores]], None] | None = None,
    fold: int = 0,
) -> FoldScores:
    """Score a fixed model on a split's test part: fit the ridge on its training part (penalty on validation),
    then per test token (read once): the forecast sums of every method and, with a pump head, the event
    counts of every detector at its stored threshold. on_events(token, scores per detector) sees each token's
    per-step scores (evaluate draws its event pictures from them)."""
    started = time.perf_counter()
    forecaster = Forecaster(bundle)
    first = max(forecaster.seq_len, context, baselines.WARMUP)
    ridge = baselines.fit_ridge_ranges(store, split.ranges["train"], split.ranges["val"], horizons, baselines.WARMUP)
    detector = PumpDetector(bundle) if bundle.has_pump_head else None
    thresholds = detector.calibration.thresholds | {"detector": detector.threshold} if detector is not None else {}
    model_set = detector.calibration.baselines if detector is not None else None
    tokens, sums, events = [], [], {}
    for t in split.tokens("test"):
        rng = split.ranges["test"][t]
        tok = store.read(t)
        org = range_origins(tok, rng, horizons, first, every)
        if org is not None:
            tokens.append(t)
            inputs = model_inputs(tok, bundle.config.groups)
            sums.append(score_token(inputs, org, horizons, forecaster, ridge, context, frames))
        scored = score_token_range(bundle, tok, rng, model_set) if detector is not None else None
        if scored is None:
            continue
        per_detector = {name: items[0] for name, items in event_scores(detector, [scored]).items()}
        for name, item in per_detector.items():
            horizon = detector.calibration.horizon
            events.setdefault(name, []).append(event_counts(item, thresholds[name], horizon, keep_scores=True))
        if on_events is not None:
            on_events(tok, per_detector)
    shape = (0, len(METHODS), len(horizons), len(SUBSETS), len(FORECAST_STATS))
    return FoldScores(
        fold=fold,
        train_tokens=split.tokens("train"),
        val_tokens=split.tokens("val"),
        test_tokens=split.tokens("test"),
        ranges=split.to_json()["ranges"],
        ridge_penalty=ridge.penalty.tolist(),
        rollout_damping=bundle.rollout_damping,
        tokens=tokens,
        sums=np.stack(sums) if sums else np.zeros(shape),
        events=events if detector is not None else None,
        seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------------------------- summaries


def per_token_sums(folds: list[FoldScores]) -> tuple[list[int], np.ndarray]:
    """The tested tokens (sorted) and their summed stats (tokens, methods, H, subsets, stats): the units the
    bootstrap resamples (a token tested in several time folds is one unit)."""
    units: dict[int, np.ndarray] = {}
    for f in folds:
        for t, s in zip(f.tokens, f.sums, strict=True):
            units[t] = units[t] + s if t in units else s.copy()
    if not units:
        raise DataError("no test origins: tokens are shorter than the model's seq_length plus the horizons")
    return sorted(units), np.stack([units[t] for t in sorted(units)])


def method_metrics(sums: np.ndarray) -> dict[str, np.ndarray]:
    """metrics.from_sums of stats (..., methods, H, subsets, stats), skill against the persistence method."""
    persistence = sums[..., METHODS.index("persistence"), :, :, FORECAST_STATS.index("abs")]
    return from_sums(sums, persistence[..., None, :, :])


def summarize(per_token: np.ndarray, horizons: tuple[int, ...], n_boot: int, seed: int) -> dict[str, Any]:
    """Point values and 95% bootstrap intervals (tokens resampled) of every metric, as nested dicts:
    subset -> horizon -> method -> metric -> [value, low, high]."""
    point = method_metrics(per_token.sum(axis=0))  # NaN stays NaN: a point forecast has no quantiles
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, per_token.shape[0], size=(n_boot, per_token.shape[0]))
    boot = method_metrics(np.stack([per_token[d].sum(axis=0) for d in draws]))
    out: dict[str, Any] = {}
    for s, subset in enumerate(SUBSETS):
        out[subset] = {}
        for j, h in enumerate(horizons):
            out[subset][str(h)] = {}
            for m, method in enumerate(METHODS):
                row = {}
                for name, value in point.items():
                    v = float(value[m, j, s])
                    if not np.isfinite(v):
                        continue
                    lo, hi = percentile_interval(boot[name][:, m, j, s])
                    row[name] = [v, float(lo), float(hi)]
                if row:
                    row["n"] = int(per_token[:, m, j, s, 0].sum())
                    out[subset][str(h)][method] = row
    return out


def summarize_events(folds: list[FoldScores], n_boot: int, seed: int) -> dict[str, Any]:
    """Event metrics per detector over all folds' test tokens (metrics.bootstrap_events: counts, and rates
    with 95% bootstrap intervals over tokens; each token's scores from its own fold's model)."""
    per: dict[str, list[EventCounts]] = {}
    for f in folds:
        for name, rows in (f.events or {}).items():
            per.setdefault(name, []).extend(rows)
    rng = np.random.default_rng(seed)  # one stream for all detectors, drawn in turn
    return {name: bootstrap_events(rows, n_boot, rng) for name, rows in per.items()}


# --------------------------------------------------------------------------------------------- Markdown

LABELS = {
    "model": "pumpcast (median; mean for direction)",
    "model_raw": "pumpcast network alone, uncalibrated",
    "persistence": "persistence (no change)",
    "drift": "drift (last hour's mean return)",
    "ridge": "ridge on lagged returns, volume, imbalance",
    "empirical": "empirical quantiles of the context",
}


def ci(cell: list[float] | None, digits: int = 3) -> str:
    """'value [low, high]' of a [value, low, high] cell."""
    if cell is None:
        return ""
    v, lo, hi = cell
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _plain(cell: list[float] | None, digits: int = 4) -> str:
    return "" if cell is None else f"{cell[0]:.{digits}f}"


def forecast_tables(metrics: dict[str, Any]) -> list[str]:
    """Markdown lines of summarize()'s metrics: one table per subset and horizon, the model beside every
    baseline (backtest.md and report.md both show them)."""
    lines: list[str] = []
    for subset, title in (("all", "All origins"), ("pump", "Pump windows (1 h before to 2 h after a pump)")):
        lines += ["", f"## {title}"]
        for h, rows in metrics[subset].items():
            if not rows:
                continue
            lines += [
                "",
                f"### h = {h} steps (n = {next(iter(rows.values()))['n']})",
                "",
                "| method | skill | RMSE | directional accuracy | pinball | cover 50% | cover 80% | width 80% "
                "| cover 90% |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for method, m in rows.items():
                lines.append(
                    f"| {LABELS[method]} | {ci(m.get('skill'))} | {_plain(m.get('rmse'))} | "
                    f"{ci(m.get('directional_accuracy'))} | {_plain(m.get('pinball'), 5)} | "
                    f"{_plain(m.get('cov50'), 3)} | {ci(m.get('cov80'))} | {_plain(m.get('width80'), 4)} | "
                    f"{_plain(m.get('cov90'), 3)} |"
                )
    return lines


def event_table(events: dict[str, Any]) -> list[str]:
    """Markdown lines of summarize_events()'s metrics: a row per detector, with bootstrap intervals."""
    lines = [
        "",
        "| detector | detected | early | within 30 s / 60 s / 120 s | false alarms / day | median delay (s) | AUPRC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in events.items():
        within = " / ".join(str(m.get(f"within_{s}s", "")) for s in (30, 60, 120))
        lines.append(
            f"| {name} | {m['detected']}/{m['events']}: {ci(m['recall'], 2)} | "
            f"{m['early']}/{m['events']}: {ci(m['early_warning_rate'], 2)} | {within} | "
            f"{ci(m['false_alarms_per_day'], 2)} | {ci(m.get('median_delay_s', [float('nan')] * 3), 0)} | "
            f"{ci(m['auprc'])} |"
        )
    return lines
