"""Every setting of pumpcast, defined once.

Each setting is a field of a small frozen dataclass, and the field carries everything about it: its default,
its help text, its allowed range or choices and its command-line name. The CLI generates its flags from
these fields, `--config FILE` (JSON or TOML) fills the same classes, tuning trials and Python callers use
`with_values` on them, and validation runs once, when an object is built, so a bad value is refused the same
way wherever it comes from. Errors name the field (`embed_size must be divisible by nhead`); front ends say
it their own way.

    TrainConfig      what `fit` needs: data, model, optim, pump, runtime
    TrackingConfig   MLflow
    TestConfig       the seed's test mode: which tokens, how far, where the plots go
    TuneConfig       the Optuna study
    BacktestConfig   cross-validation over tokens or time (`pumpcast backtest`)

PRESETS are named bundles of settings (`--preset real`) applied before a config file and flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from pumpcast.channels import channel_names, parse_inputs
from pumpcast.schema import FEATURES, ConfigError

#: How a store's tokens can be split (see splits.make_split).
SPLIT_STRATEGIES = ("time", "token", "mixed", "none")
#: Synthetic venues: "dex", a constant-product pool whose liquidity and market cap are features; "cex", an
#: exchange pair on a price grid with a spread and no pool (liquidity and market cap absent).
VENUES = ("dex", "cex")
#: What a candle file's volume counts: the traded token (base) or the quote asset.
VOLUME_UNITS = ("base", "quote")
#: The longest forecast one call makes (memory and time grow with it); longer ones are refused up front.
MAX_FORECAST_STEPS = 100_000


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: tuple[Any, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    negate: bool = False,
    cli: bool = True,
    metavar: str | None = None,
) -> Any:
    """A setting: its default and help, and optionally its flag (default --field-name), choices, range
    [low, high] (open ends with low_open/high_open), negate=True for a boolean whose flag turns it off
    (`--no-progress` for progress_bar), cli=False for settings only files and Python may set."""
    meta = {
        "help": help,
        "flag": flag,
        "choices": choices,
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "negate": negate,
        "cli": cli,
        "metavar": metavar,
    }
    return field(default=default, metadata=meta)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allowed(tp: Any) -> tuple[type, ...]:
    """Plain types a field accepts: `int | None` -> (int, NoneType)."""
    args = typing.get_args(tp)
    return tuple(args) if args else (tp,)


def check_type(value: Any, tp: Any) -> bool:
    """Whether value fits the annotation (ints pass for floats; bools never pass for numbers)."""
    for t in _allowed(tp):
        if t is type(None) and value is None:
            return True
        if t is bool and isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if t is str and isinstance(value, str):
            return True
    return False


def type_name(tp: Any) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in _allowed(tp))


class Settings:
    """Base of the config dataclasses: checks every field against its type, range and choices on creation,
    then the class's own cross-field rules (`check`)."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            value, meta = getattr(self, f.name), f.metadata
            if not check_type(value, hints[f.name]):
                raise ConfigError(f"{f.name} must be {type_name(hints[f.name])}, got {value!r}", f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}", f.name)
            if value is None or isinstance(value, bool):
                continue
            if meta.get("choices") and value not in meta["choices"]:
                choices = ", ".join(str(c) for c in meta["choices"])
                raise ConfigError(f"{f.name} {value!r}: choose one of {choices}", f.name)
            low, high = meta.get("low"), meta.get("high")
            if isinstance(value, int | float) and (
                (low is not None and (value <= low if meta["low_open"] else value < low))
                or (high is not None and (value >= high if meta["high_open"] else value > high))
            ):
                raise ConfigError(f"{f.name} must be in {_range(meta)}, got {value!r}", f.name)
        self.check()

    def check(self) -> None:
        """Rules that involve several fields; raise ConfigError naming them."""


def _range(meta: Mapping[str, Any]) -> str:
    lo = "-inf" if meta["low"] is None else f"{meta['low']:g}"
    hi = "inf" if meta["high"] is None else f"{meta['high']:g}"
    return (
        ("(" if meta["low_open"] or meta["low"] is None else "[")
        + f"{lo}, {hi}"
        + (")" if meta["high_open"] or meta["high"] is None else "]")
    )


