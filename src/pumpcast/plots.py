"""The seed's pictures: per-token features and correlations, the data splits, and forecasts vs actuals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from pumpcast.files import atomic_write  # noqa: E402
from pumpcast.schema import FEATURES, TokenSeries  # noqa: E402
from pumpcast.splits import SPLITS, Split  # noqa: E402

EVENT_COLORS = {
    "pump_and_dump": "tab:red",
    "news": "tab:purple",
    "trading_burst": "tab:orange",
    "liquidity_add": "tab:green",
    "liquidity_withdrawal": "tab:olive",
    "rug_pull": "black",
}
SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
UNITS = {
    "price": "quote / token",
    "volume": "quote",
    "liquidity": "quote",
    "buys": "trades",
    "sells": "trades",
    "market_cap": "quote",
}


def _save(fig: plt.Figure, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"), suffix=".png")
    plt.close(fig)
    return path


def _spans_decades(values: np.ndarray) -> bool:
    v = values[np.isfinite(values) & (values > 0)]
    return v.size > 0 and v.max() / v.min() > 100


def _unit(tok: TokenSeries, name: str) -> str:
    """A feature's unit for this token: the quote asset where known, base units for base volume."""
    if name == "volume" and tok.volume_unit == "base":
        return f"{tok.symbol.split('/')[0]}, base" if "/" in tok.symbol else "base units"
    return UNITS[name].replace("quote", tok.unit_label) if name != "buys" and name != "sells" else UNITS[name]


def _times(tok: TokenSeries) -> pd.DatetimeIndex:
    return pd.to_datetime(tok.timestamps, unit="ms", utc=True)


def plot_features(tok: TokenSeries, path: str | Path) -> Path:
    """Six panels over time, log axes where a feature spans decades, events marked, absent features said so."""
    times = _times(tok)
    fig, axes = plt.subplots(len(FEATURES), 1, figsize=(12, 13), sharex=True)
    seen: dict[str, object] = {}
    for i, (ax, name) in enumerate(zip(axes, FEATURES, strict=True)):
        values = tok.features[:, i]
        ax.set_ylabel(f"{name}\n({_unit(tok, name)})", fontsize=9)
        if not np.isfinite(values).any():
            ax.text(
                0.5,
                0.5,
                f"{name}: absent in this data (not zero)",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="gray",
                fontsize=11,
            )
            ax.set_yticks([])
            continue
        log_axis = _spans_decades(values)
        if name in ("volume", "buys", "sells"):  # spiky activity: one stem per step, empty where zero
            active = np.isfinite(values) & (values > 0)
            floor = values[active].min() / 2 if log_axis and active.any() else 0.0
            ax.vlines(times[active], floor, values[active], lw=0.7, color="tab:blue")
        else:
            ax.plot(times, values, lw=0.7, color="tab:blue")
        if log_axis:
            ax.set_yscale("log")
        for e in tok.events:
            color = EVENT_COLORS.get(e.type, "gray")
            end = e.end if e.end >= e.start else e.start
            handle = ax.axvspan(
                times[e.start],
                times[min(end, len(times) - 1)],
                color=color,
                alpha=0.25,
                lw=0,
                label=e.type.replace("_", " "),
            )
            if e.end <= e.start:
                handle = ax.axvline(times[e.start], color=color, lw=1.0, alpha=0.8, label=e.type.replace("_", " "))
            seen.setdefault(e.type, handle)
        ax.grid(alpha=0.3)
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    axes[-1].set_xlabel("time (UTC)")
    if seen:
        axes[0].legend(list(seen.values()), [k.replace("_", " ") for k in seen], loc="upper left", fontsize=8, ncol=3)
    fig.suptitle(f"token {tok.token_id}: {tok.key} ({tok.source})", fontsize=12)
    fig.tight_layout()
    return _save(fig, Path(path))


def correlation_frame(tok: TokenSeries) -> pd.DataFrame:
    """Per-step series whose correlations mean something: log changes of level features, log1p of activity."""
    cols = {}
    for i, name in enumerate(FEATURES):
        v = tok.features[:, i]
        if not np.isfinite(v).any():
            continue
        if name in ("price", "liquidity", "market_cap"):
            with np.errstate(divide="ignore", invalid="ignore"):
                cols[f"{name} log-change"] = np.concatenate([[np.nan], np.diff(np.log(v))])
        else:
            cols[f"log1p {name}"] = np.log1p(v)
    return pd.DataFrame(cols)


