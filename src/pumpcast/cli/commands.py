"""What each command does: turn its namespace into config (once), call the Python API, print the result."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from pumpcast.cli.flags import to_config
from pumpcast.config import TestConfig, TrackingConfig, TrainConfig
from pumpcast.schema import ConfigError, DataError

#: Input columns that `pumpcast ingest` lets the user name with --NAME-col.
COLUMN_FLAGS = (
    "timestamp",
    "side",
    "price",
    "amount",
    "quote",
    "symbol",
    "address",
    "liquidity",
    "supply",
    "close",
    "volume",
)
PREDICT_BATCH = 256  # histories forecast together
CSV = {"index": False, "float_format": "%.10g", "date_format": "%Y-%m-%dT%H:%M:%SZ"}


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return to_config(args, args.sections)


def _train_config(conf: dict[str, Any]) -> TrainConfig:
    return TrainConfig(**{k: conf[k] for k in ("data", "model", "optim", "pump", "runtime")})


def generate(args: argparse.Namespace) -> None:
    from pumpcast.simulator import generate_to_store

    conf = _config(args)
    d = conf["data"]
    ids = generate_to_store(
        d.data_dir,
        d.num_tokens,
        d.timesteps,
        d.seed,
        d.interval,
        allow_mixed_intervals=conf["ingest"].allow_mixed_intervals,
        venue=d.venue,
    )
    print(f"generated {len(ids)} synthetic {d.venue.upper()} tokens x {d.timesteps} steps into {d.data_dir}")


def ingest(args: argparse.Namespace) -> None:
    from pumpcast.ingest import ingest_files

    conf = _config(args)
    d, ing = conf["data"], conf["ingest"]
    columns = {k: getattr(args, f"{k}_col") for k in COLUMN_FLAGS if getattr(args, f"{k}_col", None)}
    ids = ingest_files(
        args.kind,
        args.files,
        d.data_dir,
        d.interval,
        columns,
        ing.symbol,
        ing.key,
        ing.events,
        volume_unit=ing.volume_unit,
        allow_mixed_intervals=ing.allow_mixed_intervals,
    )
    print(f"ingested {len(ids)} token(s) into {d.data_dir}: ids {ids}")


def export(args: argparse.Namespace) -> None:
    from pumpcast.store import TokenDataManager

    TokenDataManager(_config(args)["data"].data_dir).export_csv(args.token_id, args.output, args.events_output)
    print(f"wrote {args.output}" + (f" and {args.events_output}" if args.events_output else ""))


def check(args: argparse.Namespace) -> int:
    """Exit status 1 when the store has problems (leftover files alone are not problems)."""
    from pumpcast.store import QUARANTINE, TokenDataManager

    store = TokenDataManager(_config(args)["data"].data_dir)
    if not store.dir.is_dir():
        raise DataError(f"{store.dir}: no such store directory")
    report = store.check(repair=args.repair)
    for line in report.repairs:
        print(f"repaired: {line}")
    for line in report.problems:
        print(f"problem: {line}")
    for path in report.orphans:
        print(f"orphan: {path}")
    if report.orphans:
        print(
            f"{len(report.orphans)} file(s) left over by interrupted writes; `pumpcast check --repair` moves them to "
            f"{store.dir / QUARANTINE}"
        )
    if report.quarantined:
        print(
            f"{len(report.quarantined)} file(s) in {store.dir / QUARANTINE} (moved there by repairs, never read "
            "again by pumpcast): look at them, then delete them yourself"
        )
    status = f"{len(report.problems)} problem(s)" if report.problems else "consistent"
    print(f"{store.dir}: {report.tokens} token(s), {status}")
    return 1 if report.problems else 0


def plot(args: argparse.Namespace) -> None:
    from pumpcast.config import parse_token_range
    from pumpcast.plots import plot_correlations, plot_features
    from pumpcast.store import TokenDataManager

    store = TokenDataManager(_config(args)["data"].data_dir)
    for t in parse_token_range(args.token_range, "token_range") if args.token_range else [args.token_id]:
        tok = store.read(t)
        out = Path(args.output_dir) / "img" / f"token_{t}"
        plot_features(tok, out / "features.png")
        plot_correlations(tok, out / "correlations.png")
        print(f"wrote {out}/features.png and {out}/correlations.png")


def train(args: argparse.Namespace) -> None:
    conf = _config(args)
    _train_and_test(_train_config(conf), conf["tracking"], None)


def test(args: argparse.Namespace) -> None:
    conf = _config(args)
    _test_saved_model(conf["data"], conf["test"], conf["tracking"])


def pump_trainer(args: argparse.Namespace) -> None:
    """The seed script: --test-mode tests a saved model; otherwise (tune with --optimize,) train, then test."""
    conf = _config(args)
    if args.test_mode:
        from pumpcast.threads import set_threads

        set_threads(conf["runtime"].threads)
        _test_saved_model(conf["data"], conf["test"], conf["tracking"])
        return
    cfg = _train_config(conf)
    if args.optimize:
        from pumpcast.tuning import tune

        cfg = tune(cfg, conf["tune"], tracking=conf["tracking"], verbose=args.verbose)
        print(f"training the final model with the best trial's configuration ({conf['tune'].best_config})")
    _train_and_test(cfg, conf["tracking"], conf["test"])


def tune(args: argparse.Namespace) -> None:
    from pumpcast.tuning import show, tune

    conf = _config(args)
    if args.show:
        print(show(conf["tune"]))
        return
    tune(_train_config(conf), conf["tune"], tracking=conf["tracking"], verbose=args.verbose)


def backtest(args: argparse.Namespace) -> None:
    from pumpcast.backtest import backtest

    conf = _config(args)
    report = backtest(_train_config(conf), conf["backtest"])
    out = Path(conf["backtest"].output_dir)
    print((out / "backtest.md").read_text())
    print(f"wrote {out / 'backtest.md'}, {out / 'backtest.json'} and {out / 'img'} ({report['seconds']:.0f} s)")


def _train_and_test(cfg: TrainConfig, tracking: TrackingConfig, test: TestConfig | None) -> None:
    """One MLflow run: train (fit), register if asked, then the seed's test mode on the trained model."""
    from pumpcast.forecasting import Forecaster
    from pumpcast.tracking import Tracker
    from pumpcast.training import fit

    tracker = Tracker(tracking)
    with tracker.run("train", tags={"pumpcast.command": "train"}):
        result = fit(cfg, tracker)
        if result is None:  # a data-parallel process other than rank 0: rank 0 tests and writes
            return
        where = f" -> {result.model_path}" if result.model_path else ""
        print(
            f"trained {result.trained.epochs_run} epoch(s); best validation loss "
            f"{result.trained.best_val_loss:.4f}{where}"
        )
        if result.model_path and tracking.register_model:
            version = tracker.register_model(result.model_path, tracking.register_model)
            if version:
                print(f"registered model {tracking.register_model} version {version}")
        if test is not None and not result.trained.split.tokens("test"):
            print("no test part (split strategy none): `pumpcast backtest` or `pumpcast test` on other data judges it")
        elif test is not None:
            bundle = result.bundle
            if test.rollout_damping is not None:
                bundle = replace(bundle, rollout_damping=test.rollout_damping)
            _run_test(Forecaster(bundle), result.trained.store, result.trained.split, test, tracker)


