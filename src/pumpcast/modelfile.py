"""The model file (`--save-model model_v2.pth`): weights plus everything needed to use them, loadable safely.

Contents are plain containers, numbers, strings and tensors only, so loading uses
`torch.load(weights_only=True)` and a file carrying any other pickled object is refused before anything in it
runs. FORMAT_VERSION is bumped only with a migration in `_migrate`, so files made by older releases keep
loading (tests/data holds one per format to prove it).

Format 2: the model config names its loss (format 1 files are all "huber"), and a model without a pump head
stores `pump: None` (format 1: an empty dict).
Format 3 (this version): `forecast_calibration`, what a quantile model's price forecast learned on
validation data (forecast_calibration.py); None in files of older formats and for point models.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pumpcast.files import atomic_write
from pumpcast.forecast_calibration import ForecastCalibration
from pumpcast.model import ModelConfig, PumpcastTransformer
from pumpcast.pumps import PumpCalibration
from pumpcast.schema import FEATURES, ConfigError, DataError, ModelFileError
from pumpcast.windows import Normalizer

FORMAT_VERSION = 3


@dataclass
class DataInfo:
    """What a model was trained on and how: bar interval, split, seed and batch sizes (for the record and
    for stamping forecast times)."""

    interval_ms: int = 60_000
    split_strategy: str = ""
    data_dir: str = ""
    seed: int = 0
    world_size: int = 1
    batch_size_per_process: int = 0
    global_batch_size: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ModelBundle:
    """A trained model with its configs, feature names and normalisation, and what was chosen on validation
    data: the pump calibration (None without a pump head), the rollout damping and, for a quantile model,
    the forecast calibration."""

    model: PumpcastTransformer  # or an onnxfile.OnnxNetwork, which is called the same way
    normalizer: Normalizer
    data: DataInfo = field(default_factory=DataInfo)
    metrics: dict[str, float] = field(default_factory=dict)
    features: tuple[str, ...] = FEATURES
    pump: PumpCalibration | None = None
    # long rollouts scale the c-th pass's price moves by rollout_damping**c (chosen on validation data)
    rollout_damping: float = 1.0
    forecast_calibration: ForecastCalibration | None = None
    source: str = ""  # the file it was loaded from (for messages; not stored)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def has_pump_head(self) -> bool:
        """Whether the model has a pump head calibrated on validation data."""
        return self.config.pump_head and self.pump is not None


def duration_text(ms: int) -> str:
    """60000 -> '60 s', 3600000 -> '3600 s': bar lengths as messages give them."""
    return f"{ms / 1000:g} s"


def require_fit(bundle: ModelBundle, name: str, interval_ms: int | None = None, steps: int | None = None) -> None:
    """Refuse data the model was not made for, in one line naming both: bars of another length than the model
    was trained on (a step would mean another duration), or fewer bars than its window. The one check that
    predict, detect, follow, evaluate, test and backtest make before they use a model on data."""
    model = bundle.source or "the model"
    if interval_ms is not None and int(interval_ms) != bundle.data.interval_ms:
        raise DataError(
            f"{name}: bars of {duration_text(interval_ms)}, but {model} was trained on bars of "
            f"{duration_text(bundle.data.interval_ms)}; give it bars of its interval (ingest --interval) or train a "
            "model on these"
        )
    if steps is not None and steps < bundle.config.seq_len:
        raise DataError(f"{name}: has {steps} bars; {model} reads seq_length={bundle.config.seq_len} bars")


def require_store_fit(bundle: ModelBundle, store: Any, token_ids: list[int]) -> None:
    """require_fit for stored tokens (a TokenDataManager): ids the store lacks, then the first token of another bar
    length, are named."""
    store.require(token_ids)
    for t, ms in sorted(store.intervals(token_ids).items()):
        require_fit(bundle, f"{store.dir}: token {t}", interval_ms=ms)


def _plain(obj: Any) -> Any:
    """NumPy scalars and arrays -> Python numbers and lists, so the file needs no pickled NumPy objects."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def bundle_payload(bundle: ModelBundle) -> dict[str, Any]:
    """Everything of a bundle but its weights, as plain data (the model file adds the weights, an ONNX file
    keeps it as metadata beside its network)."""
    from pumpcast import __version__

    return {
        "format_version": FORMAT_VERSION,
        "pumpcast_version": __version__,
        "features": list(bundle.features),
        "model_config": bundle.config.to_dict(),
        "data_config": _plain(asdict(bundle.data)),
        "normalization": {"center": bundle.normalizer.center.tolist(), "scale": bundle.normalizer.scale.tolist()},
        "metrics": {k: float(v) for k, v in bundle.metrics.items()},
        "pump": _plain(bundle.pump.to_dict()) if bundle.pump is not None else None,
        "rollout_damping": float(bundle.rollout_damping),
        "forecast_calibration": (
            bundle.forecast_calibration.to_dict() if bundle.forecast_calibration is not None else None
        ),
    }


