"""The statistics a quant checks first on a market series, computed alike for synthetic and real tokens.

They answer "does the simulator look like a real market?": heavy tails, volatility clustering, no linear
predictability of returns, |return|-volume coupling, balanced calm order flow, and the shape of pumps.
"""

from __future__ import annotations

import numpy as np

from pumpcast.schema import BUYS, PRICE, SELLS, VOLUME, Event

#: Steps around an event left out of "calm" statistics.
CALM_MARGIN = 120


def _acf(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    denom = float((x * x).sum())
    return float((x[:-lag] * x[lag:]).sum() / denom) if denom > 0 else float("nan")


def series_stats(features: np.ndarray, events: list[Event]) -> dict[str, float]:
    """Return-distribution and order-flow statistics of one token's raw features (T, 6)."""
    r = np.diff(np.log(features[:, PRICE]))
    vol = features[1:, VOLUME]
    out: dict[str, float] = {}
    m2 = r.var()
    out["excess_kurtosis"] = float(((r - r.mean()) ** 4).mean() / m2**2 - 3.0) if m2 > 0 else float("nan")
    out["acf_abs_r_1_10"] = float(np.mean([_acf(np.abs(r), k) for k in range(1, 11)]))
    out["acf_r_1"] = _acf(r, 1)
    out["corr_abs_r_volume"] = (
        float(np.corrcoef(np.abs(r), vol)[0, 1]) if vol.std() > 0 and r.std() > 0 else float("nan")
    )
    calm = np.ones(features.shape[0], dtype=bool)
    for e in events:
        calm[max(0, e.start - CALM_MARGIN) : max(e.end, e.start) + CALM_MARGIN] = False
    buys, sells = features[calm, BUYS], features[calm, SELLS]
    total = np.nansum(buys) + np.nansum(sells)
    out["calm_buy_share"] = float(np.nansum(buys) / total) if total > 0 else float("nan")
    out["zero_return_share"] = float(np.mean(r == 0))
    return out


def pump_shape(price: np.ndarray, start: int, search: int = 10) -> dict[str, float] | None:
    """Peak gain, minutes from start to peak and share of the gain lost 60 steps after the peak.

    The reference price is 3 steps before the start (pump groups pre-buy a minute or two early); the peak is
    the highest price from 2 steps before to `search` steps after the start.
    """
    if start - 3 < 0 or start + search + 61 > price.size:
        return None
    p0 = price[start - 3]
    window = price[start - 2 : start + search + 1]
    k = int(np.argmax(window))
    peak_step = start - 2 + k
    peak = window[k]
    gain = peak / p0 - 1.0
    after = price[peak_step + 60]
    retrace = (peak - after) / (peak - p0) if peak > p0 else float("nan")
    return {"peak_gain": float(gain), "minutes_to_peak": float(peak_step - start), "retrace_60": float(retrace)}


def summarize(rows: list[dict[str, float]]) -> dict[str, tuple[float, float, float]]:
    """(10th percentile, median, 90th percentile) of each statistic over tokens or events."""
    keys = rows[0].keys() if rows else []
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows], dtype=float)
        v = v[np.isfinite(v)]
        out[k] = tuple(float(q) for q in np.percentile(v, [10, 50, 90])) if v.size else (np.nan,) * 3
    return out