def _test_saved_model(data, test: TestConfig, tracking: TrackingConfig) -> None:
    """Test mode: the saved model on the store (made if empty) and the split it was trained with."""
    from pumpcast.forecasting import Forecaster
    from pumpcast.modelfile import load_model_file, require_store_fit
    from pumpcast.simulator import ensure_store
    from pumpcast.splits import resolve_split
    from pumpcast.tracking import Tracker

    if not test.load_model:
        raise ConfigError("test mode needs load_model (a model file)", "load_model")
    bundle = load_model_file(test.load_model)
    if test.rollout_damping is not None:
        bundle = replace(bundle, rollout_damping=test.rollout_damping)
    store = ensure_store(data)
    split = resolve_split(store, data, reuse="same-strategy")
    require_store_fit(bundle, store, test.tokens() or split.tokens("test"))  # before a tracking run starts
    tracker = Tracker(tracking)
    with tracker.run("test", tags={"pumpcast.command": "test"}):
        _run_test(Forecaster(bundle), store, split, test, tracker)


def _run_test(forecaster, store, split, test: TestConfig, tracker) -> None:
    from pumpcast.config import flat_values
    from pumpcast.evaluation import run_test
    from pumpcast.tracking import flatten

    tracker.log_params(flat_values({"test": test}))
    report = run_test(forecaster, store, split, test)
    metrics = flatten("test", {n: report[n]["metrics"] for n in ("short", "extended")})
    tracker.log_metrics({k: v for k, v in metrics.items() if k.split(".")[-1] != "n"})
    out = Path(test.output_dir)
    for rel in (
        "predictions/metrics.json",
        "predictions/prediction_short.png",
        "predictions/prediction_extended.png",
        "img/data_splits.png",
    ):
        tracker.log_artifact(out / rel, str(Path(rel).parent))
    for t in report["tokens"]:
        tracker.log_artifact(out / "img" / f"token_{t}", f"img/token_{t}")
    tracker.log_artifact(store.split_path)


