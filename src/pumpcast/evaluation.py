"""Honest forecast evaluation: errors of log price per horizon bucket, always beside the persistence baseline
(the last known price) on exactly the same steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pumpcast.forecasting import Forecaster
from pumpcast.schema import PRICE, PumpcastError
from pumpcast.splits import Split
from pumpcast.store import TokenDataManager

BUCKET_EDGES = (1, 11, 101, 1001, 10_001)


def horizon_buckets(steps: int) -> list[tuple[int, int]]:
    """Inclusive step ranges 1-10, 11-100, 101-1000, 1001-10000, cut at `steps`."""
    out = []
    for a, b in zip(BUCKET_EDGES[:-1], BUCKET_EDGES[1:], strict=True):
        if a > steps:
            break
        out.append((a, min(b - 1, steps)))
    return out


@dataclass
class TokenForecast:
    """One token's forecast from one origin: history before it, the forecast and the actual path (if known)."""

    token_id: int
    origin: int  # index of the first forecast step
    history: np.ndarray  # (T_hist, 6) raw
    forecast: np.ndarray  # (steps, 6) raw
    actual: np.ndarray  # (n_actual <= steps, 6) raw; shorter when the data ends first


def forecast_metrics(items: list[TokenForecast], steps: int) -> dict[str, dict[str, float]]:
    """Per horizon bucket, pooled over tokens: MAE and RMSE of log price for the model and for persistence,
    skill = 1 - MAE / MAE_persistence, and directional accuracy (share of steps where the forecast moves the
    same way from the origin price as the actual price did, among steps where it moved)."""
    out: dict[str, dict[str, float]] = {}
    for a, b in horizon_buckets(steps):
        err, err_p, hits, moves = [], [], 0, 0
        for it in items:
            n = min(b, it.actual.shape[0])
            if n < a:
                continue
            p0 = np.log(it.history[-1, PRICE])
            actual = np.log(it.actual[a - 1 : n, PRICE])
            pred = np.log(it.forecast[a - 1 : n, PRICE])
            err.append(pred - actual)
            err_p.append(p0 - actual)
            moved = actual != p0
            moves += int(moved.sum())
            hits += int((np.sign(pred - p0)[moved] == np.sign(actual - p0)[moved]).sum())
        if not err:
            continue
        e, ep = np.concatenate(err), np.concatenate(err_p)
        mae, mae_p = float(np.abs(e).mean()), float(np.abs(ep).mean())
        out[f"{a}-{b}"] = {
            "n": int(e.size),
            "mae_log": mae,
            "rmse_log": float(np.sqrt((e**2).mean())),
            "mae_log_persistence": mae_p,
            "rmse_log_persistence": float(np.sqrt((ep**2).mean())),
            "skill": 1 - mae / mae_p if mae_p > 0 else float("nan"),
            "directional_accuracy": hits / moves if moves else float("nan"),
        }
    return out


def format_metrics(metrics: dict[str, dict[str, float]], title: str) -> str:
    """The metrics table as text, model beside persistence."""
    lines = [
        title,
        f"{'steps':>11} {'n':>7} {'MAE log':>9} {'persist.':>9} {'RMSE log':>9} {'persist.':>9} "
        f"{'skill':>7} {'dir.acc':>7}",
    ]
    for bucket, m in metrics.items():
        lines.append(
            f"{bucket:>11} {m['n']:>7d} {m['mae_log']:>9.4f} {m['mae_log_persistence']:>9.4f} "
            f"{m['rmse_log']:>9.4f} {m['rmse_log_persistence']:>9.4f} {m['skill']:>7.3f} "
            f"{m['directional_accuracy']:>7.3f}"
        )
    return "\n".join(lines)


def forecast_origin(split: Split, token_id: int, seq_len: int, length: int) -> int:
    """Where a token's test forecast starts: its test part, once seq_len steps of history exist."""
    rng = split.ranges.get("test", {}).get(token_id)
    if rng is None or rng[1] <= rng[0]:
        raise PumpcastError(
            f"token {token_id} has no test part under split strategy {split.strategy!r}; "
            f"test tokens: {split.tokens('test')}"
        )
    origin = max(rng[0], seq_len)
    if origin >= length:
        raise PumpcastError(f"token {token_id}: its test part starts too late for {seq_len} steps of history")
    return origin


def forecast_test_tokens(
    forecaster: Forecaster, store: TokenDataManager, split: Split, token_ids: list[int], steps: int
) -> list[TokenForecast]:
    """Forecast `steps` ahead from the start of each token's test part, all tokens in one batched rollout."""
    known = set(store.token_ids())
    missing = [t for t in token_ids if t not in known]
    if missing:
        raise PumpcastError(f"token(s) {missing} not in the store {store.dir}; it holds ids {sorted(known)}")
    series = {t: store.read_features(t) for t in token_ids}
    origins = {t: forecast_origin(split, t, forecaster.seq_len, series[t].shape[0]) for t in token_ids}
    windows = np.stack([series[t][origins[t] - forecaster.seq_len : origins[t]] for t in token_ids])
    forecast = forecaster.rollout(windows, steps)
    return [
        TokenForecast(t, origins[t], series[t][: origins[t]], forecast[i], series[t][origins[t] : origins[t] + steps])
        for i, t in enumerate(token_ids)
    ]
