"""What a quantile model's price forecast learns on validation data after training, per step ahead h of its
first pass (1..horizon), so that it does not lose to the simple forecasts it is judged beside. Measured on
the real shared events (README, "Real data"), each part earned its place:

- quantile averaging: the model's quantiles are averaged level by level with the empirical quantiles of
  the window's own past h-step changes (Vincentization, Genest 1992), w_h * model + (1 - w_h) * empirical,
  w_h chosen on validation by pinball loss. The empirical quantiles know each token's own scale; the
  network knows the shape. The average beat both on every horizon.
- shrink: the median's move is scaled by s in [0, 1] with the lowest validation MAE, per step and per
  volatility regime (the last 30 steps' mean absolute return against the window's: below the validation
  median, up to its 90th percentile, above), and only where it beats "no change" on validation by more than
  two standard errors; otherwise s = 0. Most one-minute changes of a thin market are exactly zero, so a noisy
  median is pulled to "no change" where it has no edge and kept where it has one.
- mean: a_h * (the model's mean) + b_h * (a ridge regression's forecast), least squares on validation (a
  stacked ensemble, Wolpert 1992). The ridge (baselines.py) is fitted on the training ranges, its penalty on
  validation. Direction is judged on the mean.

Everything reads only the history given (the ridge needs baselines.WARMUP steps of it). Rescaling each
quantile's spread on validation was tried and dropped: it lowered coverage and raised pinball loss on the
held-out tokens (3 validation tokens are too few to fit 7 x 60 factors).

All of it is stored in the model file and applied by the Forecaster; later passes of a long rollout build
on the calibrated first pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from pumpcast import baselines
from pumpcast.channels import read_inputs
from pumpcast.losses import mean_weights
from pumpcast.metrics import pinball
from pumpcast.schema import PRICE, ModelFileError

if TYPE_CHECKING:
    from pumpcast.store import TokenDataManager

SHRINK_GRID = np.linspace(0.0, 1.0, 21)
WEIGHT_GRID = np.linspace(0.0, 1.0, 11)
REGIME_QUANTILES = (0.5, 0.9)  # volatility regimes: calm, normal, agitated
RECENT_STEPS = 30  # the volatility regime compares these last steps with the whole window
SHRINK_BLOCK = 60  # origins per block in the shrink's standard error
MAX_ORIGINS = 20_000  # validation origins used (evenly spread), bounding the time calibration takes


def context_stats(windows: np.ndarray, horizon: int, levels: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Raw windows (B, L, 6) -> empirical quantiles of each window's own past h-step log price changes for
    h = 1..horizon (B, horizon, K), and its volatility regime score (B,): log of the mean absolute one-step
    return of the last RECENT_STEPS steps over that of the whole window."""
    lp = np.log(windows[..., PRICE])
    emp = np.stack([np.quantile(lp[:, h:] - lp[:, :-h], levels, axis=1).T for h in range(1, horizon + 1)], axis=1)
    moves = np.abs(np.diff(lp, axis=1))
    score = np.log((moves[:, -RECENT_STEPS:].mean(axis=1) + 1e-6) / (moves.mean(axis=1) + 1e-6))
    return emp, score


