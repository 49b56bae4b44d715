"""Command line: `pumpcast <command>`. Thin: every command parses flags and calls the Python API."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pumpcast.schema import PumpcastError

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


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default="training-data", help="store directory (default: training-data)")


def _cmd_generate(args: argparse.Namespace) -> None:
    from pumpcast.simulator import generate_to_store

    ids = generate_to_store(args.data_dir, args.num_tokens, args.timesteps, args.seed, args.interval)
    print(f"generated {len(ids)} synthetic tokens x {args.timesteps} steps into {args.data_dir}")


def _cmd_ingest(args: argparse.Namespace) -> None:
    from pumpcast.ingest import ingest_files

    columns = {k: getattr(args, f"{k}_col") for k in COLUMN_FLAGS if getattr(args, f"{k}_col", None)}
    ids = ingest_files(args.kind, args.files, args.data_dir, args.interval, columns, args.symbol, args.key, args.events)
    print(f"ingested {len(ids)} token(s) into {args.data_dir}: ids {ids}")


def _cmd_export(args: argparse.Namespace) -> None:
    from pumpcast.store import TokenDataManager

    TokenDataManager(args.data_dir).export_csv(args.token_id, args.output, args.events_output)
    print(f"wrote {args.output}" + (f" and {args.events_output}" if args.events_output else ""))


def _cmd_plot(args: argparse.Namespace) -> None:
    from pumpcast.plots import plot_correlations, plot_features
    from pumpcast.store import TokenDataManager

    store = TokenDataManager(args.data_dir)
    ids = parse_token_range(args.token_range) if args.token_range else [args.token_id]
    for t in ids:
        tok = store.read(t)
        out = Path(args.output_dir) / "img" / f"token_{t}"
        plot_features(tok, out / "features.png")
        plot_correlations(tok, out / "correlations.png")
        print(f"wrote {out}/features.png and {out}/correlations.png")


def _cmd_train(args: argparse.Namespace) -> None:
    from pumpcast.trainer_cli import run_pump_trainer

    args.test_mode, args.skip_test = False, True
    run_pump_trainer(args)


def _cmd_test(args: argparse.Namespace) -> None:
    from pumpcast.trainer_cli import run_pump_trainer

    args.test_mode = True
    run_pump_trainer(args)


def _cmd_predict(args: argparse.Namespace) -> None:
    from pumpcast.forecasting import Forecaster
    from pumpcast.ingest import read_table
    from pumpcast.store import atomic_write

    source = Path(args.input)
    if source.is_dir():
        inputs = sorted(p for p in source.iterdir() if p.name.endswith((".csv", ".csv.gz", ".parquet")))
        if not inputs:
            raise PumpcastError(f"{source}: no .csv, .csv.gz or .parquet histories in this folder")
        out_dir = Path(args.output)
        outputs = [out_dir / f"{p.name.split('.')[0]}_forecast.csv" for p in inputs]
    else:
        inputs, outputs = [source], [Path(args.output)]
    forecaster = Forecaster.load(args.load_model)
    if args.rollout_damping is not None:
        forecaster.bundle.rollout_damping = args.rollout_damping
    frames = [read_table(p) for p in inputs]
    try:
        forecasts = forecaster.predict(frames, args.steps)
    except PumpcastError as exc:  # name the file, not its position in the batch
        msg = str(exc)
        for i, p in enumerate(inputs):
            msg = msg.replace(f"history {i}:", f"{p}:").replace(f"history {i} ", f"{p} ")
        raise PumpcastError(msg) from exc
    csv = {"index": False, "float_format": "%.10g", "date_format": "%Y-%m-%dT%H:%M:%SZ"}
    for frame, out in zip(forecasts, outputs, strict=True):
        atomic_write(out, lambda tmp, f=frame: f.to_csv(tmp, **csv), suffix=".csv")
    print(
        f"wrote {len(outputs)} forecast(s) of {args.steps} steps: "
        + ", ".join(str(o) for o in outputs[:5])
        + (" ..." if len(outputs) > 5 else "")
    )


def _cmd_tune(args: argparse.Namespace) -> None:
    from pumpcast.trainer_cli import make_tracker
    from pumpcast.tuning import show, tune

    if args.show:
        print(show(args))
        return
    tune(args, make_tracker(args))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from pumpcast.evaluation import evaluate_store
    from pumpcast.forecasting import Forecaster
    from pumpcast.splits import Split
    from pumpcast.store import TokenDataManager
    from pumpcast.trainer_cli import make_tracker
    from pumpcast.training import load_split_file

    store = TokenDataManager(args.data_dir)
    if args.split_file:
        split = load_split_file(args.split_file, store.lengths())
    else:
        stored = store.load_split()
        if stored is None:
            raise PumpcastError(f"{store.split_path}: no split; train on this store first or give --split-file")
        split = Split.from_json(stored)
    forecaster = Forecaster.load(args.load_model)
    tracker = make_tracker(args)
    with tracker.run("evaluate", tags={"pumpcast.command": "evaluate"}):
        report = evaluate_store(forecaster, store, split, args.output_dir, args.steps, args.origin_every)
        from pumpcast.tracking import flatten

        tracker.log_metrics(
            {k: v for k, v in flatten("events", report["events"]["overall"]).items() if isinstance(v, float)}
        )
        tracker.log_artifact(Path(args.output_dir))
    print(Path(args.output_dir, "report.md").read_text())


def _cmd_detect(args: argparse.Namespace) -> None:
    import numpy as np
    import pandas as pd

    from pumpcast.forecasting import Forecaster, history_array
    from pumpcast.ingest import read_table
    from pumpcast.pumps import alarm_onsets
    from pumpcast.store import atomic_write

    forecaster = Forecaster.load(args.load_model)
    if not forecaster.has_pump_head:
        raise PumpcastError(f"{args.load_model}: this model has no pump head; train it with --pump-weight > 0")
    features, times = history_array(read_table(args.input), name=str(args.input))
    threshold = args.threshold if args.threshold is not None else forecaster.bundle.pump["threshold"]
    # Step by step as on live bars: the probability at step t comes from the window ending at t.
    p = forecaster.pump_probability(features)
    onsets = alarm_onsets(np.nan_to_num(p) >= threshold)
    label = (lambda i: times.iloc[i].strftime("%Y-%m-%dT%H:%M:%SZ")) if times is not None else str
    for i in onsets:
        print(f"ALARM {label(i)} step {i} pump_probability {p[i]:.3f}")
    print(
        f"{len(onsets)} alarm(s) over {int(np.isfinite(p).sum())} steps at threshold {threshold:.4g} "
        "(research tool, not financial advice)"
    )
    if args.output:
        frame = pd.DataFrame({"step": np.arange(len(p)), "pump_probability": p, "alarm": False})
        frame.loc[onsets, "alarm"] = True
        if times is not None:
            frame.insert(0, "time", times.dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy())
        atomic_write(Path(args.output), lambda tmp: frame.to_csv(tmp, index=False), suffix=".csv")


def parse_token_range(text: str) -> list[int]:
    """'0-5' -> [0, 1, 2, 3, 4, 5] (inclusive, as the seed's --test-token-range)."""
    try:
        a, b = (int(v) for v in text.split("-"))
    except ValueError as exc:
        raise PumpcastError(f"token range {text!r}: write it as A-B, e.g. 0-5") from exc
    if b < a:
        raise PumpcastError(f"token range {text!r}: the end is before the start")
    return list(range(a, b + 1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pumpcast",
        description="Forecast crypto token markets and their pumps (research tool, not financial advice). "
        "`pumpcast COMMAND --help` lists a command's flags.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="simulate synthetic token markets into a store")
    p.add_argument("--num-tokens", type=int, default=5)
    p.add_argument("--timesteps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interval", default="1min", help="duration of one step (default 1min)")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("ingest", help="turn trade lists or OHLCV candles into bars in a store")
    p.add_argument("kind", choices=("trades", "candles"))
    p.add_argument("files", nargs="+", help="CSV, CSV.gz or Parquet files")
    p.add_argument("--interval", default="1min", help="bar length (default 1min)")
    p.add_argument("--events", help="CSV of known event times (symbol, time[, type, end])")
    p.add_argument("--symbol", help="pair name when the file has no symbol column")
    p.add_argument("--key", help="store key (address) for a single-file ingest")
    for col in COLUMN_FLAGS:
        p.add_argument(f"--{col}-col", help=f"name of the {col} column")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("export", help="write one stored token's bars (and events) as CSV")
    p.add_argument("--token-id", type=int, required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--events-output")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("plot", help="img/token_X/features.png and correlations.png for stored tokens")
    p.add_argument("--token-id", type=int, default=0)
    p.add_argument("--token-range", help="A-B, inclusive")
    p.add_argument("--output-dir", default=".")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_plot)
    from pumpcast.trainer_cli import (
        add_damping_flag,
        add_data_flags,
        add_model_flags,
        add_test_flags,
        add_tracking_flags,
        add_train_flags,
    )
    from pumpcast.tuning import add_config_flag, add_tune_flags

    p = sub.add_parser("train", help="train a forecaster on a store (synthetic data is made if it is empty)")
    add_model_flags(p)
    add_data_flags(p)
    add_train_flags(p)
    add_tracking_flags(p)
    add_config_flag(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("tune", help="search hyperparameters with Optuna (several workers may share one study)")
    p.add_argument("--show", action="store_true", help="print the study's best trials and exit")
    add_model_flags(p)
    add_data_flags(p)
    add_train_flags(p)
    add_tune_flags(p)
    add_tracking_flags(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("test", help="forecast test parts with a saved model: metrics vs persistence, plots")
    add_data_flags(p)
    add_test_flags(p)
    add_tracking_flags(p)
    p.set_defaults(func=_cmd_test)

    p = sub.add_parser("evaluate", help="report on the test part: forecasts vs baselines, pump events vs baselines")
    p.add_argument("--load-model", required=True)
    p.add_argument("--split-file", help="split to evaluate (default: the store's split_info.json)")
    p.add_argument("--output-dir", default="reports")
    p.add_argument("--steps", type=int, default=100, help="forecast steps from each origin (default 100)")
    p.add_argument("--origin-every", type=int, default=200, help="steps between forecast origins (default 200)")
    _add_data_dir(p)
    add_tracking_flags(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("detect", help="walk through a history bar by bar and print each pump alarm")
    p.add_argument("--load-model", required=True)
    p.add_argument("--input", required=True, help="history CSV (as `pumpcast export` writes it)")
    p.add_argument("--threshold", type=float, help="alarm threshold (default: the one chosen on validation)")
    p.add_argument("--output", help="also write every step's probability and alarms to this CSV")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("predict", help="forecast new histories (CSV as `pumpcast export` writes them)")
    p.add_argument("--load-model", required=True)
    p.add_argument("--input", required=True, help="a history CSV, or a folder of them (batched together)")
    p.add_argument("--steps", type=int, required=True, help="steps to forecast")
    add_damping_flag(p)
    p.add_argument("--output", required=True, help="forecast CSV, or a folder when --input is a folder")
    p.set_defaults(func=_cmd_predict)
    return parser


def run(argv: Sequence[str] | None, parser: argparse.ArgumentParser) -> int:
    """Parse and run; a PumpcastError becomes one line on stderr and exit status 2."""
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not verbose and hasattr(args, "epochs"):  # training commands: our output, not framework chatter
        from pumpcast.training import quiet_lightning

        quiet_lightning()
    try:
        if getattr(args, "config", None):
            args = _with_config(parser, args, argv)
        args.func(args)

    except PumpcastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _with_config(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None):
    """Re-parse with the --config file's values as defaults, so flags on the command line still win."""
    import json

    path = Path(args.config)
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PumpcastError(f"{path}: unreadable config ({exc}); it must be a JSON object of flag values") from exc
    unknown = [k for k in values if not hasattr(args, k) or k.startswith("_")]
    if not isinstance(values, dict) or unknown:
        raise PumpcastError(f"{path}: unknown setting(s) {unknown}; keys are flag names with _ for -")
    args._parser.set_defaults(**values)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, build_parser())


def pump_trainer_main(argv: Sequence[str] | None = None) -> int:
    from pumpcast.trainer_cli import build_trainer_parser

    return run(argv, build_trainer_parser())


if __name__ == "__main__":
    sys.exit(main())
