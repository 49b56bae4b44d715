"""The statistics a quant checks first on a market series, computed alike for synthetic and real tokens.

They answer "could this be a real market?": heavy tails, bid-ask bounce, long memory of volatility, a loose
|return|-volume link in calm periods, and inside pump windows how busy, one-sided and persistent the flow is
and how the price rises and gives the gain back. Calm means away from pumps and rug pulls (the events that
real files label or that end a market), so those never count as calm returns. `inside_band` says which of
them a synthetic median puts inside the real 10-90% band.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pumpcast.schema import BUYS, PRICE, SELLS, VOLUME, Event

#: Steps around a pump or rug pull left out of calm statistics.
CALM_MARGIN = 120
#: Steps from a pump's start that make its window.
PUMP_WINDOW = 60
#: Lags of the |return| autocorrelation: 1-10 (clustering) and 60 (long memory).
ABS_LAGS = (*range(1, 11), 60)
#: Event types that are not calm and not normal market life.
EXCLUDED = ("pump_and_dump", "rug_pull")

CALM_STATS = (
    "excess_kurtosis",
    "hill_index",
    "acf_r_1",
    *(f"acf_abs_r_{k}" for k in ABS_LAGS),
    "corr_abs_r_log_volume",
    "calm_log_volume_acf_1",
)
PUMP_STATS = (
    "pump_zero_return_share",
    "pump_zero_trade_share",
    "pump_buy_share",
    "pump_volume_ratio",
    "pump_log_volume_acf_1",
    "peak_gain",
    "minutes_to_peak",
    "retrace_60",
)
#: The statistics scored, in table order.
STATS = CALM_STATS + PUMP_STATS


def _acf(x: np.ndarray, lag: int, ok: np.ndarray) -> float:
    """Autocorrelation at lag over the pairs whose both ends are ok (calm), centred on the ok values."""
    if ok.sum() < lag + 10:
        return float("nan")
    c = np.where(ok, x - x[ok].mean(), 0.0)
    denom = float((c * c).sum())
    both = ok[:-lag] & ok[lag:]
    return float((c[:-lag] * c[lag:])[both].sum() / denom * ok.sum() / max(both.sum(), 1)) if denom > 0 else np.nan


def hill_index(a: np.ndarray, tail: float = 0.05, min_k: int = 10) -> float:
    """Hill estimate of the tail index of the positive values of a (its top `tail` share): 2-4 for real
    returns, below 2 for tails so heavy that the variance barely exists."""
    a = np.sort(a[a > 0])[::-1]
    k = max(min_k, int(tail * a.size))
    if a.size <= k:
        return float("nan")
    spread = float(np.mean(np.log(a[:k] / a[k])))
    return 1.0 / spread if spread > 0 else float("inf")


def calm_mask(steps: int, events: list[Event]) -> np.ndarray:
    """True at steps at least CALM_MARGIN away from every pump window and rug pull."""
    calm = np.ones(steps, dtype=bool)
    for e in events:
        if e.type in EXCLUDED:
            calm[max(0, e.start - CALM_MARGIN) : max(e.end, e.start + PUMP_WINDOW) + CALM_MARGIN] = False
    return calm


def series_stats(features: np.ndarray, events: list[Event]) -> dict[str, float]:
    """Calm return and volume statistics of one token's raw features (T, 6)."""
    r = np.diff(np.log(features[:, PRICE]))
    calm = calm_mask(features.shape[0], events)
    ok = calm[1:] & calm[:-1] & np.isfinite(r)
    vol = np.nan_to_num(features[1:, VOLUME])
    out: dict[str, float] = {}
    rc = r[ok]
    m2 = rc.var() if rc.size else 0.0
    out["excess_kurtosis"] = float(((rc - rc.mean()) ** 4).mean() / m2**2 - 3.0) if m2 > 0 else float("nan")
    out["hill_index"] = hill_index(np.abs(rc))
    out["acf_r_1"] = _acf(np.where(ok, r, 0.0), 1, ok)
    for k in ABS_LAGS:
        out[f"acf_abs_r_{k}"] = _acf(np.where(ok, np.abs(r), 0.0), k, ok)
    scale = vol[ok].mean() if ok.any() else 0.0
    log_vol = np.log1p(vol / scale) if scale > 0 else None
    lv = log_vol[ok] if log_vol is not None else np.zeros(0)
    out["corr_abs_r_log_volume"] = (
        float(np.corrcoef(np.abs(rc), lv)[0, 1]) if lv.size and lv.std() > 0 and rc.std() > 0 else float("nan")
    )
    # how persistent calm volume is minute to minute: a too-smooth synthetic volume makes a spike too easy to see
    out["calm_log_volume_acf_1"] = _acf(np.where(ok, log_vol, 0.0), 1, ok) if log_vol is not None else float("nan")
    return out