@dataclass
class ForecastCalibration:
    """Per-step calibration of the first pass's log price change; see the module docstring."""

    weight: np.ndarray  # (H,) the model's weight in the quantile average (the empirical one has 1 - weight)
    edges: np.ndarray  # (2,) volatility regime edges
    shrink: np.ndarray  # (H, 3) median shrink per step and regime
    blend: np.ndarray  # (H, 2) weights of the model's mean and the ridge forecast
    ridge: baselines.Ridge  # H outputs: steps 1..H

    def apply(
        self, quantiles: np.ndarray, history: np.ndarray, levels: tuple[float, ...], seq_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The network's quantiles of the log price change (B, H, K) and the raw histories (B, T >= seq_len, 6)
        -> calibrated quantiles (B, H, K) and the mean (B, H)."""
        med = levels.index(0.5)
        window = history[:, -seq_len:]
        emp, score = context_stats(window, quantiles.shape[1], levels)
        mix = self.weight[:, None] * quantiles + (1 - self.weight[:, None]) * emp  # (B, H, K)
        regime = np.digitize(score, self.edges)  # (B,)
        centre = mix[..., med] * self.shrink[:, regime].T  # (B, H)
        out = np.sort(centre[..., None] + mix - mix[..., med : med + 1], axis=-1)
        ridge = self.ridge.predict(
            np.concatenate([baselines.ridge_features(h, np.array([h.shape[0]])) for h in history])
        )
        mean = self.blend[:, 0] * (quantiles @ mean_weights(levels)) + self.blend[:, 1] * ridge
        return out, mean

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name).tolist() for f in fields(self) if f.name != "ridge"}
        out["ridge"] = {f.name: getattr(self.ridge, f.name).tolist() for f in fields(self.ridge)}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], horizon: int, where: str = "model file") -> ForecastCalibration:
        """From the model file, every array checked: finite, and shaped for the model's horizon."""
        try:
            arrays = {k: np.asarray(v, dtype=np.float64) for k, v in d.items() if k != "ridge"}
            ridge = baselines.Ridge(**{k: np.asarray(v, dtype=np.float64) for k, v in d["ridge"].items()})
            cal = cls(**arrays, ridge=ridge)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: damaged forecast_calibration ({type(exc).__name__}: {exc})") from exc
        shapes = {"weight": (horizon,), "edges": (2,), "shrink": (horizon, 3), "blend": (horizon, 2)}
        for name, shape in shapes.items():
            value = getattr(cal, name)
            if value.shape != shape or not np.isfinite(value).all():
                raise ModelFileError(
                    f"{where}: forecast_calibration.{name} must be {shape} finite numbers for horizon {horizon}; "
                    "retrain or restore the file"
                )
        for f in fields(cal.ridge):
            if not np.isfinite(getattr(cal.ridge, f.name)).all():
                raise ModelFileError(f"{where}: forecast_calibration.ridge.{f.name} holds NaN or infinite values")
        return cal


def _shrink(y: np.ndarray, median: np.ndarray) -> float:
    """The shrink with the lowest validation MAE among those that beat "no change" (s = 0) by more than two
    standard errors, else 0. Errors are averaged over blocks of SHRINK_BLOCK consecutive origins first, since
    neighbouring origins share most of their future."""
    blocks = y.size // SHRINK_BLOCK
    if blocks < 5:
        return 0.0
    n = blocks * SHRINK_BLOCK
    gain = np.abs(SHRINK_GRID[:, None] * median[None, :n] - y[None, :n]) - np.abs(y[None, :n])  # (S, n)
    per_block = gain.reshape(len(SHRINK_GRID), blocks, SHRINK_BLOCK).mean(axis=2)
    mean, se = per_block.mean(axis=1), per_block.std(axis=1, ddof=1) / np.sqrt(blocks)
    better = mean + 2 * se < 0
    return float(SHRINK_GRID[int(np.argmin(np.where(better, mean, np.inf)))]) if better.any() else 0.0


def fit_calibration(
    quantiles: np.ndarray,
    empirical: np.ndarray,
    score: np.ndarray,
    ridge_val: np.ndarray,
    actual: np.ndarray,
    levels: tuple[float, ...],
    ridge: baselines.Ridge,
) -> ForecastCalibration:
    """Choose the calibration from validation origins: the network's quantiles (n, H, K) of the log price
    change, the empirical quantiles (n, H, K) and regime scores (n,) of their windows (context_stats), the
    ridge's forecasts (n, H) and what happened (n, H; NaN unknown)."""
    n_steps = quantiles.shape[1]
    med = levels.index(0.5)
    edges = np.quantile(score, REGIME_QUANTILES) if score.size else np.zeros(2)
    regime = np.digitize(score, edges)
    weight, shrink, blend = np.ones(n_steps), np.zeros((n_steps, 3)), np.zeros((n_steps, 2))
    mean = quantiles @ mean_weights(levels)
    for h in range(n_steps):
        ok = np.isfinite(actual[:, h])
        if ok.sum() < 10:
            shrink[h], blend[h, 0] = 1.0, 1.0
            continue
        y, q, e = actual[ok, h], quantiles[ok, h], empirical[ok, h]
        losses = [float(pinball(y, w * q + (1 - w) * e, levels).mean()) for w in WEIGHT_GRID]
        weight[h] = WEIGHT_GRID[int(np.argmin(losses))]
        centre = weight[h] * q[:, med] + (1 - weight[h]) * e[:, med]
        shrink[h] = [_shrink(y[regime[ok] == r], centre[regime[ok] == r]) for r in range(3)]
        blend[h] = np.linalg.lstsq(np.stack([mean[ok, h], ridge_val[ok, h]], axis=1), y, rcond=None)[0]
    return ForecastCalibration(weight, edges, shrink, blend, ridge)


def calibrate_forecasts(
    forecast: Callable[[np.ndarray], np.ndarray],
    store: TokenDataManager,
    train_ranges: Mapping[int, tuple[int, int]],
    val_ranges: Mapping[int, tuple[int, int]],
    seq_len: int,
    horizon: int,
    levels: tuple[float, ...],
    groups: Sequence[str] = (),
) -> ForecastCalibration:
    """The calibration of a model whose uncalibrated first pass is `forecast` (histories (B, seq_len, 6 + C) of
    a model that reads the channel groups ->
    quantiles of the log price change (B, horizon, K)), from validation origins spread evenly over val_ranges
    (at most MAX_ORIGINS); its ridge is fitted on train_ranges. Needs seq_len > horizon + 1 (the empirical
    quantiles) and seq_len >= baselines.WARMUP (the ridge)."""
    steps = tuple(range(1, horizon + 1))
    first = max(seq_len, baselines.WARMUP)
    ridge = baselines.fit_ridge_ranges(store, train_ranges, val_ranges, steps, baselines.WARMUP)
    total = sum(max(0, b - max(a, first)) for a, b in val_ranges.values())
    every = max(1, -(-total // MAX_ORIGINS))
    parts: list[list[np.ndarray]] = [[], [], [], [], []]
    for t, (a, b) in sorted(val_ranges.items()):
        origins = np.arange(max(a, first), b, every)
        if origins.size == 0:
            continue
        feats = read_inputs(store, t, groups)[:b]
        for i in range(0, origins.size, 512):
            o = origins[i : i + 512]
            windows = feats[(o - seq_len)[:, None] + np.arange(seq_len)]
            parts[0].append(forecast(windows))
            emp, score = context_stats(windows, horizon, levels)
            parts[1].append(emp)
            parts[4].append(score)
        parts[2].append(ridge.predict(baselines.ridge_features(feats, origins)))
        parts[3].append(baselines.changes(feats, origins, steps))
    if not parts[0]:
        return ForecastCalibration(
            np.ones(horizon), np.zeros(2), np.ones((horizon, 3)), np.eye(2)[[0] * horizon], ridge
        )
    q, emp, ridge_val, actual, score = (np.concatenate(p) for p in parts)
    return fit_calibration(q, emp, score, ridge_val, actual, levels, ridge)
