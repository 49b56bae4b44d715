"""Command line: `pumpcast COMMAND` and the seed-compatible `python pump_trainer.py`.

Each command parses its flags, turns them into config objects once (cli.flags), calls the Python API
(cli.commands) and prints. Heavy libraries are imported by the commands, not here, so `--help` is quick.
No library module imports this package.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields

from pumpcast.cli import commands
from pumpcast.cli.flags import (
    Parser,
    add_config_flag,
    add_preset_flag,
    add_settings,
    bounded_int,
    flag_message,
    probability,
    seconds,
)
from pumpcast.config import (
    MAX_FORECAST_STEPS,
    BacktestConfig,
    DataConfig,
    IngestConfig,
    ModelConfig,
    OptimConfig,
    PumpConfig,
    RuntimeConfig,
    TestConfig,
    TrackingConfig,
    TuneConfig,
)
from pumpcast.schema import ConfigError, PumpcastError

DESCRIPTION = "Forecast crypto token markets and their pumps (research tool, not financial advice)."
TRAIN_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "pump": PumpConfig,
    "runtime": RuntimeConfig,
}
TITLES = {
    "data": "data",
    "model": "model",
    "optim": "training",
    "pump": "pump head",
    "runtime": "runtime",
    "tracking": "tracking (MLflow)",
    "test": "testing",
    "tune": "tuning (Optuna)",
    "backtest": "backtest",
}


def _output_flags(p: argparse.ArgumentParser) -> None:
    from pumpcast import __version__

    p.add_argument("--version", action="version", version=f"pumpcast {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="also the libraries' log lines and warnings")
    p.add_argument("-q", "--quiet", action="store_true", help="no status lines, only results and errors")


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests and notebooks swap it)."""

    pumpcast_cli = True

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@contextmanager
def _output(verbose: bool, quiet: bool) -> Iterator[None]:
    """For one command: pumpcast's status lines on stderr (one per phase; none with --quiet); the libraries'
    log lines and warnings only with -v. Python callers of the library see none of it unless they set up
    logging themselves."""
    pkg = logging.getLogger("pumpcast")
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = pkg.level, pkg.propagate
    pkg.addHandler(handler)
    pkg.propagate = False
    pkg.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # read when mlflow is first imported
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            yield
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(saved[0])
        pkg.propagate = saved[1]


def _settings(
    p: argparse.ArgumentParser,
    sections: dict[str, type],
    skip: tuple[str, ...] = (),
    config_flag: bool = True,
    preset: bool = False,
) -> None:
    """Flags of the given sections but the fields in skip (a command takes only the flags it uses), the
    --config (and --preset) flag, and the sections recorded for to_config."""
    for name, cls in sections.items():
        add_settings(p, cls, TITLES[name], only=[f.name for f in fields(cls) if f.name not in skip])
    if preset:
        add_preset_flag(p)
    if config_flag:
        add_config_flag(p)
    p.set_defaults(sections=sections)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pumpcast",
        description=DESCRIPTION + " `pumpcast COMMAND --help` lists a command's flags.",
        allow_abbrev=False,
    )
    _output_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, allow_abbrev=False)
        p.set_defaults(func=func, sections={})
        return p

    _data_commands(command)
    _model_commands(command)
    _use_commands(command)
    return parser