def evaluate(args: argparse.Namespace) -> None:
    from pumpcast.evaluation import evaluate_store
    from pumpcast.forecasting import Forecaster
    from pumpcast.modelfile import require_store_fit
    from pumpcast.splits import resolve_split
    from pumpcast.store import TokenDataManager
    from pumpcast.tracking import Tracker, flatten

    conf = _config(args)
    store = TokenDataManager(conf["data"].data_dir)
    split = resolve_split(store, conf["data"], reuse="required")
    forecaster = Forecaster.load(args.load_model)
    require_store_fit(forecaster.bundle, store, split.tokens("test"))  # before a tracking run starts
    tracker = Tracker(conf["tracking"])
    with tracker.run("evaluate", tags={"pumpcast.command": "evaluate"}):
        bt = conf["backtest"]
        report = evaluate_store(
            forecaster, store, split, args.output_dir, bt.horizon_steps(), bt.every, bt.context, bt.bootstrap,
            conf["data"].seed,
        )
        events = flatten("events", report["events"]["overall"])
        tracker.log_metrics({k: v for k, v in events.items() if isinstance(v, float)})
        tracker.log_artifact(Path(args.output_dir))
    print(Path(args.output_dir, "report.md").read_text())


def detect(args: argparse.Namespace) -> None:
    import numpy as np
    import pandas as pd

    from pumpcast.detection import PumpDetector
    from pumpcast.files import atomic_write
    from pumpcast.forecasting import history_inputs, history_interval
    from pumpcast.ingest import read_table
    from pumpcast.modelfile import require_fit

    if args.follow:
        if args.output:
            raise ConfigError("--output goes with --input; with --follow, redirect the printed alarms", "output")
        if args.idle_exit is not None and args.follow == "-":
            raise ConfigError("--idle-exit goes with --follow FILE: standard input ends when its writer closes it")
        return _follow(PumpDetector.load(args.load_model, args.threshold), args.follow, args.idle_exit)
    if args.idle_exit is not None:
        raise ConfigError("--idle-exit goes with --follow FILE; --input is read to its end")
    detector = PumpDetector.load(args.load_model, args.threshold)
    features, times = history_inputs(read_table(args.input), detector.bundle.config.groups, name=str(args.input))
    require_fit(detector.bundle, str(args.input), interval_ms=history_interval(times), steps=features.shape[0])
    p = detector.score(features)  # step t from the window that ends at t, as `update` gives it bar by bar
    onsets = detector.alarms(p)
    # an alarm can be raised only when its bar has closed: it is labelled with the close time
    interval = pd.Timedelta(milliseconds=detector.bundle.data.interval_ms)
    label = (lambda i: (times.iloc[i] + interval).strftime("%Y-%m-%dT%H:%M:%SZ")) if times is not None else str
    for i in onsets:
        print(_alarm_line(label(i), i, p[i], detector.threshold))
    print(
        f"{len(onsets)} alarm(s) over {int(np.isfinite(p).sum())} steps at threshold {detector.threshold:.4g} "
        "(research tool, not financial advice)"
    )
    if args.output:
        frame = pd.DataFrame({"step": np.arange(len(p)), "pump_probability": p, "alarm": False})
        frame.loc[onsets, "alarm"] = True
        if times is not None:
            frame.insert(0, "bar_close", (times + interval).dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy())
            frame.insert(0, "time", times.dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy())
        atomic_write(Path(args.output), lambda tmp: frame.to_csv(tmp, index=False), suffix=".csv")


