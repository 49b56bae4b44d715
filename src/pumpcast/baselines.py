"""The simple forecasts every model is judged beside, each computed from the past only.

Targets are h-step log price changes from a forecast origin (the first unknown step; its last known step is
origin - 1): log(p[origin - 1 + h] / p[origin - 1]).

- persistence: no change (0);
- drift: the mean one-step log return of the last DRIFT_STEPS steps, times h;
- ridge: a ridge regression per horizon on lagged one-step log returns, momentum, the last price against
  its recent means, the last non-zero return, log volume against its
  last-hour mean and buy/sell imbalance, fitted in closed form on training origins, its penalty chosen on
  validation origins (Hastie et al., ch. 3.4; in thin markets it mostly learns the bid-ask bounce);
- empirical quantiles: the quantiles of the context's own past h-step changes (the last `context` steps).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pumpcast.schema import BUYS, PRICE, SELLS, VOLUME, DataError

if TYPE_CHECKING:
    from pumpcast.store import TokenDataManager

DRIFT_STEPS = 60
RETURN_LAGS = 10  # one-step returns the ridge reads
MOMENTUM_STEPS = (5, 15, 60)  # log change over the last k steps
ACTIVITY_LAGS = 3  # steps of volume and imbalance the ridge reads
ACTIVITY_WINDOW = 60  # volume is read against its mean over this many steps
#: Steps of history a baseline needs before an origin.
WARMUP = max(DRIFT_STEPS, max(MOMENTUM_STEPS), ACTIVITY_WINDOW) + 1
RIDGE_PENALTIES = tuple(10.0**k for k in range(-1, 8))


def log_price(features: np.ndarray) -> np.ndarray:
    return np.log(features[:, PRICE])


def changes(features: np.ndarray, origins: np.ndarray, horizons: tuple[int, ...]) -> np.ndarray:
    """(n, len(horizons)) actual log price changes from each origin's last known step (NaN past the end)."""
    lp = log_price(features)
    last = np.asarray(origins) - 1
    out = np.full((last.size, len(horizons)), np.nan)
    for j, h in enumerate(horizons):
        ok = last + h < lp.size
        out[ok, j] = lp[last[ok] + h] - lp[last[ok]]
    return out


def drift(features: np.ndarray, origins: np.ndarray, horizons: tuple[int, ...]) -> np.ndarray:
    """(n, len(horizons)) drift forecasts of the log price change."""
    lp = log_price(features)
    last = np.asarray(origins) - 1
    slope = (lp[last] - lp[last - DRIFT_STEPS]) / DRIFT_STEPS
    return slope[:, None] * np.asarray(horizons, dtype=np.float64)[None, :]


