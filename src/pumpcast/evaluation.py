"""Judging a trained model on held-out data, always beside baselines on exactly the same steps:

- forecast metrics of log price per horizon bucket, model vs persistence (the last known price) and drift;
- `run_test`: the seed's test mode (short and extended forecasts from the start of test parts, metrics,
  plots, metrics.json);
- `evaluate_store`: the evaluation report (rolling-origin forecasts and pump-event metrics of the model vs
  the baselines at thresholds chosen on validation data, report.md/json and a picture per event).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pumpcast import baselines
from pumpcast.channels import read_inputs
from pumpcast.config import TestConfig
from pumpcast.events import TokenScores, is_real, pump_events
from pumpcast.files import atomic_write, atomic_write_json
from pumpcast.forecasting import Forecaster
from pumpcast.metrics import EventCounts, direction_credit, pooled_counts, skill
from pumpcast.modelfile import require_store_fit
from pumpcast.plots import ForecastPanel, plot_correlations, plot_event, plot_features, plot_forecasts, plot_splits
from pumpcast.schema import PRICE, DataError, ModelFileError, TokenSeries
from pumpcast.scoring import (
    event_table,
    fold_token_scores,
    forecast_tables,
    per_token_sums,
    summarize,
    summarize_events,
)
from pumpcast.splits import Split
from pumpcast.store import TokenDataManager

log = logging.getLogger(__name__)
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
    forecast: np.ndarray  # (steps, 6) raw, the median
    actual: np.ndarray  # (n_actual <= steps, 6) raw; shorter when the data ends first
    quantiles: np.ndarray | None = None  # (steps, 6, levels) raw, of a quantile model
    levels: tuple[float, ...] = (0.5,)


def forecast_metrics(items: list[TokenForecast], steps: int) -> dict[str, dict[str, float]]:
    """Per horizon bucket, pooled over tokens, the metrics of metrics.py on log price: MAE and RMSE for the
    model's median path, for persistence (the last price) and for drift (baselines.drift), skill against
    persistence, and the direction of the median path (no move on either side counts one half)."""
    out: dict[str, dict[str, float]] = {}
    for a, b in horizon_buckets(steps):
        err, err_p, err_d, credit = [], [], [], []
        for it in items:
            n = min(b, it.actual.shape[0])
            if n < a:
                continue
            p0 = np.log(it.history[-1, PRICE])
            actual = np.log(it.actual[a - 1 : n, PRICE]) - p0
            pred = np.log(it.forecast[a - 1 : n, PRICE]) - p0
            ahead = tuple(range(a, n + 1))
            drift = baselines.drift(it.history, np.array([it.history.shape[0]]), ahead)[0]
            err.append(pred - actual)
            err_p.append(-actual)
            err_d.append(drift - actual)
            credit.append(direction_credit(pred, actual))
        if not err:
            continue
        e, ep, ed = np.concatenate(err), np.concatenate(err_p), np.concatenate(err_d)
        mae, mae_p = float(np.abs(e).mean()), float(np.abs(ep).mean())
        out[f"{a}-{b}"] = {
            "n": int(e.size),
            "mae_log": mae,
            "rmse_log": float(np.sqrt((e**2).mean())),
            "mae_log_persistence": mae_p,
            "rmse_log_persistence": float(np.sqrt((ep**2).mean())),
            "mae_log_drift": float(np.abs(ed).mean()),
            "rmse_log_drift": float(np.sqrt((ed**2).mean())),
            "skill": float(skill(mae, mae_p)),
            "directional_accuracy": float(np.concatenate(credit).mean()),
        }
    return out


def format_metrics(metrics: dict[str, dict[str, float]], title: str) -> str:
    """The metrics table as text, model beside persistence."""
    lines = [
        title,
        f"{'steps':>11} {'n':>7} {'MAE log':>9} {'persist.':>9} {'drift':>9} {'RMSE log':>9} {'persist.':>9} "
        f"{'skill':>7} {'dir.acc':>7}",
    ]
    for bucket, m in metrics.items():
        lines.append(
            f"{bucket:>11} {m['n']:>7d} {m['mae_log']:>9.4f} {m['mae_log_persistence']:>9.4f} "
            f"{m['mae_log_drift']:>9.4f} "
            f"{m['rmse_log']:>9.4f} {m['rmse_log_persistence']:>9.4f} {m['skill']:>7.3f} "
            f"{m['directional_accuracy']:>7.3f}"
        )
    return "\n".join(lines)


def forecast_origin(split: Split, token_id: int, seq_len: int, length: int) -> int:
    """Where a token's test forecast starts: its test part, once seq_len steps of history exist."""
    rng = split.ranges.get("test", {}).get(token_id)
    if rng is None or rng[1] <= rng[0]:
        raise DataError(
            f"token {token_id} has no test part under split strategy {split.strategy!r}; "
            f"test tokens: {split.tokens('test')}"
        )
    origin = max(rng[0], seq_len)
    if origin >= length:
        raise DataError(f"token {token_id}: its test part starts too late for {seq_len} steps of history")
    return origin