def _alarm_line(close: str, step: int, probability: float, threshold: float) -> str:
    return f"ALARM {close} step {step} pump_probability {probability:.3f} threshold {threshold:.4g}"


def _follow(detector, source: str, idle_exit: float | None) -> None:
    """detect --follow: score bars as they close and print each alarm at once."""
    from pumpcast.live import detect_live, follow_lines
    from pumpcast.timeutil import iso

    bars = alarms = 0
    for r in detect_live(detector, follow_lines(source, idle_exit_s=idle_exit), name=source):
        if r.detection.alarm:
            close = iso(r.close_ms).replace("+00:00", "Z")
            print(_alarm_line(close, r.bar.step, r.detection.probability, detector.threshold), flush=True)
            alarms += 1
        bars += 1
    print(
        f"{alarms} alarm(s) over {bars} closed bar(s) at threshold {detector.threshold:.4g} "
        "(research tool, not financial advice)"
    )


def export_model(args: argparse.Namespace) -> None:
    from pumpcast.modelfile import load_model_file

    try:
        from pumpcast.onnxfile import export_onnx
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DataError(f"ONNX export needs the onnx extra: pip install 'pumpcast[onnx]' ({exc.name} missing)") from exc
    path = export_onnx(load_model_file(args.load_model), args.output)
    print(f"wrote {path}: inputs x, mask (batch, seq_length, 6); outputs forecast, pump_logits (see onnxfile.py)")


def predict(args: argparse.Namespace) -> None:
    from pumpcast.files import atomic_write
    from pumpcast.forecasting import Forecaster, history_array, history_interval
    from pumpcast.ingest import read_table
    from pumpcast.modelfile import require_fit

    damping = _config(args)["test"].rollout_damping
    source = Path(args.input)
    if source.is_dir():
        inputs = sorted(p for p in source.iterdir() if p.name.endswith((".csv", ".csv.gz", ".parquet")))
        if not inputs:
            raise DataError(f"{source}: no .csv, .csv.gz or .parquet histories in this folder")
        outputs = [Path(args.output) / f"{p.name.split('.')[0]}_forecast.csv" for p in inputs]
    else:
        inputs, outputs = [source], [Path(args.output)]
    forecaster = Forecaster.load(args.load_model)
    if damping is not None:
        forecaster = Forecaster(replace(forecaster.bundle, rollout_damping=damping))
    tails = []  # every history read and checked before any forecast is written; only its last window is kept
    for p in inputs:
        frame = read_table(p)
        _, times = history_array(frame, name=str(p))
        require_fit(forecaster.bundle, str(p), interval_ms=history_interval(times), steps=len(frame))
        tails.append(frame.tail(forecaster.seq_len).reset_index(drop=True))
    written = 0
    for i in range(0, len(inputs), PREDICT_BATCH):  # bounded memory, however large the folder
        chunk = inputs[i : i + PREDICT_BATCH]
        forecasts = forecaster.predict(tails[i : i + PREDICT_BATCH], args.steps, names=[str(p) for p in chunk])
        for frame, out in zip(forecasts, outputs[i : i + PREDICT_BATCH], strict=True):
            try:
                atomic_write(out, lambda tmp, f=frame: f.to_csv(tmp, **CSV), suffix=".csv")
            except (OSError, DataError) as exc:
                raise DataError(
                    f"{out}: cannot be written ({exc}); {written} of {len(outputs)} forecast(s) were written before it"
                ) from exc
            written += 1
    shown = ", ".join(str(o) for o in outputs[:5]) + (" ..." if len(outputs) > 5 else "")
    print(f"wrote {len(outputs)} forecast(s) of {args.steps} steps: {shown}")
