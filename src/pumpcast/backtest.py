"""Cross-validated backtests over a store of many tokens: the model beside the strongest simple baselines.

Like Darts' `historical_forecasts` and NeuralForecast's `cross_validation`, for many tokens at once:

- folds by token: whole tokens are held out; each fold trains a model on the other tokens (a share of them,
  preferring tokens with events, validates: early stopping, calibration, the ridge penalty), then scores the
  held-out tokens. No test token is seen in training, validation or any choice made on validation.
- folds by time (rolling origin): every token is cut into folds + 1 blocks; fold k (from 0) scores block
  k + 1 and trains on the blocks before it (their last val_ratio validates). With a model file given, that one
  model is scored on every fold instead (no retraining).

Each fold's model is scored on its test part by scoring.py (the same code `evaluate` uses): per horizon, for
the model and every baseline, the metrics of metrics.py (skill against persistence, RMSE, direction of the
mean, pinball loss, coverage and width of the 50/80/90% intervals), overall and in pump windows, with 95%
bootstrap intervals over tokens; with a pump head, each fold's pump events too, at the thresholds chosen on
that fold's validation tokens. Each fold's scores are saved when it ends (scoring.FoldScores), so an
interrupted backtest resumes at the next fold; every scored forecast can be kept as a long-format frame.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pumpcast.config import BacktestConfig, TrainConfig, replace_train, to_dict
from pumpcast.files import atomic_write, atomic_write_json
from pumpcast.losses import QuantileLoss
from pumpcast.modelfile import load_model_file, require_store_fit
from pumpcast.schema import DataError
from pumpcast.scoring import (
    FoldScores,
    event_table,
    fold_token_scores,
    forecast_tables,
    per_token_sums,
    summarize,
    summarize_events,
)
from pumpcast.splits import Split, make_split, tokens_with_events
from pumpcast.store import TokenDataManager

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------------------------- the run


def _fingerprint(cfg: TrainConfig, bt: BacktestConfig, store: TokenDataManager) -> str:
    """What a saved fold was made with: every setting but where the report goes, the store's tokens as they
    are now (key, the write that made it, steps) and the fixed model's bytes, so that a fold saved before the
    store or the model changed is scored again, never reused for other tokens."""
    settings = to_dict({**cfg.sections(), "backtest": replace(bt, output_dir="")})
    tokens = {str(t): [e.key, e.txid, e.steps] for t, e in store.entries().items()}
    model = hashlib.sha256(Path(bt.load_model).read_bytes()).hexdigest() if bt.load_model else ""
    state = {"settings": settings, "tokens": tokens, "model": model}
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _saved_fold(path: Path, fingerprint: str, split: Split, horizons: tuple[int, ...]) -> FoldScores | None:
    """Fold k's saved scores, when the file exists, is whole and was made with this fingerprint and split;
    None (and, for a damaged or inconsistent file, a line saying it is scored again) otherwise."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
            return None
        fold = FoldScores.from_json(saved, horizons)
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as exc:
        log.warning("%s: damaged or of another format (%s); scoring this fold again", path, type(exc).__name__)
        return None
    if fold.test_tokens != split.tokens("test") or not set(fold.tokens) <= set(fold.test_tokens):
        log.warning("%s: does not match this fold's tokens; scoring this fold again", path)
        return None
    return fold


def run_fold(
    k: int, split: Split, cfg: TrainConfig, bt: BacktestConfig, store: TokenDataManager, horizons: tuple[int, ...]
) -> FoldScores:
    """Train (or load) fold k's model, then score its test part beside the baselines (scoring.py)."""
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
    frames: list[pd.DataFrame] | None = [] if bt.save_forecasts else None
    scores = fold_token_scores(bundle, store, split, horizons, bt.every, bt.context, frames, fold=k)
    if frames:
        path = folder / f"fold{k}_forecasts.parquet"
        atomic_write(path, lambda tmp: pd.concat(frames, ignore_index=True).assign(fold=k).to_parquet(tmp), ".parquet")
    scores.train_seconds, scores.seconds = trained_s, time.perf_counter() - started
    log.info("fold %d/%d: scored %d test token(s) in %.0f s", k + 1, bt.folds, len(scores.tokens), scores.seconds)
    return scores


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
        result = run_fold(k, split, cfg, bt, store, horizons)
        result.fingerprint = fingerprint
        atomic_write_json(path, result.to_json())
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
            {k: getattr(f, k) for k in ("fold", "train_tokens", "val_tokens", "test_tokens", "ridge_penalty")}
            | {"seconds": f.seconds}
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
        *forecast_tables(report["metrics"]),
    ]
    if report.get("events"):
        lines += [
            "",
            "## Pump events (thresholds chosen on each fold's validation tokens, or with cross-fitting on all its "
            "training tokens scored out of fold; the z-scores' windows and thresholds on its training and validation "
            f"tokens; to at most {report['settings']['pump']['max_false_alarms_per_day']:g} false alarm per day "
            "there. detector: the one `detect` uses, as each fold's model file names it. Delays and the within "
            "columns: seconds from the announced time to the alarm line, printed at its bar's close; early = "
            "before the announced bar)",
            *event_table(report["events"]),
        ]
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