# --------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig(Settings):
    """Where the tokens come from and how they are split and windowed."""

    data_dir: str = option("training-data", "token store directory")
    num_tokens: int = option(
        5,
        "synthetic tokens: generate makes tokens 0..N-1 of the seed; other commands make them in an empty store or "
        "add the missing ones to a store of fewer synthetic tokens",
        low=1,
    )
    timesteps: int = option(4000, "steps per synthetic token", low=2)
    interval: str = option("1min", "bar length: of synthetic steps, or of the bars trades and candles become")
    venue: str = option(
        "dex",
        "synthetic market: dex (a pool: liquidity and market cap known) or cex (an exchange pair: price grid, "
        "spread, no pool, so liquidity and market cap absent, like real CEX files)",
        choices=VENUES,
    )
    split_strategy: str = option(
        "time",
        "time: every token split by time; token: whole tokens; mixed: train/val by token, test by time; none: no "
        "test part (it is elsewhere), val_ratio of the tokens validate (tokens with events first)",
        choices=SPLIT_STRATEGIES,
    )
    train_token_ratio: float = option(
        0.6, "share of tokens that train (token and mixed splits)", low=0, high=1, low_open=True
    )
    test_ratio: float = option(
        0.4, "share of steps (time) or of held-out tokens (token) for testing", low=0, high=1, high_open=True
    )
    val_ratio: float = option(
        0.2, "share of steps (time) or of held-out tokens (token) for validation", low=0, high=1, high_open=True
    )
    seed: int = option(0, "seed for data, split, initialisation and shuffling", low=0)
    split_file: str | None = option(None, "reuse this split_info.json instead of making a split", metavar="FILE")
    window_stride: int = option(1, "use every k-th training window", low=1)

    def check(self) -> None:
        if self.test_ratio + self.val_ratio >= 1:
            raise ConfigError("test_ratio + val_ratio must be below 1", "test_ratio", "val_ratio")


@dataclass(frozen=True)
class IngestConfig(Settings):
    """How trade and candle files become bars in a store (`pumpcast ingest`); their length is DataConfig's
    interval."""

    volume_unit: str = option(
        "base",
        "what a candle file's volume counts (base, as freqtrade, ccxt and Binance write it; Binance klines' quote "
        "volume is used when present)",
        choices=VOLUME_UNITS,
    )
    events: str | None = option(None, "CSV of known event times (symbol, time[, type, end])", metavar="FILE")
    symbol: str | None = option(None, "pair name when the file has no symbol column")
    key: str | None = option(None, "store key (address) for a single-file ingest")
    allow_mixed_intervals: bool = option(False, "let bars of another length join the store")