def _data_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """The commands that make, read and check stores."""
    p = command("generate", "simulate synthetic token markets into a store", commands.generate)
    add_settings(p, DataConfig, "data", only=("data_dir", "num_tokens", "timesteps", "seed", "interval", "venue"))
    add_settings(p, IngestConfig, "store", only=("allow_mixed_intervals",))
    p.set_defaults(sections={"data": DataConfig, "ingest": IngestConfig})

    p = command("ingest", "turn trade lists or OHLCV candles into bars in a store", commands.ingest)
    p.add_argument("kind", choices=("trades", "candles"), help="trades (one row per trade) or candles (OHLCV)")
    p.add_argument(
        "files",
        nargs="+",
        help="CSV (with a header, or Binance/Kraken headerless layouts), CSV.gz, Parquet, Feather or JSON (ccxt, "
        "freqtrade) files, or freqtrade data folders",
    )
    for col in commands.COLUMN_FLAGS:
        p.add_argument(f"--{col}-col", help=f"name of the {col} column")
    add_settings(p, IngestConfig, "ingest")
    add_settings(p, DataConfig, "data", only=("data_dir", "interval"))
    p.set_defaults(sections={"data": DataConfig, "ingest": IngestConfig})

    p = command("export", "write one stored token's bars (and events) as CSV", commands.export)
    p.add_argument("--token-id", type=bounded_int(0), required=True, help="id of the token to export")
    p.add_argument("--output", required=True, help="CSV of the bars: time and the six features, empty where absent")
    p.add_argument("--events-output", help="also write the token's events (type, start, peak, end) to this CSV")
    add_settings(p, DataConfig, "data", only=("data_dir",))
    p.set_defaults(sections={"data": DataConfig})

    p = command("check", "verify a store: metadata against token files, shapes, masks, schema, split", commands.check)
    p.add_argument(
        "--repair",
        action="store_true",
        help="also rebuild the metadata from the token files and move what cannot be placed to DIR/quarantine/ "
        "(nothing is deleted)",
    )
    add_settings(p, DataConfig, "data", only=("data_dir",))
    p.set_defaults(sections={"data": DataConfig})

    p = command("plot", "img/token_X/features.png and correlations.png for stored tokens", commands.plot)
    p.add_argument("--token-id", type=bounded_int(0), default=0, help="token to draw (default: 0)")
    p.add_argument("--token-range", help="A-B, inclusive")
    p.add_argument("--output-dir", default=".", help="where img/ goes (default: .)")
    add_settings(p, DataConfig, "data", only=("data_dir",))
    p.set_defaults(sections={"data": DataConfig})


def _model_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """The commands that train, backtest and tune models."""
    p = command("train", "train a forecaster on a store (synthetic data is made if it is empty)", commands.train)
    _settings(p, TRAIN_SECTIONS | {"tracking": TrackingConfig}, preset=True)

    p = command(
        "backtest",
        "cross-validate over tokens or time: a model per fold, scored beside the baselines at several horizons",
        commands.backtest,
    )
    _settings(
        p,
        TRAIN_SECTIONS | {"backtest": BacktestConfig},
        skip=(
            "resume",
            "save_model",
            "checkpoint_dir",
            "split_file",
            "split_strategy",
            "test_ratio",
            "train_token_ratio",
        ),
        preset=True,
    )

    p = command("tune", "search hyperparameters with Optuna (several workers may share one study)", commands.tune)
    p.add_argument("--show", action="store_true", help="print the study's best trials and exit")
    _settings(
        p,
        TRAIN_SECTIONS | {"tune": TuneConfig, "tracking": TrackingConfig},
        skip=("resume", "save_model", "register_model"),  # trials never resume, save or register a model
    )


def _threads(p: argparse.ArgumentParser) -> None:
    """--threads for a command that runs torch or onnxruntime without training: the training commands' flag
    (RuntimeConfig.threads: one default rule, one help text); `run` applies it before the command."""
    add_settings(p, RuntimeConfig, TITLES["runtime"], only=("threads",))
    p.set_defaults(apply_threads=True)


