"""Cross-validated backtests over a store of many tokens: the model beside the strongest simple baselines.

Like Darts' `historical_forecasts` and NeuralForecast's `cross_validation`, for many tokens at once:

- folds by token: whole tokens are held out; each fold trains a model on the other tokens (a share of them,
  preferring tokens with events, validates: early stopping, calibration, the ridge penalty), then scores the
  held-out tokens. No test token is seen in training, validation or any choice made on validation.
- folds by time (rolling origin): every token is cut into folds + 1 blocks; fold k (from 0) scores block
  k + 1 and trains on the blocks before it (their last val_ratio validates). With a model file given, that one
  model is scored on every fold instead (no retraining).

Every origin of a held-out range is scored (or every `every`-th) at each horizon h: the change of log price
from the origin's last known step to h steps later. Per horizon, for the model and every baseline
(baselines.py): MAE skill against persistence, RMSE, directional accuracy of the mean ("no move" on either
side counts one half), mean pinball loss over the quantile levels, and coverage of the 50/80/90% intervals;
overall and in pump windows (an hour before a pump to two hours after it); with 95% bootstrap intervals over
tokens. With a pump head, each fold's pump events too: the model and the z-score baselines at the thresholds
chosen on that fold's validation tokens. Each fold's scores are saved when it ends, so an interrupted
backtest resumes at the next fold; every scored forecast can be kept as a long-format frame.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pumpcast import baselines
from pumpcast.config import BacktestConfig, TrainConfig, replace_train, to_dict
from pumpcast.detection import PumpDetector, event_scores, score_ranges
from pumpcast.detectors import BaselineSet
from pumpcast.files import atomic_write, atomic_write_json
from pumpcast.forecasting import Forecaster
from pumpcast.losses import QuantileLoss
from pumpcast.modelfile import ModelBundle, load_model_file, require_store_fit
from pumpcast.pumps import average_precision, event_metrics, pump_events, pump_labels
from pumpcast.schema import PRICE, DataError
from pumpcast.splits import Split, make_split, tokens_with_events
from pumpcast.store import TokenDataManager

log = logging.getLogger(__name__)

METHODS = ("model", "model_raw", "persistence", "drift", "ridge", "empirical")
STATS = ("n", "abs", "sq", "dir", "pinball", "cov50", "cov80", "cov90")
SUBSETS = ("all", "pump")
INTERVALS = {"cov50": (0.25, 0.75), "cov80": (0.1, 0.9), "cov90": (0.05, 0.95)}
PUMP_BEFORE_MS, PUMP_AFTER_MS = 3_600_000, 7_200_000  # a pump window: one hour before to two hours after
BATCH = 512  # origins forecast together


# --------------------------------------------------------------------------------------------- folds


def token_folds(lengths: dict[int, int], with_events: set[int], folds: int, val_ratio: float, seed: int) -> list[Split]:
    """Whole-token folds: each token is tested in exactly one fold. Of the other tokens, val_ratio of them
    (at least one, tokens with events first, so that calibration sees events) validate, the rest train."""
    ids = sorted(lengths)
    if len(ids) < folds + 2:
        raise DataError(f"{folds} token folds need at least {folds + 2} tokens; the store has {len(ids)}")
    order = [int(t) for t in np.random.default_rng(seed).permutation(ids)]
    out = []
    for k in range(folds):
        test = sorted(order[k::folds])
        rest = [t for t in order if t not in test]
        inner = make_split({t: lengths[t] for t in rest}, "none", 0.0, val_ratio, 1.0, seed, with_events)
        inner.ranges["test"] = {t: (0, lengths[t]) for t in test}
        out.append(replace(inner, strategy="token"))
    return out


def time_folds(lengths: dict[int, int], folds: int, val_ratio: float) -> list[Split]:
    """Rolling-origin folds: block k + 1 of folds + 1 is fold k's test part; the blocks before it train, their
    last val_ratio validates."""
    out = []
    for k in range(folds):
        ranges: dict[str, dict[int, tuple[int, int]]] = {"train": {}, "val": {}, "test": {}}
        for t, n in lengths.items():
            edge = [round(n * i / (folds + 1)) for i in range(folds + 2)]
            end = edge[k + 1]
            cut = round(end * (1 - val_ratio))
            ranges["train"][t], ranges["val"][t], ranges["test"][t] = (0, cut), (cut, end), (end, edge[k + 2])
        out.append(Split("time", 0.0, val_ratio, 0.0, 0, ranges))
    return out


# --------------------------------------------------------------------------------------------- scoring


@dataclass
class Origins:
    """The origins scored in one token's range and what happened after each."""

    token_id: int
    origins: np.ndarray  # (n,) first unknown step
    actual: np.ndarray  # (n, H) log price change at each horizon (NaN past the range's end)
    pump: np.ndarray  # (n,) bool: the origin lies in a pump window
    key: str  # the token's store key
    times: np.ndarray  # (T,) the token's bar times, for long-format frames