@dataclass(frozen=True)
class ModelConfig(Settings):
    """Shape of the network; stored in every model file so the file rebuilds its own model."""

    n_features: int = option(len(FEATURES), "features per step", cli=False, low=1)
    inputs: str = option(
        "",
        "input channel groups beside the six features, comma-separated: trades (taker volumes, orders, rush "
        "orders), zscores (causal z-scores of volume, buys, rush orders), calendar (minute and hour as sin/cos); "
        "see channels.py",
        metavar="GROUPS",
    )
    seq_len: int = option(500, "input sequence length", flag="--seq-length", low=1)
    horizon: int = option(16, "steps predicted per forward pass", low=1)
    embedding: str = option(
        "conv", "conv: patching Conv1D, kernel = stride = patch length; linear: per step", choices=("conv", "linear")
    )
    patch_len: int = option(16, "patch length of the conv embedding", low=1)
    embed_size: int = option(64, "embedding dimension", low=1)
    nhead: int = option(4, "attention heads", low=1)
    num_layers: int = option(2, "encoder layers", low=1)
    dim_feedforward: int = option(256, "feed-forward size", low=1)
    dropout: float = option(0.0, "dropout rate", low=0, high=1, high_open=True)
    head_hidden: int = option(256, "hidden size of the forecast and pump heads", low=1)
    loss: str = option("huber", "forecast loss; it sets the head's outputs and their decoding (see losses.py)")
    pump_head: bool = option(False, "also output pump logits (set from pump_weight > 0 by fit)", cli=False)
    pump_horizon: int = option(10, "K: the pump head predicts a pump start within K steps", low=1)

    def check(self) -> None:
        parse_inputs(self.inputs)
        if self.embed_size % self.nhead:
            raise ConfigError(
                f"embed_size {self.embed_size} must be divisible by nhead {self.nhead}", "embed_size", "nhead"
            )

    @property
    def groups(self) -> tuple[str, ...]:
        """The input channel groups, in channels.GROUPS order."""
        return parse_inputs(self.inputs)

    @property
    def n_inputs(self) -> int:
        """Values per input step: the features and the channels."""
        return self.n_features + len(channel_names(self.groups))

    @property
    def n_tokens(self) -> int:
        """Length of the sequence the encoder sees."""
        return math.ceil(self.seq_len / self.patch_len) if self.embedding == "conv" else self.seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """From a stored dict; keys this version does not know are ignored (files from newer minor versions)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class OptimConfig(Settings):
    """How the weights are fitted."""

    epochs: int = option(30, "maximum epochs (early stopping may end sooner)", low=1)
    batch_size: int = option(64, "windows per batch and process (the seed used 1)", low=1)
    learning_rate: float = option(1e-3, "peak AdamW learning rate", low=0, low_open=True)
    weight_decay: float = option(0.01, "AdamW weight decay", low=0)
    warmup_steps: int = option(100, "linear warm-up steps before the cosine decay", low=0)
    patience: int = option(5, "early-stopping patience in epochs", low=0)
    aux_weight: float = option(0.5, "loss weight of the five non-price features (price: 1)", low=0)


@dataclass(frozen=True)
class PumpConfig(Settings):
    """The pump head: how much its loss counts and the alarm budget its thresholds are chosen to."""

    pump_weight: float = option(1.0, "weight of the pump head's loss (0: no pump head)", low=0)
    max_false_alarms_per_day: float = option(
        1.0, "alarm budget; thresholds are chosen on validation data to meet it", low=0
    )
    cross_fit: int = option(
        0,
        "K >= 2: K sub-models, each trained without a K-th of the tokens with events, score those out of fold, "
        "so thresholds, Platt scaling and the stacker are fitted on every training event, not the validation "
        "tokens' (K more trainings); 0: validation tokens only",
        low=0,
    )

    def check(self) -> None:
        if self.cross_fit == 1:
            raise ConfigError("cross_fit must be 0 (off) or a number of sub-models >= 2, got 1", "cross_fit")


@dataclass(frozen=True)
class RuntimeConfig(Settings):
    """Where and on what a run executes, and what it writes."""

    num_workers: int = option(0, "data-loader worker processes", low=0)
    threads: int | None = option(
        None, "torch CPU threads per process (default: the available cores divided by the processes)", low=1
    )
    checkpoint_dir: str = option("checkpoints", "where last.ckpt and best.ckpt go")
    resume: bool = option(False, "continue from CHECKPOINT_DIR/last.ckpt")
    init_from: str | None = option(
        None, "warm start: initial weights and normalisation from this model file (fine-tuning)", metavar="MODEL"
    )
    save_model: str | None = option("model_v2.pth", "model file to write")
    accelerator: str = option(
        "auto", "auto (CUDA with bf16 if present, else CPU), cpu or gpu", choices=("auto", "cpu", "gpu", "cuda")
    )
    devices: int | str = option("auto", "devices (processes) per node, or auto")
    strategy: str = option(
        "auto",
        "auto, or ddp: one process per device, gradients averaged (gloo on CPU, NCCL on GPU); batch size per process",
        choices=("auto", "ddp"),
    )
    num_nodes: int = option(1, "machines in a ddp run", low=1)
    ddp_timeout_s: int = option(300, "a ddp process that stops answering fails the run after this many seconds", low=1)
    write_store_files: bool = option(
        True, "record split_info.json and normalization_params.npy in the store", cli=False
    )
    progress_bar: bool = option(True, "the progress bar", flag="--no-progress", negate=True)

    def check(self) -> None:
        if self.devices != "auto" and not (isinstance(self.devices, int) and self.devices >= 1):
            raise ConfigError(f"devices must be auto or a count >= 1, got {self.devices!r}", "devices")
        if self.resume and self.init_from:
            raise ConfigError(
                "resume and init_from exclude each other: resume continues a run, init_from starts one",
                "resume",
                "init_from",
            )


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pump: PumpConfig = field(default_factory=PumpConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def sections(self) -> dict[str, Settings]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class TrackingConfig(Settings):
    """MLflow tracking."""

    tracking_uri: str | None = option(
        None, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder)"
    )
    experiment_name: str = option("pumpcast", "MLflow experiment")
    enabled: bool = option(True, "MLflow tracking", flag="--no-mlflow", negate=True)
    register_model: str | None = option(None, "register the trained model under NAME", metavar="NAME")


@dataclass(frozen=True)
class TestConfig(Settings):
    """The seed's test mode: forecasts from the start of test parts, metrics and plots."""

    __test__ = False  # not a pytest test class

    load_model: str | None = option(None, "model file to load", metavar="MODEL")
    test_token_id: int | None = option(None, "token to test (default: the first test token)", low=0)
    test_token_range: str | None = option(None, "tokens to test, A-B inclusive")
    forecast: int = option(1000, "short forecast steps", low=1, high=MAX_FORECAST_STEPS)
    forecast_extended: int = option(3000, "extended forecast steps", low=1, high=MAX_FORECAST_STEPS)
    rollout_damping: float | None = option(
        None,
        "scale the c-th model pass's price moves by this**c (default: the value chosen on validation at training; "
        "1 = the model's own rollout)",
        low=0,
        high=1,
    )
    show_data_splits: bool = option(False, "draw img/data_splits.png and print the split")
    output_dir: str = option(".", "where img/ and predictions/ go")

    def check(self) -> None:
        if self.test_token_range is not None:
            parse_token_range(self.test_token_range)

    def tokens(self) -> list[int] | None:
        """The tokens asked for (test_token_range, else test_token_id), or None for the first test token."""
        if self.test_token_range is not None:
            return parse_token_range(self.test_token_range)
        return [self.test_token_id] if self.test_token_id is not None else None