def _trailing_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean of x over the `window` steps ending at each step (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(x.size)
    lo = np.maximum(0, idx + 1 - window)
    return (c[idx + 1] - c[lo]) / (idx + 1 - lo)


def ridge_features(features: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """(n, d) what the ridge reads at each origin, from steps before it only."""
    lp = log_price(features)
    ret = np.diff(lp, prepend=lp[0])
    last = np.asarray(origins) - 1
    volume = np.nan_to_num(features[:, VOLUME])
    scale = _trailing_mean(volume, ACTIVITY_WINDOW)
    rel_volume = np.log1p(np.divide(volume, scale, out=np.zeros_like(volume), where=scale > 0))
    buys, sells = np.nan_to_num(features[:, BUYS]), np.nan_to_num(features[:, SELLS])
    total = buys + sells
    imbalance = np.divide(buys - sells, total, out=np.zeros_like(total), where=total > 0)
    cols = [ret[last - j] for j in range(RETURN_LAGS)]
    cols += [lp[last] - lp[last - k] for k in MOMENTUM_STEPS]
    # where the last trade sat against the recent ones: a price carried over quiet bars still bounces back
    mean_lp = {k: _trailing_mean(lp, k) for k in MOMENTUM_STEPS}
    cols += [lp[last] - mean_lp[k][last] for k in MOMENTUM_STEPS]
    moved = np.flatnonzero(ret != 0)
    pos = np.searchsorted(moved, last, side="right") - 1  # the last step at or before `last` that moved
    cols.append(np.where(pos >= 0, ret[moved[np.maximum(pos, 0)]], 0.0) if moved.size else np.zeros(last.size))
    cols += [rel_volume[last - j] for j in range(ACTIVITY_LAGS)]
    cols += [imbalance[last - j] for j in range(ACTIVITY_LAGS)]
    return np.stack(cols, axis=1)


@dataclass
class Ridge:
    """Ridge regressions, one per horizon, on standardised features with an unpenalised intercept."""

    mean: np.ndarray  # (d,)
    scale: np.ndarray  # (d,)
    coef: np.ndarray  # (d, n_horizons)
    intercept: np.ndarray  # (n_horizons,)
    penalty: np.ndarray  # (n_horizons,) the chosen penalties

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, d) features -> (n, n_horizons) forecasts of the log price change."""
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept


def fit_ridge(
    x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, penalties: tuple[float, ...] = RIDGE_PENALTIES
) -> Ridge:
    """Fit on (x, y) for every penalty and keep, per horizon, the one with the lowest validation squared error
    (NaN targets are left out). Closed form: seconds for 100k origins."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    xs, xv = (x - mean) / scale, (x_val - mean) / scale
    gram, d = xs.T @ xs, xs.shape[1]
    coef = np.zeros((d, y.shape[1]))
    intercept = np.zeros(y.shape[1])
    chosen = np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        ok, okv = np.isfinite(y[:, j]), np.isfinite(y_val[:, j])
        a, yc = xs[ok], y[ok, j] - y[ok, j].mean()
        g = gram if ok.all() else a.T @ a
        best = np.inf
        for lam in penalties:
            w = np.linalg.solve(g + lam * np.eye(d), a.T @ yc)
            b = y[ok, j].mean()
            err = float(np.mean((xv[okv] @ w + b - y_val[okv, j]) ** 2)) if okv.any() else 0.0
            if err < best:
                best, coef[:, j], intercept[j], chosen[j] = err, w, b, lam
    return Ridge(mean, scale, coef, intercept, chosen)


def fit_ridge_ranges(
    store: TokenDataManager,
    train: Mapping[int, tuple[int, int]],
    val: Mapping[int, tuple[int, int]],
    horizons: tuple[int, ...],
    first: int,
) -> Ridge:
    """The ridge fitted on every origin of the training ranges with `first` steps of history before it, its
    penalty chosen on the validation ranges' origins (targets never leave their range)."""

    def design(name: str, ranges: Mapping[int, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for t, (a, b) in sorted(ranges.items()):
            feats = store.read_features(t)[:b]
            origins = np.arange(max(a, first), b)
            if origins.size:
                xs.append(ridge_features(feats, origins))
                ys.append(changes(feats, origins, horizons))
        if not xs:
            raise DataError(f"no {name} origins with {first} steps of history for the ridge baseline")
        return np.concatenate(xs), np.concatenate(ys)

    return fit_ridge(*design("training", train), *design("validation", val))


def empirical_quantiles(
    log_prices: np.ndarray, steps: tuple[int, ...], levels: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Log prices of context windows (B, L) -> the quantiles (B, len(steps), len(levels)) and means
    (B, len(steps)) of the h-step changes seen inside each window, for each h in steps (< L)."""
    changes = [log_prices[:, h:] - log_prices[:, :-h] for h in steps]
    return (
        np.stack([np.quantile(c, levels, axis=1).T for c in changes], axis=1),
        np.stack([c.mean(axis=1) for c in changes], axis=1),
    )


def context_windows(features: np.ndarray, origins: np.ndarray, context: int) -> np.ndarray:
    """(n, context) log prices of the `context` steps before each origin (origins >= context)."""
    return sliding_window_view(log_price(features), context)[np.asarray(origins) - context]