def range_origins(
    store: TokenDataManager,
    token_id: int,
    rng: tuple[int, int],
    horizons: tuple[int, ...],
    first: int,
    every: int,
    interval_ms: int,
) -> Origins | None:
    """Origins every `every` steps inside rng with `first` steps of history before them; targets past rng's
    end are NaN (never read)."""
    a, b = rng
    origins = np.arange(max(a, first), b, every)
    if origins.size == 0:
        return None
    tok = store.read(token_id)
    actual = baselines.changes(tok.features[:b], origins, horizons)
    before, after = PUMP_BEFORE_MS // interval_ms, PUMP_AFTER_MS // interval_ms
    pump = np.zeros(origins.size, dtype=bool)
    for e in pump_events(tok.events):
        pump |= (origins - 1 >= e.start - before) & (origins - 1 <= e.start + after)
    return Origins(token_id, origins, actual, pump, tok.key, pd.to_datetime(tok.timestamps, unit="ms", utc=True))


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


def forecast_stats(
    actual: np.ndarray, median: np.ndarray, mean: np.ndarray, quantiles: np.ndarray | None, levels: tuple[float, ...]
) -> np.ndarray:
    """Sums of STATS for forecasts of one method at one horizon ((n,) arrays; quantiles (n, K) or None), over
    the origins whose outcome is known."""
    ok = np.isfinite(actual)
    y, med, mu = actual[ok], median[ok], mean[ok]
    out = np.full(len(STATS), np.nan)
    out[:4] = [
        y.size,
        np.abs(med - y).sum(),
        ((med - y) ** 2).sum(),
        np.where(mu * y > 0, 1.0, np.where(mu * y < 0, 0.0, 0.5)).sum(),
    ]
    if quantiles is not None:
        q = quantiles[ok]
        tau = np.asarray(levels)
        diff = y[:, None] - q
        out[4] = np.maximum(tau * diff, (tau - 1) * diff).mean(axis=1).sum()
        for j, (lo, hi) in enumerate(INTERVALS.values()):
            inside = (q[:, levels.index(lo)] <= y) & (y <= q[:, levels.index(hi)])
            out[5 + j] = inside.sum()
    return out


