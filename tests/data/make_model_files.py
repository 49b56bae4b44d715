"""Writes tests/data/model_v{FORMAT_VERSION}.pth and its expected forecast. Run once per new model format and
commit both files; never regenerate an existing one (that would hide a loading regression).

    python tests/data/make_model_files.py
"""

from pathlib import Path

import numpy as np
import torch

from pumpcast.baselines import Ridge
from pumpcast.forecast_calibration import ForecastCalibration
from pumpcast.model import ModelConfig, PumpcastTransformer
from pumpcast.modelfile import FORMAT_VERSION, DataInfo, ModelBundle, save_model_file
from pumpcast.pumps import PumpCalibration
from pumpcast.windows import Normalizer

HERE = Path(__file__).parent


def history(steps: int = 40) -> np.ndarray:
    """The fixed history the expected forecast is made from (2 tokens x steps, liquidity absent); format 3
    files use 80 steps (their model reads 64)."""
    rng = np.random.default_rng(0)
    h = np.abs(rng.normal(1.0, 0.05, (2, steps, 6))) + 0.01
    h[:, :, 2] = np.nan
    return h


def main() -> None:
    from pumpcast.detection import PumpDetector
    from pumpcast.forecasting import Forecaster

    path = HERE / f"model_v{FORMAT_VERSION}.pth"
    if path.exists():
        raise SystemExit(f"{path} exists: keep it; it guards loading of this format")
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    config = ModelConfig(
        seq_len=64,  # format 3: a calibrated quantile model (its ridge reads 61 steps)
        loss="quantile",
        horizon=4,
        embedding="conv",
        patch_len=8,
        embed_size=16,
        nhead=2,
        num_layers=1,
        dim_feedforward=32,
        head_hidden=32,
        pump_head=True,
        pump_horizon=5,
    )
    pump = PumpCalibration(
        horizon=5,
        calibration=[[1.0, -2.0], [0.5, 0.0], [1.0, -1.0]],
        threshold=0.5,
        max_false_alarms_per_day=1.0,
        baselines={  # format 3's files were written with the then-only thresholds: {"volume_z": 3.0, "buys_z": 3.0}
            name: {"kind": "ZScoreDetector", "signal": name, "window": 60, "floor": 0.5, "threshold": 3.0}
            for name in ("volume_z", "buys_z")
        },
    )
    bundle = ModelBundle(
        PumpcastTransformer(config).eval(),
        Normalizer(np.full(6, 0.01), np.full(6, 0.5)),
        data=DataInfo(interval_ms=60_000),
        metrics={"best_val_loss": 0.0},
        pump=pump,
        forecast_calibration=ForecastCalibration(
            weight=np.linspace(0.2, 1.0, 4),
            edges=np.array([-0.5, 0.5]),
            shrink=np.tile([0.0, 0.5, 1.0], (4, 1)),
            blend=np.tile([0.5, 0.5], (4, 1)),
            ridge=Ridge(np.zeros(23), np.ones(23), rng.normal(0, 1e-3, (23, 4)), np.zeros(4), np.ones(4)),
        ),
    )
    save_model_file(bundle, path)
    forecaster = Forecaster.load(path)
    np.save(HERE / f"model_v{FORMAT_VERSION}_forecast.npy", forecaster.rollout(history(80), 10))
    np.save(HERE / f"model_v{FORMAT_VERSION}_pump.npy", PumpDetector.load(path).score(history(80)[0]))


if __name__ == "__main__":
    main()