def pump_stats(features: np.ndarray, events: list[Event]) -> list[dict[str, float]]:
    """Order-flow and shape statistics of each pump of one token whose window lies inside its series."""
    calm = calm_mask(features.shape[0], events)
    vol = np.nan_to_num(features[:, VOLUME])
    calm_vol = vol[calm].mean() if calm.any() else 0.0
    price = features[:, PRICE]
    out = []
    for e in events:
        shape = pump_shape(price, e.start) if e.type == "pump_and_dump" else None
        if shape is None or calm_vol <= 0:
            continue
        w = slice(e.start, e.start + PUMP_WINDOW)
        v, buys, sells = vol[w], features[w, BUYS], features[w, SELLS]
        lv = np.log1p(v / calm_vol)
        trades = np.nansum(buys) + np.nansum(sells)
        out.append(
            {
                "pump_zero_return_share": float(np.mean(np.diff(np.log(price[e.start - 1 : w.stop])) == 0)),
                "pump_zero_trade_share": float(np.mean(v == 0)),
                "pump_buy_share": float(np.nansum(buys) / trades) if trades > 0 else float("nan"),
                "pump_volume_ratio": float(v.mean() / calm_vol),
                "pump_log_volume_acf_1": _acf(lv, 1, np.ones(lv.size, dtype=bool)),
                **shape,
            }
        )
    return out


def pump_shape(price: np.ndarray, start: int, search: int = 10) -> dict[str, float] | None:
    """Peak gain, minutes from start to peak and share of the gain lost 60 steps after the peak.

    The reference price is 3 steps before the start (pump groups pre-buy a minute or two early); the peak is
    the highest price from 2 steps before to `search` steps after the start.
    """
    if start - 3 < 0 or start + max(search + 61, PUMP_WINDOW) > price.size:
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


#: (10th percentile, median, 90th percentile) of each statistic.
Bands = dict[str, tuple[float, float, float]]


def describe(series: Iterable[tuple[np.ndarray, list[Event]]]) -> tuple[Bands, int, int]:
    """The (10th percentile, median, 90th percentile) band of every statistic over series of (raw features,
    events): calm statistics over the series, pump statistics over their pumps; and how many of each."""
    rows, pumps = [], []
    for features, events in series:
        rows.append(series_stats(features, events))
        pumps += pump_stats(features, events)
    return summarize(rows) | summarize(pumps), len(rows), len(pumps)


def summarize(rows: list[dict[str, float]]) -> Bands:
    """(10th percentile, median, 90th percentile) of each statistic over tokens or events."""
    keys = rows[0].keys() if rows else []
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows], dtype=float)
        v = v[np.isfinite(v)]
        out[k] = tuple(float(q) for q in np.percentile(v, [10, 50, 90])) if v.size else (np.nan,) * 3
    return out


def inside_band(synthetic: Bands, real: Bands) -> dict[str, bool]:
    """For each statistic, whether the synthetic median lies inside the real 10-90% band."""
    return {k: bool(real[k][0] <= synthetic[k][1] <= real[k][2]) for k in STATS if k in synthetic and k in real}
