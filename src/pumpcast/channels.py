"""The network's optional input channels beside the six features: what the baselines win with, made causal.

A model's config names the channel groups it reads (`ModelConfig.inputs`); each group is a few per-bar
columns computed from the bar and the CONTEXT bars before it only, so appending bars never changes an earlier
value and a live bar gets to the bit the value a replay of the whole history gives (every value comes from its
own window of raw values, never from a running sum over the history):

- trades: the trade-side extras (schema.EXTRA_FEATURES): taker buy share of quote volume, buy and sell quote
  volume against the mean volume of the last CONTEXT bars (log1p of the ratio), log1p of taker buy and sell
  orders and of rush orders (taker buy orders filled in 2+ trades at one millisecond);
- zscores: causal z-scores of volume (against the same mean), of log1p buys and of log1p rush orders against
  the previous CONTEXT bars, the standard deviation floored at Z_FLOOR (the baselines' z-scores, detectors.py);
- calendar: minute of the hour and hour of the day of the bar's start as sin/cos, known for future bars too
  (a rollout advances them by the bar length; pump groups announce at round times).

A channel the data lacks is absent (NaN, masked), never zero: candles without taker sides give no trades
columns, a history without times no calendar. Wide inputs are the six raw features followed by these columns,
(T, 6 + C); windows.py and the model treat the extra columns as inputs only (never forecast targets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pumpcast.schema import BUYS, EXTRA_FEATURES, FEATURES, VOLUME, ConfigError, DataError, TokenSeries

if TYPE_CHECKING:
    from pumpcast.store import TokenDataManager

#: Bars a trades or z-score value of bar t reads: t and the CONTEXT bars before it.
CONTEXT = 60
#: The z-scores' standard deviation floor (log units): one ordinary trade after a quiet hour is no surprise.
Z_FLOOR = 0.5
#: z-scores are clipped to this magnitude (an idle hour then one trade would otherwise be huge).
Z_CLIP = 10.0
#: Channel groups and their columns, in the order they follow the six features.
GROUPS: dict[str, tuple[str, ...]] = {
    "trades": ("buy_share", "buy_volume_rel", "sell_volume_rel", "buy_orders_log", "sell_orders_log", "rush_log"),
    "zscores": ("volume_z", "buys_z", "rush_z"),
    "calendar": ("minute_sin", "minute_cos", "hour_sin", "hour_cos"),
}
#: Rows computed at a time (bounded memory for long histories: the window matrix is ROWS x (CONTEXT + 1)).
ROWS = 16_384
_PERIODS_MS = {"minute": 3_600_000, "hour": 86_400_000}  # minute of the hour: a 1-hour cycle; hour of the day


def parse_inputs(inputs: str) -> tuple[str, ...]:
    """`"trades,calendar"` -> the groups in GROUPS order; "" -> none. Unknown names are a ConfigError."""
    names = [p.strip() for p in inputs.split(",") if p.strip()]
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        raise ConfigError(
            f"inputs {inputs!r}: unknown channel group(s) {unknown}; choose from {', '.join(GROUPS)}", "inputs"
        )
    return tuple(g for g in GROUPS if g in names)


def channel_names(groups: Sequence[str]) -> tuple[str, ...]:
    """The columns of the given groups, in order."""
    return tuple(name for g in groups for name in GROUPS[g])


def _windows(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """(hi - lo, CONTEXT + 1) contiguous copies of x[t - CONTEXT : t + 1] for t in [lo, hi), NaN before x's
    start: each row holds exactly the raw values its bar may read, so its reductions do not depend on where the
    history began or how many rows are computed at once."""
    padded = np.concatenate([np.full(CONTEXT, np.nan), x])
    return np.ascontiguousarray(sliding_window_view(padded, CONTEXT + 1)[lo:hi])


def _mean(w: np.ndarray) -> np.ndarray:
    """Row means over the finite values (NaN where none)."""
    ok = np.isfinite(w)
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, w, 0.0).sum(axis=1) / n, np.nan)


def _zscore(w: np.ndarray) -> np.ndarray:
    """z-score of each row's last value against the row's earlier values (at least a tenth of them finite)."""
    past, now = w[:, :-1], w[:, -1]
    ok = np.isfinite(past)
    n = ok.sum(axis=1)
    mean = _mean(past)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(ok, (past - mean[:, None]) ** 2, 0.0).sum(axis=1) / (n - 1)
        z = (now - mean) / np.maximum(np.sqrt(var), Z_FLOOR)
    return np.clip(np.where(n >= max(2, CONTEXT // 10), z, np.nan), -Z_CLIP, Z_CLIP)


def _log1p_rel(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log1p(w / np.where(scale > 0, scale, np.nan)[:, None])


def _rows(features: np.ndarray, extras: np.ndarray | None, groups: Sequence[str], lo: int, hi: int) -> np.ndarray:
    """The trades and zscores columns of bars [lo, hi)."""
    nan = np.full((hi - lo, CONTEXT + 1), np.nan)
    ex = {n: (_windows(extras[:, i], lo, hi) if extras is not None else nan) for i, n in enumerate(EXTRA_FEATURES)}
    volume = _windows(features[:, VOLUME], lo, hi)
    scale = _mean(volume)  # mean volume of the bar and the CONTEXT bars before it
    cols = []
    if "trades" in groups:
        bv, sv = ex["buy_volume"][:, -1], ex["sell_volume"][:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            cols.append(np.where(bv + sv > 0, bv / (bv + sv), np.nan))
        cols += [_log1p_rel(ex[n][:, -1:], scale)[:, 0] for n in ("buy_volume", "sell_volume")]
        cols += [np.log1p(ex[n][:, -1]) for n in ("buy_orders", "sell_orders", "rush_orders")]
    if "zscores" in groups:
        cols.append(_zscore(_log1p_rel(volume, scale)))
        cols.append(_zscore(np.log1p(_windows(features[:, BUYS], lo, hi))))
        cols.append(_zscore(np.log1p(ex["rush_orders"])))
    return np.stack(cols, axis=1) if cols else np.zeros((hi - lo, 0))


def calendar(timestamps: np.ndarray) -> np.ndarray:
    """(T, 4) sin/cos of the minute of the hour and the hour of the day of each bar start (Unix ms)."""
    ts = np.asarray(timestamps, dtype=np.int64)
    cols = []
    for period in _PERIODS_MS.values():
        angle = 2 * np.pi * (ts % period) / period
        cols += [np.sin(angle), np.cos(angle)]
    return np.stack(cols, axis=1)


def advance_calendar(last: np.ndarray, steps: int, interval_ms: int) -> np.ndarray:
    """Calendar columns (B, 4) of a last known bar -> those of the next `steps` bars (B, steps, 4), by rotating
    each (sin, cos) pair by the bar length: the clock is the one input known for future bars."""
    out = np.empty((last.shape[0], steps, 4))
    k = np.arange(1, steps + 1)
    for j, period in enumerate(_PERIODS_MS.values()):
        s, c = last[:, 2 * j, None], last[:, 2 * j + 1, None]
        turn = 2 * np.pi * (k * interval_ms % period) / period
        out[..., 2 * j] = s * np.cos(turn) + c * np.sin(turn)
        out[..., 2 * j + 1] = c * np.cos(turn) - s * np.sin(turn)
    return out


def covariates(
    features: np.ndarray,
    extras: np.ndarray | None,
    timestamps: np.ndarray | None,
    groups: Sequence[str],
    lo: int = 0,
) -> np.ndarray:
    """(T - lo, C) channel columns of bars [lo, T) of raw features (T, 6), extras (T, 5) or None and bar
    starts (T,) or None; NaN where the data lacks a channel."""
    features = np.asarray(features, dtype=np.float64)
    n = features.shape[0]
    parts = []
    if "trades" in groups or "zscores" in groups:
        parts.append(
            np.concatenate(
                [_rows(features, extras, groups, a, min(a + ROWS, n)) for a in range(lo, n, ROWS)]
                or [np.zeros((0, len(channel_names([g for g in groups if g != "calendar"]))))]
            )
        )
    if "calendar" in groups:
        parts.append(calendar(timestamps[lo:]) if timestamps is not None else np.full((n - lo, 4), np.nan))
    return np.concatenate(parts, axis=1) if parts else np.zeros((n - lo, 0))


def model_inputs(tok: TokenSeries, groups: Sequence[str]) -> np.ndarray:
    """A token's wide inputs (T, 6 + C): its raw features, then the groups' channel columns."""
    if not groups:
        return tok.features
    return np.concatenate([tok.features, covariates(tok.features, tok.extras, tok.timestamps, groups)], axis=1)


def check_width(history: np.ndarray, groups: Sequence[str], name: str = "history") -> np.ndarray:
    """A raw history (..., T, 6) or wide one (..., T, 6 + C) as wide inputs: six-feature histories get every
    channel absent (NaN, masked), as a model reads a series that lacks them."""
    width = len(FEATURES) + len(channel_names(groups))
    if history.shape[-1] == width:
        return history
    if history.shape[-1] == len(FEATURES):
        pad = np.full((*history.shape[:-1], width - len(FEATURES)), np.nan)
        return np.concatenate([history, pad], axis=-1)
    raise DataError(
        f"{name} has {history.shape[-1]} columns per step; this model reads {len(FEATURES)} features "
        f"({', '.join(FEATURES)}) or those and its {width - len(FEATURES)} channel(s) "
        f"({', '.join(channel_names(groups))})"
    )


def read_inputs(store: TokenDataManager, token_id: int, groups: Sequence[str]) -> np.ndarray:
    """A stored token's wide inputs (its raw features alone for a model without channels)."""
    return model_inputs(store.read(token_id), groups) if groups else store.read_features(token_id)


def union(*groups: Sequence[str]) -> tuple[str, ...]:
    """The groups of all the given lists, in GROUPS order."""
    return tuple(g for g in GROUPS if any(g in gs for gs in groups))


def columns(have: Sequence[str], want: Sequence[str], features: bool = True) -> np.ndarray:
    """Indices into wide inputs of the groups `have` of (the six features and) the columns of `want` (a subset)."""
    names = channel_names(have)
    picked = [len(FEATURES) + names.index(n) for n in channel_names(want)]
    return np.asarray([*(range(len(FEATURES)) if features else ()), *picked], dtype=np.intp)