def forecast_test_tokens(
    forecaster: Forecaster, store: TokenDataManager, split: Split, token_ids: list[int], steps: int
) -> list[TokenForecast]:
    """Forecast `steps` ahead from the start of each token's test part, all tokens in one batched rollout."""
    store.require(token_ids)
    series = {t: read_inputs(store, t, forecaster.bundle.config.groups) for t in token_ids}
    origins = {t: forecast_origin(split, t, forecaster.seq_len, series[t].shape[0]) for t in token_ids}
    windows = np.stack([series[t][origins[t] - forecaster.seq_len : origins[t]] for t in token_ids])
    levels = forecaster.quantile_levels
    quantiles = forecaster.quantiles(windows, steps)
    return [
        TokenForecast(
            t,
            origins[t],
            series[t][: origins[t]],
            quantiles[i, ..., levels.index(0.5)],
            series[t][origins[t] : origins[t] + steps],
            quantiles[i] if len(levels) > 1 else None,
            levels,
        )
        for i, t in enumerate(token_ids)
    ]


def _group(source: str) -> str:
    return "real" if is_real(source) else "synthetic"


def evaluate_store(
    forecaster: Forecaster,
    store: TokenDataManager,
    split: Split,
    output_dir: str | Path = "reports",
    horizons: tuple[int, ...] = (1, 5, 15, 60),
    every: int = 1,
    context: int = 500,
    bootstrap: int = 1000,
    seed: int = 0,
    max_pictures: int = 12,
) -> dict[str, Any]:
    """The evaluation report on the split's test part: a one-fold, fixed-model use of scoring.py, so its
    numbers are those `backtest --load-model` gives on the same split (forecast metrics per horizon beside the
    baselines with bootstrap intervals over tokens; event metrics of the model, the baselines and the ensemble
    at the thresholds chosen on validation data when the model was trained, never here, overall, by source and
    per token), and a picture around each event. Writes report.md, report.json and img/ under output_dir."""
    out = Path(output_dir)
    bundle = forecaster.bundle
    if not bundle.has_pump_head:
        raise ModelFileError("this model has no calibrated pump head; train it with pump_weight > 0")
    if not split.tokens("test"):
        raise DataError(f"split {split.strategy!r} has no test tokens; evaluate needs a split with a test part")
    require_store_fit(bundle, store, split.tokens("test"))
    pump = bundle.pump
    thresholds = pump.thresholds | {"detector": pump.thresholds[pump.detector]}
    pictures: list[str] = []
    sources: dict[int, str] = {}

    def draw(tok: TokenSeries, scores: dict[str, TokenScores]) -> None:
        sources[tok.token_id] = _group(tok.source)
        for e in pump_events(tok.events):
            used = scores["detector"].scores  # what `detect` would have said
            if len(pictures) < max_pictures and np.isfinite(used[min(e.start, len(used) - 1)]):
                path = out / "img" / f"event_token{tok.token_id}_step{e.start}.png"
                plot_event(tok, used, thresholds["detector"], e, path, pump.horizon)
                pictures.append(str(path.relative_to(out)))

    log.info("scoring %d test token(s) at horizons %s, every %d origin(s)", len(split.tokens("test")), horizons, every)
    fold = fold_token_scores(bundle, store, split, horizons, every, context, on_events=draw)
    _, per_token = per_token_sums([fold])
    counts = fold.events or {}
    report: dict[str, Any] = {
        "note": "research tool, not financial advice",
        "split_strategy": split.strategy,
        "test_tokens": split.tokens("test"),
        "horizons": list(horizons),
        "every": every,
        "pump_horizon": pump.horizon,
        "max_false_alarms_per_day": pump.max_false_alarms_per_day,
        "thresholds": thresholds,
        "detector": pump.detector,
        "validation_events": pump.val_events,
        "cross_fit": pump.cross_fit,
        "alarm_output": pump.alarm_output,
        "validation": pump.val_metrics,
        "forecasts": summarize(per_token, horizons, bootstrap, seed),
        "events": {
            "overall": {name: pooled_counts(rows).to_dict() for name, rows in counts.items()},
            "intervals": summarize_events([fold], bootstrap, seed),
            "by_source": {
                group: {name: _pooled(rows, sources, group) for name, rows in counts.items()}
                for group in sorted(set(sources.values()))
            },
            "per_token": [
                {"token": t, "source": sources[t], **{name: _token_row(rows[i]) for name, rows in counts.items()}}
                for i, t in enumerate(c.token for c in counts.get("model", []))
            ],
        },
        "pictures": pictures,
    }
    atomic_write_json(out / "report.json", report)
    atomic_write(out / "report.md", lambda p: p.write_text(report_markdown(report)), suffix=".md")
    return report