def parse_token_range(text: str, field: str = "test_token_range") -> list[int]:
    """'0-5' -> [0, 1, 2, 3, 4, 5] (inclusive, as the seed's --test-token-range)."""
    a, _, b = text.partition("-")
    if not (a.isdigit() and b.isdigit() and int(a) <= int(b)):
        raise ConfigError(f"{field} {text!r}: write it as A-B with A <= B, e.g. 0-5", field)
    return list(range(int(a), int(b) + 1))


@dataclass(frozen=True)
class TuneConfig(Settings):
    """The Optuna study."""

    n_trials: int = option(20, "trials this command adds to the study", low=1)
    timeout: float | None = option(None, "stop starting new trials after this many seconds", low=0, low_open=True)
    study_name: str = option("pumpcast", "Optuna study name")
    storage: str = option(
        "sqlite:///optuna.db",
        "Optuna storage URL (any RDB URL, e.g. postgresql://..., shares one study across machines)",
    )
    workers: int = option(1, "worker processes on this machine", low=1)
    space: str | None = option(None, "JSON file replacing entries of the default search space", metavar="FILE")
    best_config: str = option(
        "best_params.json", "where the best trial's whole configuration goes (`pumpcast train --config FILE` reads it)"
    )


@dataclass(frozen=True)
class BacktestConfig(Settings):
    """A cross-validated backtest: folds, horizons, origins and where the report goes."""

    folds: int = option(5, "folds (models trained)", low=2)
    by: str = option(
        "token",
        "token: whole tokens held out per fold; time: rolling origin, each token cut into folds + 1 blocks",
        choices=("token", "time"),
    )
    horizons: str = option("1,5,15,60", "steps ahead to score, comma-separated")
    every: int = option(1, "score every k-th origin of the held-out part", low=1)
    context: int = option(500, "steps the empirical-quantile baseline looks back", low=2)
    bootstrap: int = option(1000, "bootstrap resamples of the tokens for the 95 percent intervals", low=100)
    load_model: str | None = option(
        None, "score this model file in every fold instead of training one per fold", metavar="MODEL"
    )
    output_dir: str = option("reports", "where backtest.md, backtest.json, img/ and folds/ go")
    save_forecasts: bool = option(
        False,
        "also write every scored forecast to forecasts.parquet (long format: token, cutoff, time, horizon, method, "
        "actual, median, mean, q05..q95)",
    )

    def check(self) -> None:
        steps = self.horizon_steps()
        if max(steps) >= self.context:
            raise ConfigError(f"horizons must stay below context {self.context}, got {max(steps)}", "horizons")

    def horizon_steps(self) -> tuple[int, ...]:
        parts = [p.strip() for p in self.horizons.split(",")]
        if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise ConfigError(f"horizons {self.horizons!r}: write positive step counts like 1,5,15,60", "horizons")
        return tuple(sorted({int(p) for p in parts}))