def save_model_file(bundle: ModelBundle, path: str | Path) -> Path:
    """Write the model file atomically (a crash leaves the previous file intact)."""
    payload = bundle_payload(bundle)
    payload["state_dict"] = {k: v.detach().cpu().clone() for k, v in bundle.model.state_dict().items()}
    path = Path(path)
    atomic_write(path, lambda p: torch.save(payload, p), suffix=".pth")
    return path


def _migrate(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """Bring an older format up to FORMAT_VERSION."""
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path}: not a pumpcast model file (no format_version)")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format {version} is newer than this pumpcast's ({FORMAT_VERSION}); upgrade"
        )
    if version == 1:  # 1 -> 2: the loss is named; "no pump head" is None
        payload["model_config"] = {"loss": "huber", **payload["model_config"]}
        payload["pump"] = payload.get("pump") or None
    payload.setdefault("forecast_calibration", None)  # 2 -> 3: no forecast calibration
    return payload


def load_model_file(path: str | Path, map_location: str | torch.device = "cpu") -> ModelBundle:
    """Load a model file without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file; train one with save_model={path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(
            f"{path}: refused: the file holds pickled objects other than tensors and plain data, so it was not "
            "written by pumpcast or was tampered with; nothing in it was run"
        ) from exc
    except Exception as exc:  # torch raises many types for files that are not torch files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelFileError(f"{path}: unreadable model file ({type(exc).__name__}: {first})") from exc
    if not isinstance(payload, dict):
        raise ModelFileError(f"{path}: not a pumpcast model file")
    payload = _migrate(payload, path)
    try:
        model = PumpcastTransformer(ModelConfig.from_dict(payload["model_config"]))
        model.load_state_dict(payload["state_dict"])
        broken = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:
            raise ModelFileError(f"{path}: weights {broken[:3]} hold NaN or infinite values; retrain the model")
    except ModelFileError:
        raise
    except ConfigError as exc:
        raise ModelFileError(f"{path}: bad model config ({exc})") from exc
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: damaged model file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    return bundle_from_payload(payload, model.eval(), path)


def bundle_from_payload(payload: dict[str, Any], model: Any, path: Path) -> ModelBundle:
    """A bundle from a (migrated) payload and its network, every part and value checked: a value the file may
    not hold (a NaN threshold, a damping of 5, a negative interval) is a one-line error naming the file and
    the field, never a silent wrong result or an error about a flag the user did not pass."""
    try:
        if tuple(payload["features"]) != FEATURES:
            raise ModelFileError(
                f"{path}: model trained on features {payload['features']}, this pumpcast uses {FEATURES}"
            )
        norm = payload["normalization"]
        center, scale = np.asarray(norm["center"], dtype=np.float64), np.asarray(norm["scale"], dtype=np.float64)
        if not (np.isfinite(center).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise ModelFileError(f"{path}: its normalisation must be finite with positive scales; retrain the model")
        data = DataInfo.from_dict(payload.get("data_config", {}))
        damping = payload.get("rollout_damping", 1.0)
        metrics = payload.get("metrics", {})
        for name, value, ok, rule in (
            ("data_config.interval_ms", data.interval_ms, _positive_int(data.interval_ms), "a bar length in ms > 0"),
            ("rollout_damping", damping, _number(damping) and 0.0 <= damping <= 1.0, "a number in [0, 1]"),
            ("metrics", metrics, isinstance(metrics, dict) and all(map(_number, metrics.values())), "numbers"),
        ):
            if not ok:
                raise ModelFileError(f"{path}: {name} is {value!r}, it must be {rule}; retrain or restore the file")
        pump, calibration = payload.get("pump"), payload.get("forecast_calibration")
        pump = PumpCalibration.from_dict(pump, str(path)) if pump is not None else None
        return ModelBundle(
            model=model,
            normalizer=Normalizer(center, scale),
            data=data,
            metrics=metrics,
            features=tuple(payload["features"]),
            pump=pump,
            rollout_damping=float(damping),
            forecast_calibration=(
                ForecastCalibration.from_dict(calibration, model.config.horizon, str(path))
                if calibration is not None
                else None
            ),
            source=str(path),
        )
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: damaged model file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(value))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
