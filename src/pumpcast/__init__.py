"""pumpcast: forecast crypto token markets and their pumps with a transformer.

The public Python API, importable from here (loaded on first use, so `import pumpcast` stays quick):

    fit, train, calibrate, package      make a model file from a store (training)
    tune                                search hyperparameters with Optuna (tuning)
    backtest                            cross-validate over tokens or time beside the baselines (backtest)
    Forecaster                          forecast histories with a model file (forecasting)
    PumpDetector                        pump probabilities and alarms, whole histories or bar by bar (detection)
    TokenDataManager                    the HDF5 token store (store)
    TrainConfig, DataConfig, ModelConfig, OptimConfig, PumpConfig, RuntimeConfig, TrackingConfig,
    TestConfig, TuneConfig, BacktestConfig   the settings (config)

Forecasts are research tools, not financial advice.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from pumpcast.schema import FEATURES, SCHEMA_VERSION, ConfigError, DataError, ModelFileError, PumpcastError

__version__ = "0.1.0"

_API = {
    "fit": "training",
    "train": "training",
    "calibrate": "calibration",
    "package": "training",
    "tune": "tuning",
    "backtest": "backtest",
    "Forecaster": "forecasting",
    "PumpDetector": "detection",
    "TokenDataManager": "store",
    "TrainConfig": "config",
    "DataConfig": "config",
    "ModelConfig": "config",
    "OptimConfig": "config",
    "PumpConfig": "config",
    "RuntimeConfig": "config",
    "TrackingConfig": "config",
    "TestConfig": "config",
    "TuneConfig": "config",
    "BacktestConfig": "config",
}

__all__ = [
    "FEATURES",
    "SCHEMA_VERSION",
    "ConfigError",
    "DataError",
    "ModelFileError",
    "PumpcastError",
    "__version__",
    *_API,
]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(f"pumpcast.{_API[name]}"), name)
    raise AttributeError(f"module 'pumpcast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