#: Named bundles of settings (`--preset NAME`), applied over the defaults and under a config file and flags.
PRESETS: dict[str, dict[str, Any]] = {
    "real": {
        "data": {"split_strategy": "none", "window_stride": 3},
        "model": {"loss": "quantile", "seq_len": 500, "horizon": 60, "dropout": 0.1},
        "optim": {"epochs": 6, "patience": 2, "weight_decay": 0.05, "learning_rate": 5e-4},
    },
}


# --------------------------------------------------------------------------------------------- values


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def key_of(f: dataclasses.Field) -> str:
    """The flat name of a field: its flag without dashes (`seq_length`, `no_progress`), as in MLflow params,
    search spaces and flat config files."""
    return flag_of(f).lstrip("-").replace("-", "_")


def setting_fields(section: type) -> Iterator[dataclasses.Field]:
    yield from fields(section)  # type: ignore[arg-type]


def _field_value(f: dataclasses.Field, value: Any) -> Any:
    """A flat value -> the field's value (a negated flag's `true` turns the field off)."""
    return (not value) if f.metadata.get("negate") and isinstance(value, bool) else value


def flat_values(sections: Mapping[str, Settings]) -> dict[str, Any]:
    """{flat key: value} of every setting, as logged to MLflow (`embed_size`, `seq_length`, ...)."""
    out = {}
    for obj in sections.values():
        for f in setting_fields(type(obj)):
            out[key_of(f)] = _field_value(f, getattr(obj, f.name))
    return out


def with_values(sections: Mapping[str, Settings], values: Mapping[str, Any], where: str = "") -> dict[str, Settings]:
    """New section objects with `values` applied. Keys are a section name with a mapping of its fields
    (`{"model": {"seq_len": 256}}`), a dotted path (`model.seq_len`) or a flat key (`seq_length`). Unknown
    keys, wrong types and out-of-range values are one-line ConfigErrors; with `where` (a file name) the
    message starts with it and names keys as the file does."""
    try:
        return _with_values(sections, values)
    except ConfigError as exc:
        if not where:
            raise
        raise ConfigError(f"{where}: {exc}") from None


def _with_values(sections: Mapping[str, Settings], values: Mapping[str, Any]) -> dict[str, Settings]:
    flat = {key_of(f): (name, f) for name, obj in sections.items() for f in setting_fields(type(obj))}
    updates: dict[str, dict[str, Any]] = {name: {} for name in sections}
    for key, value in values.items():
        if key in sections and isinstance(value, Mapping):
            known = [f.name for f in setting_fields(type(sections[key]))]
            for sub, v in value.items():
                if sub not in known:
                    raise ConfigError(f"unknown key {key}.{sub}; {key} has {', '.join(known)}", sub)
                updates[key][sub] = v
        elif "." in key and key.split(".", 1)[0] in sections:
            name, sub = key.split(".", 1)
            if sub not in {f.name for f in setting_fields(type(sections[name]))}:
                raise ConfigError(f"unknown key {key}", sub)
            updates[name][sub] = value
        elif key in flat:
            name, f = flat[key]
            updates[name][f.name] = _field_value(f, value)
        else:
            raise ConfigError(
                f"unknown key {key!r}; use a section ({', '.join(sections)}) with its fields, section.field or a "
                "flag name with _ for -",
                key,
            )
    return {name: dataclasses.replace(obj, **updates[name]) if updates[name] else obj for name, obj in sections.items()}


def replace_train(cfg: TrainConfig, values: Mapping[str, Any], where: str = "") -> TrainConfig:
    """A TrainConfig with `values` applied (see with_values)."""
    return TrainConfig(**with_values(cfg.sections(), values, where))


def to_dict(sections: Mapping[str, Settings]) -> dict[str, dict[str, Any]]:
    """Nested plain dict of the sections, as written to best_params.json and read back by --config."""
    return {name: dataclasses.asdict(obj) for name, obj in sections.items()}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON (.json) or TOML (.toml) file holding one object of settings."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})", "config") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start + 1}); save the config as UTF-8", "config") from exc
    try:
        if path.suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except ImportError as exc:
        raise ConfigError(f"{path}: TOML needs Python 3.11 or newer; write the config as JSON", "config") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path}: nested too deep for a config file (settings are two levels)", "config") from exc
    except ValueError as exc:
        raise ConfigError(
            f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({exc})", "config"
        ) from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file holds one object of settings, got {type(values).__name__}", "config")
    return values