def _use_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """The commands that use a saved model."""
    p = command("test", "forecast test parts with a saved model: metrics vs persistence, plots", commands.test)
    _settings(p, {"data": DataConfig, "test": TestConfig, "tracking": TrackingConfig}, skip=("register_model",))
    _threads(p)

    p = command(
        "evaluate", "report on the test part: forecasts vs baselines, pump events vs baselines", commands.evaluate
    )
    p.add_argument("--load-model", required=True, metavar="MODEL", help="model file to evaluate")
    p.add_argument(
        "--output-dir", default="reports", help="where report.md, report.json and img/ go (default: reports)"
    )
    add_settings(p, DataConfig, "data", only=("data_dir", "split_file", "seed"))
    add_settings(p, BacktestConfig, "scoring", only=("horizons", "every", "context", "bootstrap"))
    add_settings(p, TrackingConfig, TITLES["tracking"], only=("tracking_uri", "experiment_name", "enabled"))
    p.set_defaults(sections={"data": DataConfig, "backtest": BacktestConfig, "tracking": TrackingConfig})
    _threads(p)

    p = command("detect", "walk through a history bar by bar and print each pump alarm", commands.detect)
    p.add_argument("--load-model", required=True, metavar="MODEL", help="model file with a pump head")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="history CSV (as `pumpcast export` writes it)")
    source.add_argument(
        "--follow",
        metavar="FILE",
        help="watch a growing CSV of trades or bars (- for standard input) and print each alarm as its bar closes",
    )
    p.add_argument(
        "--idle-exit",
        type=seconds,
        metavar="SECONDS",
        help="with --follow FILE: stop after this long with nothing new to read (time spent scoring does not "
        "count; default: follow for ever)",
    )
    p.add_argument("--threshold", type=probability, help="alarm threshold (default: the one chosen on validation)")
    p.add_argument("--output", help="with --input: also write every step's probability and alarms to this CSV")
    _threads(p)

    p = command("export-model", "write a model's network in another format (ONNX) for serving", commands.export_model)
    p.add_argument("--load-model", required=True, metavar="MODEL", help="model file (.pth)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="output format (default: onnx)")
    p.add_argument("--output", required=True, help="file to write, e.g. model.onnx")
    _threads(p)

    p = command("predict", "forecast new histories (CSV as `pumpcast export` writes them)", commands.predict)
    p.add_argument("--load-model", required=True, metavar="MODEL", help="model file")
    p.add_argument("--input", required=True, help="a history CSV, or a folder of them (batched together)")
    p.add_argument(
        "--steps",
        type=bounded_int(1, MAX_FORECAST_STEPS),
        required=True,
        help=f"steps to forecast (1-{MAX_FORECAST_STEPS})",
    )
    p.add_argument("--output", required=True, help="forecast CSV, or a folder when --input is a folder")
    add_settings(p, TestConfig, TITLES["test"], only=("rollout_damping",))
    p.set_defaults(sections={"test": TestConfig})
    _threads(p)



def build_trainer_parser() -> argparse.ArgumentParser:
    """The seed script's command line: every seed flag, plus the rest of training, testing and tuning."""
    p = Parser(
        prog="pump_trainer.py",
        description="Train and test the pumpcast forecaster (research tool, not financial advice).",
        allow_abbrev=False,
    )
    p.add_argument("--test-mode", action="store_true", help="test a saved model (--load-model) only")
    p.add_argument(
        "--optimize",
        action="store_true",
        help="tune hyperparameters with Optuna first, then train the final model with the best trial's",
    )
    _output_flags(p)
    _settings(p, TRAIN_SECTIONS | {"test": TestConfig, "tracking": TrackingConfig, "tune": TuneConfig})
    p.set_defaults(func=commands.pump_trainer)
    return p


def run(argv: Sequence[str] | None, parser: argparse.ArgumentParser) -> int:
    """Parse and run; a PumpcastError becomes one line on stderr and exit status 2 (an interrupted training
    run: 128 + the signal); a bad flag, one line and exit status 2."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad flag (2, its one line already printed)
        return int(exc.code or 0)
    verbose = getattr(args, "verbose", False)
    with _output(verbose, getattr(args, "quiet", False)):
        if not verbose and "optim" in args.sections:  # training commands: our output, not framework chatter
            from pumpcast.training import quiet_lightning

            quiet_lightning()
        try:
            if getattr(args, "apply_threads", False):
                from pumpcast.threads import set_threads

                set_threads(getattr(args, "threads", None))
            status = args.func(args)
        except ConfigError as exc:
            print(f"error: {_one_line(flag_message(exc, args.sections.values()))}", file=sys.stderr)
            return 2
        except PumpcastError as exc:
            print(f"error: {_one_line(str(exc))}", file=sys.stderr)
            return getattr(exc, "exit_code", 2)
    return status or 0


def _one_line(message: str) -> str:
    return " ".join(message.split("\n")[0].split()) if message else "failed"


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, build_parser())


def pump_trainer_main(argv: Sequence[str] | None = None) -> int:
    return run(argv, build_trainer_parser())