def plot_correlations(tok: TokenSeries, path: str | Path) -> Path:
    """Feature correlation heatmap; absent features are listed in the title rather than shown as zeros."""
    frame = correlation_frame(tok)
    corr = frame.corr()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    sns.heatmap(
        corr,
        annot=True,
        fmt=".2f",
        vmin=-1,
        vmax=1,
        cmap="vlag",
        square=True,
        ax=ax,
        cbar_kws={"label": "Pearson correlation"},
    )
    absent = [n for n, ok in tok.available.items() if not ok]
    title = f"token {tok.token_id}: feature correlations"
    if absent:
        title += f"\nabsent (not shown): {', '.join(absent)}"
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_splits(split: Split, lengths: dict[int, int], path: str | Path, max_tokens: int = 40) -> Path:
    """One bar per token, coloured by which split each step's targets belong to; a time split, the same for
    every token in shares of its length, is one bar."""
    if split.strategy == "time" and lengths:
        first = min(lengths)
        one = Split(split.strategy, split.test_ratio, split.val_ratio, split.train_token_ratio, split.seed)
        one.ranges = {name: {first: r[first]} for name, r in split.ranges.items() if first in r}
        fig = _split_bars(one, {first: lengths[first]}, [first], [f"each of {len(lengths)} token(s)"])
        return _save(fig, Path(path))
    ids = sorted(lengths)[:max_tokens]
    fig = _split_bars(split, lengths, ids, [f"token {t}" for t in ids], len(lengths) > max_tokens)
    return _save(fig, Path(path))


