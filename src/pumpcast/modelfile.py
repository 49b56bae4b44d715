"""The model file (`--save-model model_v2.pth`): weights plus everything needed to use them, loadable safely.

Contents are plain containers, numbers, strings and tensors only, so loading uses
`torch.load(weights_only=True)` and a file carrying any other pickled object is refused before anything in it
runs. FORMAT_VERSION is bumped only with a migration in `_migrate`, so files made by older releases keep
loading (tests/data holds one per format to prove it).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pumpcast.model import ModelConfig, PumpcastTransformer
from pumpcast.schema import FEATURES, PumpcastError
from pumpcast.store import atomic_write
from pumpcast.windows import Normalizer

FORMAT_VERSION = 1


@dataclass
class ModelBundle:
    """A trained model with its configs, feature names and normalisation."""

    model: PumpcastTransformer
    normalizer: Normalizer
    data_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    features: tuple[str, ...] = FEATURES
    # pump head: calibration [[a, b] x 3], threshold, horizon, false-alarm budget, baseline thresholds, all
    # chosen on validation data
    pump: dict[str, Any] = field(default_factory=dict)
    # long rollouts scale the c-th pass's price moves by rollout_damping**c (chosen on validation data)
    rollout_damping: float = 1.0

    @property
    def config(self) -> ModelConfig:
        return self.model.config


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


def save_model_file(bundle: ModelBundle, path: str | Path) -> Path:
    """Write the model file atomically (a crash leaves the previous file intact)."""
    from pumpcast import __version__

    payload = {
        "format_version": FORMAT_VERSION,
        "pumpcast_version": __version__,
        "features": list(bundle.features),
        "model_config": bundle.config.to_dict(),
        "data_config": _plain(bundle.data_config),
        "normalization": {"center": bundle.normalizer.center.tolist(), "scale": bundle.normalizer.scale.tolist()},
        "metrics": {k: float(v) for k, v in bundle.metrics.items()},
        "pump": _plain(bundle.pump),
        "rollout_damping": float(bundle.rollout_damping),
        "state_dict": {k: v.detach().cpu().clone() for k, v in bundle.model.state_dict().items()},
    }
    path = Path(path)
    atomic_write(path, lambda p: torch.save(payload, p), suffix=".pth")
    return path


def _migrate(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """Bring an older format up to FORMAT_VERSION (none yet: version 1 is the first)."""
    version = int(payload.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise PumpcastError(f"{path}: model format {version} is newer than this pumpcast's ({FORMAT_VERSION}); upgrade")
    if version < 1:
        raise PumpcastError(f"{path}: not a pumpcast model file (no format_version)")
    return payload


def load_model_file(path: str | Path, map_location: str | torch.device = "cpu") -> ModelBundle:
    """Load a model file without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise PumpcastError(f"{path}: no such model file; train one with --save-model {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PumpcastError(
            f"{path}: refused: the file holds pickled objects other than tensors and plain data, so it was not "
            "written by pumpcast or was tampered with; nothing in it was run"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise PumpcastError(f"{path}: unreadable model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict):
        raise PumpcastError(f"{path}: not a pumpcast model file")
    payload = _migrate(payload, path)
    if tuple(payload["features"]) != FEATURES:
        raise PumpcastError(f"{path}: model trained on features {payload['features']}, this pumpcast uses {FEATURES}")
    model = PumpcastTransformer(ModelConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    norm = payload["normalization"]
    return ModelBundle(
        model=model,
        normalizer=Normalizer(norm["center"], norm["scale"]),
        data_config=payload.get("data_config", {}),
        metrics=payload.get("metrics", {}),
        features=tuple(payload["features"]),
        pump=payload.get("pump", {}),
        rollout_damping=float(payload.get("rollout_damping", 1.0)),
    )