def _pooled(rows: list[EventCounts], sources: dict[int, str], group: str) -> dict[str, Any]:
    return pooled_counts([c for c in rows if sources[c.token] == group]).to_dict()


def _token_row(counts: EventCounts) -> dict[str, float]:
    m = pooled_counts([counts])
    return {k: getattr(m, k) for k in ("events", "recall", "false_alarms_per_day", "median_delay_steps")}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    lines = [
        "# pumpcast evaluation report",
        "",
        "Research tool, not financial advice.",
        "",
        f"Split `{report['split_strategy']}`, test tokens {report['test_tokens']}. Pump horizon K = "
        f'{report["pump_horizon"]} steps; the model alarms on its "{report["alarm_output"]}" probability (chosen '
        "on validation). Alarm thresholds chosen on validation data to at most "
        f"{report['max_false_alarms_per_day']} false alarm(s) per day: "
        + ", ".join(f"{k} {_fmt(float(v))}" for k, v in report["thresholds"].items())
        + ".",
        "",
        "## Forecasts of the log price change vs the baselines (scored as `backtest` scores a fold)",
        "",
        "Skill = 1 - MAE / MAE(persistence) of the median; direction judged on the mean (no move counts one "
        "half); pinball: mean over the quantile levels. Brackets: 95% bootstrap intervals over tokens.",
        *forecast_tables(report["forecasts"]),
    ]
    head = (
        "| detector | events | recall | early warnings | false alarms / day | median delay (steps) | AUPRC |",
        "|---|---|---|---|---|---|---|",
    )

    def rows(metrics: dict[str, dict[str, float]]) -> list[str]:
        return [
            f"| {name} | {m['events']} | {_fmt(m['recall'])} | {_fmt(m['early_warning_rate'])} | "
            f"{_fmt(m['false_alarms_per_day'])} | {_fmt(m['median_delay_steps'])} | {_fmt(m['auprc'])} |"
            for name, m in metrics.items()
        ]

    lines += [
        "",
        "## Pump events: model vs baselines (test part; 95% bootstrap intervals over tokens)",
        *event_table(report["events"]["intervals"]),
    ]
    by_source = report["events"]["by_source"]
    for group, metrics in by_source.items() if len(by_source) > 1 else ():
        lines += ["", f"### {group} tokens", "", *head, *rows(metrics)]
    lines += [
        "",
        "### Per token (recall / false alarms per day)",
        "",
        "| token | source | " + " | ".join(report["events"]["overall"]) + " |",
        "|---|---|" + "---|" * len(report["events"]["overall"]),
    ]
    for row in report["events"]["per_token"]:
        cells = [
            f"{_fmt(row[n]['recall'])} / {_fmt(row[n]['false_alarms_per_day'])}" for n in report["events"]["overall"]
        ]
        lines.append(f"| {row['token']} | {row['source']} | " + " | ".join(cells) + " |")
    if report["pictures"]:
        lines += ["", "## Around each event", ""] + [f"![{p}]({p})" for p in report["pictures"]]
    return "\n".join(lines) + "\n"