def _split_bars(split: Split, lengths: dict[int, int], ids: list[int], labels: list[str], cut: bool = False):
    fig, ax = plt.subplots(figsize=(11, 0.35 * len(ids) + 1.8))
    for row, t in enumerate(ids):
        ax.barh(row, lengths[t], color="lightgray", height=0.6)
        for name in SPLITS:
            a, b = split.ranges.get(name, {}).get(t, (0, 0))
            if b > a:
                ax.barh(row, b - a, left=a, color=SPLIT_COLORS[name], height=0.6)
    ax.set_yticks(range(len(ids)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("step")
    handles = [plt.Rectangle((0, 0), 1, 1, color=SPLIT_COLORS[n]) for n in SPLITS]
    handles.append(plt.Rectangle((0, 0), 1, 1, color="lightgray"))
    ax.legend(
        handles,
        ["train", "validation", "test", "unused"],
        loc="upper center",
        ncol=4,
        fontsize=8,
        bbox_to_anchor=(0.5, -0.12 if len(ids) > 3 else -0.3 if len(ids) > 1 else -0.8),
    )
    more = f" (first {len(ids)} tokens)" if cut else ""
    ax.set_title(f"data splits: strategy {split.strategy!r}{more}")
    fig.tight_layout()
    return fig


@dataclass
class ForecastPanel:
    """One token's forecast picture: the price shortly before the origin, the forecast from it and (if known)
    the actual path; the token gives the times, the events to mark and the unit."""

    token: TokenSeries
    origin: int  # index of the first forecast step
    history: np.ndarray
    forecast: np.ndarray
    actual: np.ndarray | None = None
    bands: dict[float, tuple[np.ndarray, np.ndarray]] | None = None  # central interval share -> (low, high)


def _x(tok: TokenSeries, steps: np.ndarray) -> np.ndarray:
    """Bar times (UTC) for step indices, extrapolated past the token's end at its interval."""
    ms = int(tok.timestamps[0]) + steps.astype(np.int64) * tok.interval_ms
    return pd.to_datetime(ms, unit="ms", utc=True).to_numpy()


def plot_forecasts(panels: Sequence[ForecastPanel], path: str | Path, title: str) -> Path:
    """Actual vs forecast price over time, one panel per token, events inside the window marked."""
    n = len(panels)
    fig, axes = plt.subplots(n, 1, figsize=(12, 3.2 * n + 0.9), squeeze=False)
    for ax, p in zip(axes[:, 0], panels, strict=True):
        tok, o = p.token, p.origin
        start, stop = o - len(p.history), o + len(p.forecast)
        ax.plot(_x(tok, np.arange(start, o)), p.history, color="gray", lw=0.8, label="history")
        if p.actual is not None:
            ax.plot(_x(tok, np.arange(o, o + len(p.actual))), p.actual, color="tab:blue", lw=0.9, label="actual")
        for share, (low, high) in sorted((p.bands or {}).items(), reverse=True):
            ax.fill_between(
                _x(tok, np.arange(o, stop)), low, high, color="tab:red", alpha=0.12, lw=0, label=f"{share:.0%} interval"
            )
        ax.plot(_x(tok, np.arange(o, stop)), p.forecast, color="tab:red", lw=1.1, label="forecast (median)")
        values = np.concatenate([p.history, p.forecast] + ([p.actual] if p.actual is not None else []))
        if _spans_decades(values):
            ax.set_yscale("log")
        ax.axvline(_x(tok, np.array([o]))[0], color="black", lw=0.6, ls="--")
        for e in tok.events:
            if start <= e.start < stop:
                color = EVENT_COLORS.get(e.type, "gray")
                ax.axvline(_x(tok, np.array([e.start]))[0], color=color, lw=1.2, label=e.type.replace("_", " "))
        ax.set_ylabel(f"price ({tok.unit_label})")
        ax.set_title(f"token {tok.token_id}: {tok.symbol}", fontsize=10)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), loc="upper left", fontsize=8)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    axes[-1, 0].set_xlabel("time (UTC)")
    fig.suptitle(title + " (research tool, not financial advice)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # room for the title above the panels
    return _save(fig, Path(path))


def plot_event(
    tok: TokenSeries,
    probability: np.ndarray,
    threshold: float,
    event,
    path: str | Path,
    horizon: int,
    around: int = 120,
) -> Path:
    """Price, pump probability and alarms from `around` steps before to after one pump event."""
    from pumpcast.events import DETECT_AFTER_MS, alarm_onsets, steps_in

    lo, hi = max(0, event.start - around), min(len(tok.features), event.start + around)
    t = _x(tok, np.arange(lo, hi))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True, height_ratios=[2, 1])
    price = tok.features[lo:hi, 0]
    ax1.plot(t, price, color="tab:blue", lw=0.9)
    if _spans_decades(price):
        ax1.set_yscale("log")
    after = steps_in(DETECT_AFTER_MS, tok.interval_ms)
    window = _x(tok, np.array([event.start - horizon, event.start + after, event.start]))
    ax1.axvspan(window[0], window[1], color="tab:red", alpha=0.12, label="detection window")
    ax1.axvline(window[2], color="tab:red", lw=1.0, label="pump start")
    ax1.set_ylabel(f"price ({tok.unit_label})")
    ax1.legend(loc="upper left", fontsize=8)
    ax1.grid(alpha=0.3)
    p = probability[lo:hi]
    ax2.plot(t, p, color="tab:purple", lw=0.9, label="pump probability")
    ax2.axhline(threshold, color="black", ls="--", lw=0.8, label=f"threshold {threshold:.3g}")
    onsets = alarm_onsets(np.nan_to_num(p) >= threshold)
    ax2.scatter(
        # an alarm is raised when its bar closes
        _x(tok, onsets + lo + 1),
        np.ones_like(onsets, dtype=float) * 1.02,
        marker="v",
        color="tab:red",
        s=30,
        label="alarm",
        clip_on=False,
    )
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("probability")
    ax2.set_xlabel("time (UTC)")
    ax2.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    ax2.legend(loc="upper left", fontsize=8)
    ax2.grid(alpha=0.3)
    when = pd.Timestamp(int(tok.timestamps[event.start]), unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")
    fig.suptitle(
        f"token {tok.token_id} ({tok.key}): pump at step {event.start}, {when} (research tool, not financial advice)",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_backtest(report: dict, folder: str | Path) -> list[Path]:
    """A backtest's two pictures: skill per horizon with 95% intervals (every method with a median), and
    interval coverage per horizon against the nominal 50/80/90% (the methods with quantiles)."""
    folder = Path(folder)
    horizons = [int(h) for h in report["horizons"]]
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, subset, title in zip(axes, ("all", "pump"), ("all origins", "pump windows"), strict=True):
        rows = report["metrics"][subset]
        for k, method in enumerate(("model", "model_raw", "ridge", "empirical", "drift")):
            cells = [rows.get(str(h), {}).get(method, {}).get("skill") for h in horizons]
            x = np.arange(len(horizons)) + (k - 2) * 0.12
            v = np.array([c[0] if c else np.nan for c in cells])
            err = np.array([[c[0] - c[1], c[2] - c[0]] if c else [np.nan, np.nan] for c in cells]).T
            label = "network alone" if method == "model_raw" else method
            ax.errorbar(x, v, yerr=err, fmt="o", capsize=3, label=label)
        ax.axhline(0, color="black", lw=0.8, label="persistence")
        ax.set_xticks(np.arange(len(horizons)), [str(h) for h in horizons])
        ax.set_xlabel("steps ahead")
        ax.set_ylabel("MAE skill vs persistence")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, folder / "backtest_skill.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = report["metrics"]["all"]
    for method, style in (("model", "-o"), ("empirical", "--s")):
        for name, nominal, color in (
            ("cov50", 0.5, "tab:blue"),
            ("cov80", 0.8, "tab:orange"),
            ("cov90", 0.9, "tab:green"),
        ):
            v = [rows.get(str(h), {}).get(method, {}).get(name, [np.nan])[0] for h in horizons]
            ax.plot(np.arange(len(horizons)), v, style, color=color, label=f"{method} {int(nominal * 100)}%")
            ax.axhline(nominal, color=color, lw=0.6, ls=":")
    ax.set_xticks(np.arange(len(horizons)), [str(h) for h in horizons])
    ax.set_xlabel("steps ahead")
    ax.set_ylabel("share of outcomes inside the interval")
    ax.set_title("interval coverage (dotted: nominal)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths.append(_save(fig, folder / "backtest_coverage.png"))
    return paths