def score_token(
    store: TokenDataManager,
    org: Origins,
    horizons: tuple[int, ...],
    forecaster: Forecaster | None,
    ridge: baselines.Ridge,
    context: int,
    frames: list[pd.DataFrame] | None = None,
) -> np.ndarray:
    """(methods, H, subsets, stats) sums for one token's origins; with `frames`, every forecast is also
    appended to it as a long-format frame (see forecast_frame)."""
    feats = store.read_features(org.token_id)
    levels = QuantileLoss.levels
    out = np.full((len(METHODS), len(horizons), len(SUBSETS), len(STATS)), np.nan)
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
                out[m, j, s] = forecast_stats(
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


def fold_events(
    bundle: ModelBundle, store: TokenDataManager, test: dict[int, tuple[int, int]]
) -> dict[str, list[dict[str, Any]]]:
    """Per detector (the model and each baseline, at the thresholds chosen on the fold's validation tokens and
    stored in its model file) and test token with known events: the event metrics' counts, and the scores and
    positive steps the AUPRC needs (of the steps scored)."""
    detector = PumpDetector(bundle)
    pump = detector.calibration
    thresholds = {
        "model": pump.threshold,
        **BaselineSet.from_dict(pump.baselines).thresholds,
        **({"ensemble": pump.ensemble["threshold"]} if pump.ensemble else {}),
    }
    out: dict[str, list[dict[str, Any]]] = {}
    for name, items in event_scores(detector, score_ranges(bundle, store, test)).items():
        out[name] = []
        for it in items:
            m = event_metrics([it], thresholds[name], pump.horizon, auprc=False)
            valid = np.isfinite(it.scores)
            labels = pump_labels(len(it.scores), it.events, pump.horizon, it.interval_ms)[valid, 2]
            out[name].append(
                {
                    "token": it.token_id,
                    "events": m["events"],
                    "detected": round(m["recall"] * m["events"]) if m["events"] else 0,
                    "early": round(m["early_warning_rate"] * m["events"]) if m["events"] else 0,
                    "delay": m["median_delay_steps"] if np.isfinite(m["median_delay_steps"]) else None,
                    "false_alarms": round(np.nan_to_num(m["false_alarms_per_day"]) * m["days"]),  # no day scored: 0
                    "days": m["days"],
                    "threshold": thresholds[name],
                    "scores": it.scores[valid].round(6).tolist(),
                    "positives": np.flatnonzero(labels).tolist(),
                }
            )
    return out


def scored_steps(rows: list[dict[str, Any]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per test token's event record (of fold_events): its step labels (pump or not) and its scores."""
    scores = [np.asarray(r["scores"], dtype=np.float64) for r in rows]
    return [np.isin(np.arange(sc.size), r["positives"]) for r, sc in zip(rows, scores, strict=True)], scores


def summarize_events(folds: list[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """Event metrics per detector over all folds' test tokens: detected and early events (counts), and with
    95% bootstrap intervals over tokens recall, early-warning rate, false alarms per day, median delay (steps;
    negative = early) and AUPRC (each token's scores from its own fold's model)."""
    per: dict[str, list[dict[str, Any]]] = {}
    for f in folds:
        for name, rows in (f.get("events") or {}).items():
            per.setdefault(name, []).extend(rows)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for name, rows in per.items():
        n = len(rows)
        draws = [np.arange(n)] + [rng.integers(0, n, n) for _ in range(n_boot)]
        values = []
        labels, scores = scored_steps(rows)  # per token, built once for all draws
        for d in draws:
            sel = [rows[i] for i in d]
            days = sum(r["days"] for r in sel)
            delays = [r["delay"] for r in sel if r["delay"] is not None]
            n_events = sum(r["events"] for r in sel)
            values.append(
                [
                    sum(r["detected"] for r in sel) / n_events if n_events else np.nan,
                    sum(r["early"] for r in sel) / n_events if n_events else np.nan,
                    sum(r["false_alarms"] for r in sel) / days if days else np.nan,
                    float(np.median(delays)) if delays else np.nan,
                    average_precision(np.concatenate([labels[i] for i in d]), np.concatenate([scores[i] for i in d]))
                    if sel
                    else np.nan,
                ]
            )
        v = np.asarray(values, dtype=np.float64)
        lo, hi = np.nanpercentile(v[1:], [2.5, 97.5], axis=0)
        out[name] = {
            "events": int(sum(r["events"] for r in rows)),
            "detected": int(sum(r["detected"] for r in rows)),
            "early": int(sum(r["early"] for r in rows)),
            **{
                key: [float(v[0, i]), float(lo[i]), float(hi[i])]
                for i, key in enumerate(("recall", "early_rate", "false_alarms_per_day", "median_delay_steps", "auprc"))
            },
        }
    return out


# --------------------------------------------------------------------------------------------- metrics


def metrics(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from summed STATS (..., methods, H, subsets, stats): skill of the median against persistence,
    RMSE, directional accuracy, mean pinball loss and interval coverage."""
    s = {name: sums[..., i] for i, name in enumerate(STATS)}
    n = s["n"]
    with np.errstate(invalid="ignore", divide="ignore"):
        persistence = s["abs"][..., METHODS.index("persistence"), :, :]
        out = {
            "skill": 1 - s["abs"] / persistence[..., None, :, :],
            "mae": s["abs"] / n,
            "rmse": np.sqrt(s["sq"] / n),
            "directional_accuracy": s["dir"] / n,
            "pinball": s["pinball"] / n,
        }
        out.update({name: s[name] / n for name in INTERVALS})
    return out


def summarize(per_token: np.ndarray, horizons: tuple[int, ...], n_boot: int, seed: int) -> dict[str, Any]:
    """Point values and 95% bootstrap intervals (tokens resampled) of every metric, as nested dicts:
    subset -> horizon -> method -> metric -> [value, low, high]."""
    point = metrics(per_token.sum(axis=0))  # NaN stays NaN: a point forecast has no quantiles
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, per_token.shape[0], size=(n_boot, per_token.shape[0]))
    boot = metrics(np.stack([per_token[d].sum(axis=0) for d in draws]))
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
                    lo, hi = np.nanpercentile(boot[name][:, m, j, s], [2.5, 97.5])
                    row[name] = [v, float(lo), float(hi)]
                if row:
                    row["n"] = int(per_token[:, m, j, s, 0].sum())
                    out[subset][str(h)][method] = row
    return out


# --------------------------------------------------------------------------------------------- the run


def _fingerprint(cfg: TrainConfig, bt: BacktestConfig, store: TokenDataManager) -> str:
    """What a saved fold was made with: every setting but where the report goes, the store's tokens as they
    are now (key, the write that made it, steps) and the fixed model's bytes, so that a fold saved before the
    store or the model changed is scored again, never reused for other tokens."""
    settings = to_dict({**cfg.sections(), "backtest": replace(bt, output_dir="")})
    tokens = {t: [e.get("key"), e.get("txid", ""), e["steps"]] for t, e in store.metadata()["tokens"].items()}
    model = hashlib.sha256(Path(bt.load_model).read_bytes()).hexdigest() if bt.load_model else ""
    state = {"settings": settings, "tokens": tokens, "model": model}
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _saved_fold(path: Path, fingerprint: str, split: Split, horizons: tuple[int, ...]) -> dict[str, Any] | None:
    """Fold k's saved result, when it exists, is whole and was made with this fingerprint and split; None
    (and, for a damaged or inconsistent file, a line saying it is scored again) otherwise."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
            return None
        whole = (
            saved["test_tokens"] == split.tokens("test")
            and "events" in saved
            and len(saved["tokens"]) == len(saved["sums"])
            and set(saved["tokens"]) <= set(saved["test_tokens"])
            and all(np.shape(x) == (len(METHODS), len(horizons), len(SUBSETS), len(STATS)) for x in saved["sums"])
        )
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as exc:
        log.warning("%s: damaged (%s); scoring this fold again", path, type(exc).__name__)
        return None
    if not whole:
        log.warning("%s: does not match this fold's tokens; scoring this fold again", path)
        return None
    return saved


def run_fold(
    k: int, split: Split, cfg: TrainConfig, bt: BacktestConfig, store: TokenDataManager, horizons: tuple[int, ...]
) -> dict[str, Any]:
    """Train (or load) fold k's model, fit the ridge on its training part and score its test part."""
    from pumpcast.training import fit

    folder = Path(bt.output_dir) / "folds"
    started = time.perf_counter()
    if bt.load_model:
        bundle = load_model_file(bt.load_model)
    else:
        fold_cfg = replace_train(
            cfg,
            {
                "runtime.save_model": str(folder / f"fold{k}.pth"),
                "runtime.checkpoint_dir": str(folder / f"fold{k}-checkpoints"),
                "runtime.write_store_files": False,
            },
        )
        log.info(
            "fold %d/%d: training on %d token(s), validating on %d, testing %d",
            k + 1,
            bt.folds,
            len(split.tokens("train")),
            len(split.tokens("val")),
            len(split.tokens("test")),
        )
        result = fit(fold_cfg, split=split)
        assert result is not None  # backtests run in one process
        bundle = result.bundle
    trained_s = time.perf_counter() - started
    forecaster = Forecaster(bundle)
    first = max(forecaster.seq_len, bt.context, baselines.WARMUP)
    ridge = baselines.fit_ridge_ranges(store, split.ranges["train"], split.ranges["val"], horizons, baselines.WARMUP)
    interval = int(store.metadata()["tokens"][str(split.tokens("test")[0])]["interval_ms"])
    tokens, sums = [], []
    frames: list[pd.DataFrame] | None = [] if bt.save_forecasts else None
    for t in split.tokens("test"):
        org = range_origins(store, t, split.ranges["test"][t], horizons, first, bt.every, interval)
        if org is not None:
            tokens.append(t)
            sums.append(score_token(store, org, horizons, forecaster, ridge, bt.context, frames))
    if frames:
        path = folder / f"fold{k}_forecasts.parquet"
        atomic_write(path, lambda tmp: pd.concat(frames, ignore_index=True).assign(fold=k).to_parquet(tmp), ".parquet")
    events = fold_events(bundle, store, split.ranges["test"]) if bundle.has_pump_head else None
    log.info(
        "fold %d/%d: scored %d test token(s) in %.0f s", k + 1, bt.folds, len(tokens), time.perf_counter() - started
    )
    return {
        "events": events,
        "fold": k,
        "train_tokens": split.tokens("train"),
        "val_tokens": split.tokens("val"),
        "test_tokens": split.tokens("test"),
        "ranges": split.to_json()["ranges"],
        "ridge_penalty": ridge.penalty.tolist(),
        "rollout_damping": bundle.rollout_damping,
        "train_seconds": trained_s,
        "seconds": time.perf_counter() - started,
        "tokens": tokens,
        "sums": [s.tolist() for s in sums],
    }


def per_token_sums(folds: list[dict[str, Any]]) -> tuple[list[int], np.ndarray]:
    """The tested tokens (sorted) and their summed STATS (tokens, methods, H, subsets, stats): the units the
    bootstrap resamples (a token tested in several time folds is one unit)."""
    units: dict[int, np.ndarray] = {}
    for f in folds:
        for t, s in zip(f["tokens"], f["sums"], strict=True):
            arr = np.asarray(s, dtype=np.float64)
            units[t] = units[t] + arr if t in units else arr
    if not units:
        raise DataError("no test origins: tokens are shorter than the model's seq_length plus the horizons")
    return sorted(units), np.stack([units[t] for t in sorted(units)])


def backtest(cfg: TrainConfig, bt: BacktestConfig) -> dict[str, Any]:
    """Run (or resume) the backtest described by bt on the store cfg.data.data_dir, training each fold's model
    with cfg; write backtest.md, backtest.json and img/ under bt.output_dir and return the report."""
    from pumpcast.plots import plot_backtest

    store = TokenDataManager(cfg.data.data_dir)
    lengths = store.lengths()
    if not lengths:
        raise DataError(f"{store.dir}: no tokens; ingest or generate data first")
    if bt.load_model:  # one model scored on every fold: it must read this store's bars
        require_store_fit(load_model_file(bt.load_model), store, list(lengths))
    if Path(bt.output_dir).exists() and not Path(bt.output_dir).is_dir():
        raise DataError(f"{bt.output_dir}: is a file; give output_dir a folder for the backtest's report")
    horizons = bt.horizon_steps()
    with_events = tokens_with_events(store)
    splits = (
        token_folds(lengths, with_events, bt.folds, cfg.data.val_ratio, cfg.data.seed)
        if bt.by == "token"
        else time_folds(lengths, bt.folds, cfg.data.val_ratio)
    )
    out = Path(bt.output_dir)
    fingerprint = _fingerprint(cfg, bt, store)
    folds = []
    started = time.perf_counter()
    for k, split in enumerate(splits):
        path = out / "folds" / f"fold{k}.json"
        saved = _saved_fold(path, fingerprint, split, horizons)
        if saved is not None:
            log.info("fold %d/%d: done before, read from %s", k + 1, bt.folds, path)
            folds.append(saved)
            continue
        result = {**run_fold(k, split, cfg, bt, store, horizons), "fingerprint": fingerprint}
        atomic_write_json(path, result)
        folds.append(result)
    tokens, per_token = per_token_sums(folds)
    report = {
        "note": "research tool, not financial advice",
        "store": str(store.dir),
        "by": bt.by,
        "folds": bt.folds,
        "horizons": list(horizons),
        "every": bt.every,
        "context": bt.context,
        "quantile_levels": list(QuantileLoss.levels),
        "tokens": tokens,
        "fixed_model": bt.load_model,
        "settings": to_dict(cfg.sections()),
        "fold_summary": [
            {k: f[k] for k in ("fold", "train_tokens", "val_tokens", "test_tokens", "ridge_penalty", "seconds")}
            for f in folds
        ],
        "seconds": time.perf_counter() - started,
        "metrics": summarize(per_token, horizons, bt.bootstrap, cfg.data.seed),
        "events": summarize_events(folds, bt.bootstrap, cfg.data.seed),
    }
    report["pictures"] = [str(p.relative_to(out)) for p in plot_backtest(report, out / "img")]
    if bt.save_forecasts:
        files = [out / "folds" / f"fold{k}_forecasts.parquet" for k in range(len(splits))]
        parts = [pd.read_parquet(f) for f in files if f.exists()]
        atomic_write(
            out / "forecasts.parquet", lambda tmp: pd.concat(parts, ignore_index=True).to_parquet(tmp), ".parquet"
        )
        report["forecasts"] = "forecasts.parquet"
    atomic_write_json(out / "backtest.json", report)
    atomic_write(out / "backtest.md", lambda p: p.write_text(backtest_markdown(report)), suffix=".md")
    return report


# --------------------------------------------------------------------------------------------- report

LABELS = {
    "model": "pumpcast (median; mean for direction)",
    "model_raw": "pumpcast network alone, uncalibrated",
    "persistence": "persistence (no change)",
    "drift": "drift (last hour's mean return)",
    "ridge": "ridge on lagged returns, volume, imbalance",
    "empirical": "empirical quantiles of the context",
}


def _ci(cell: list[float] | None, digits: int = 3) -> str:
    if cell is None:
        return ""
    v, lo, hi = cell
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _plain(cell: list[float] | None, digits: int = 4) -> str:
    return "" if cell is None else f"{cell[0]:.{digits}f}"


def backtest_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one table per horizon and subset, the model beside every baseline."""
    lines = [
        "# pumpcast backtest",
        "",
        "Research tool, not financial advice.",
        "",
        f"Store `{report['store']}`, {report['folds']} folds by {report['by']}"
        + (f", fixed model `{report['fixed_model']}`" if report["fixed_model"] else ", a model trained per fold")
        + f"; {len(report['tokens'])} test tokens; every {report['every']} origin(s); {report['seconds']:.0f} s.",
        "Target: log(p[t+h] / p[t]). Skill = 1 - MAE / MAE(persistence) of the median; direction judged on the "
        "mean (no move counts one half); pinball: mean over the quantile levels; coverage of the central 50/80/90% "
        "intervals. Brackets: 95% bootstrap intervals over tokens.",
    ]
    for subset, title in (("all", "All origins"), ("pump", "Pump windows (1 h before to 2 h after a pump)")):
        lines += ["", f"## {title}"]
        for h, rows in report["metrics"][subset].items():
            if not rows:
                continue
            lines += [
                "",
                f"### h = {h} steps (n = {next(iter(rows.values()))['n']})",
                "",
                "| method | skill | RMSE | directional accuracy | pinball | cover 50% | cover 80% | cover 90% |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for method, m in rows.items():
                lines.append(
                    f"| {LABELS[method]} | {_ci(m.get('skill'))} | {_plain(m.get('rmse'))} | "
                    f"{_ci(m.get('directional_accuracy'))} | {_plain(m.get('pinball'), 5)} | "
                    f"{_plain(m.get('cov50'), 3)} | {_ci(m.get('cov80'))} | {_plain(m.get('cov90'), 3)} |"
                )
    if report.get("events"):
        lines += [
            "",
            "## Pump events (thresholds chosen on each fold's validation tokens, the z-scores' windows and "
            "thresholds on its training and validation tokens, to at most "
            f"{report['settings']['pump']['max_false_alarms_per_day']:g} false alarm per day there; "
            "delays in bars, negative = early)",
            "",
            "| detector | detected | early | false alarms / day | median delay (steps) | AUPRC |",
            "|---|---|---|---|---|---|",
        ]
        for name, m in report["events"].items():
            lines.append(
                f"| {name} | {m['detected']}/{m['events']}: {_ci(m['recall'], 2)} | "
                f"{m['early']}/{m['events']}: {_ci(m['early_rate'], 2)} | "
                f"{_ci(m['false_alarms_per_day'], 2)} | {_ci(m['median_delay_steps'], 1)} | {_ci(m['auprc'])} |"
            )
    lines += [
        "",
        "## Folds",
        "",
        "| fold | train | validation | test | ridge penalty per horizon | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for f in report["fold_summary"]:
        lines.append(
            f"| {f['fold']} | {f['train_tokens']} | {f['val_tokens']} | {f['test_tokens']} | "
            f"{', '.join(f'{p:g}' for p in f['ridge_penalty'])} | {f['seconds']:.0f} |"
        )
    if report.get("pictures"):
        lines += ["", *[f"![{p}]({p})" for p in report["pictures"]]]
    return "\n".join(lines) + "\n"