def run_test(forecaster: Forecaster, store: TokenDataManager, split: Split, test: TestConfig) -> dict[str, Any]:
    """The seed's test mode: short and extended forecasts from the start of each selected token's test part,
    metrics beside persistence (printed), forecast plots, the split picture (show_data_splits), feature and
    correlation plots of the tokens, and predictions/metrics.json under test.output_dir."""
    out = Path(test.output_dir)
    if test.show_data_splits:
        path = plot_splits(split, store.lengths(), out / "img" / "data_splits.png")
        for name in ("train", "val", "test"):
            print(f"{name:>5}: tokens {split.tokens(name)}")
        print(f"wrote {path}")
    tokens = test.tokens() or split.tokens("test")[:1]
    require_store_fit(forecaster.bundle, store, tokens)
    longest = max(test.forecast, test.forecast_extended)
    log.info("forecasting %d steps from the start of the test part of token(s) %s", longest, tokens)
    items = forecast_test_tokens(forecaster, store, split, tokens, longest)
    report: dict[str, Any] = {
        "tokens": tokens,
        "split_strategy": split.strategy,
        "seq_length": forecaster.seq_len,
        "horizon": forecaster.horizon,
        "note": "research tool, not financial advice",
    }
    for name, n in (("short", test.forecast), ("extended", test.forecast_extended)):
        metrics = forecast_metrics([_cut(it, n) for it in items], n)
        report[name] = {"steps": n, "metrics": metrics}
        print(
            format_metrics(
                metrics,
                f"{name} forecast ({n} steps) from the start of the test part, tokens {tokens}: model vs persistence",
            )
        )
        path = plot_forecasts(
            [_panel(it, n, store.read(it.token_id)) for it in items],
            out / "predictions" / f"prediction_{name}.png",
            f"{name} forecast: {n} steps, rolled out on the model's own predictions "
            f"(rollout damping {forecaster.bundle.rollout_damping:g})",
        )
        print(f"wrote {path}")
    atomic_write_json(out / "predictions" / "metrics.json", report)
    for t in tokens:
        tok = store.read(t)
        plot_features(tok, out / "img" / f"token_{t}" / "features.png")
        plot_correlations(tok, out / "img" / f"token_{t}" / "correlations.png")
    print(f"wrote {out / 'predictions' / 'metrics.json'} and img/token_X/ for tokens {tokens}")
    return report


def _cut(item: TokenForecast, n: int) -> TokenForecast:
    q = item.quantiles[:n] if item.quantiles is not None else None
    return replace(item, forecast=item.forecast[:n], actual=item.actual[:n], quantiles=q)


def _panel(item: TokenForecast, n: int, token: TokenSeries) -> ForecastPanel:
    """One token's forecast plot panel: recent history, forecast (with its 50% and 80% intervals, if it has
    quantiles) and actual path of price."""
    shown = min(item.history.shape[0], max(2 * n, 200))
    bands = None
    if item.quantiles is not None:
        q, lv = item.quantiles[:n, PRICE], item.levels
        bands = {0.5: (q[:, lv.index(0.25)], q[:, lv.index(0.75)]), 0.8: (q[:, lv.index(0.1)], q[:, lv.index(0.9)])}
    return ForecastPanel(
        token=token,
        origin=item.origin,
        history=item.history[-shown:, PRICE],
        forecast=item.forecast[:n, PRICE],
        actual=item.actual[:n, PRICE],
        bands=bands,
    )
