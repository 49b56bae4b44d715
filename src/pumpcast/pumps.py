"""What a model file keeps of its pump head's calibration on validation data (`PumpCalibration`), the Platt
scaling it applies, and how an alarm threshold is chosen to a false-alarm budget. What a pump event is lives
in events.py, the event metrics in metrics.py, the baselines set beside the model in detectors.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from scipy.special import expit

from pumpcast.config import PumpConfig
from pumpcast.detectors import BaselineSet, Ensemble
from pumpcast.events import PUMP_TARGETS
from pumpcast.schema import ModelFileError
from pumpcast.stacking import Stacker

#: The detectors `PumpDetector` (and so `detect`) can be: the network's calibrated pump head or the stacker.
DETECTORS = ("model", "stacker")
#: Fewer validation events than this and the thresholds rest on too little: said in a warning and the file.
MIN_EVENTS = 5


def fit_platt(logits: np.ndarray, labels: np.ndarray, iters: int = 200) -> tuple[float, float]:
    """Platt scaling on validation data: (a, b) so that sigmoid(a * logit + b) is calibrated. The pump head is
    trained with positives up-weighted (pumps are rare), which inflates its raw probabilities; this undoes it.
    Identity when the data has no positive or no negative."""
    import torch

    y = np.asarray(labels, dtype=np.float64)
    keep = np.isfinite(y) & np.isfinite(logits)
    if keep.sum() < 2 or y[keep].min() == y[keep].max():
        return 1.0, 0.0
    x_t = torch.tensor(np.asarray(logits)[keep], dtype=torch.float64)
    y_t = torch.tensor(y[keep], dtype=torch.float64)
    a = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * x_t + b, y_t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(a.detach()), float(b.detach())


def calibrated(logits: np.ndarray, calibration: Sequence[Sequence[float]]) -> np.ndarray:
    """Raw pump logits (..., 3) -> calibrated probabilities (..., 3); NaN stays NaN."""
    ab = np.asarray(calibration, dtype=np.float64)
    return expit(np.asarray(logits) * ab[:, 0] + ab[:, 1])  # the logistic function, without overflow warnings


def _legacy_baselines(d: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Model files before tuned baselines kept only the thresholds of volume_z and buys_z, which were z-scores
    over 60 bars with the standard deviation floored at 0.5."""
    return {
        str(name): {"kind": "ZScoreDetector", "signal": str(name), "window": 60, "floor": 0.5, "threshold": float(th)}
        for name, th in d.get("baseline_thresholds", {}).items()
    }


@dataclass
class PumpCalibration:
    """Everything chosen on validation data for a model's pump head, stored in its model file: Platt (a, b)
    per pump output, which output raises alarms ("any" or "now"), the alarm threshold for the false-alarm
    budget, the tuned baselines, each with its threshold for the same budget, the ensemble of the model and its
    best baseline with its threshold, the stacker (stacking.py) with its threshold, which of the model and the
    stacker `PumpDetector` uses (`detector`, the better on validation), how many validation events the choices
    rest on, and the validation metrics behind them. Parsed and checked once, when the model file is read."""

    horizon: int
    calibration: list[list[float]] = field(default_factory=lambda: [[1.0, 0.0]] * len(PUMP_TARGETS))
    threshold: float = float("inf")
    max_false_alarms_per_day: float = PumpConfig.max_false_alarms_per_day
    alarm_output: str = "any"
    baselines: BaselineSet = field(default_factory=BaselineSet)
    ensemble: Ensemble | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""
    stacker: Stacker | None = None
    detector: str = "model"
    val_events: int = 0  # the validation (or out-of-fold) events thresholds were chosen on
    cross_fit: int = 0  # sub-models that scored the training tokens out of fold (0: validation tokens only)

    def probability(self, logits: np.ndarray) -> np.ndarray:
        """Raw pump logits (T, 3) -> the calibrated probability (T,) of the output that raises alarms."""
        return calibrated(logits, self.calibration)[:, PUMP_TARGETS.index(self.alarm_output)]

    @property
    def thresholds(self) -> dict[str, float]:
        """The alarm threshold of the model, of each baseline, of the ensemble and of the stacker."""
        ensemble = {"ensemble": self.ensemble.threshold} if self.ensemble is not None else {}
        stacker = {"stacker": self.stacker.threshold} if self.stacker is not None else {}
        return {"model": self.threshold, **self.baselines.thresholds, **ensemble, **stacker}

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the model file."""
        typed = ("baselines", "ensemble", "stacker")
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in typed}
        return plain | {
            "baselines": self.baselines.to_dict(),
            "ensemble": asdict(self.ensemble) if self.ensemble is not None else {},
            "stacker": self.stacker.to_dict() if self.stacker is not None else {},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model file") -> PumpCalibration:
        try:
            cal = cls(
                horizon=int(d["horizon"]),
                calibration=[[float(a), float(b)] for a, b in d["calibration"]],
                threshold=float(d["threshold"]),
                max_false_alarms_per_day=float(d["max_false_alarms_per_day"]),
                alarm_output=str(d.get("alarm_output", "any")),
                baselines=BaselineSet.from_dict(d["baselines"] if "baselines" in d else _legacy_baselines(d), where),
                ensemble=Ensemble.from_dict(d["ensemble"], where) if d.get("ensemble") else None,
                val_metrics=dict(d.get("val_metrics", {})),
                note=str(d.get("note", "")),
                stacker=Stacker.from_dict(d["stacker"], where) if d.get("stacker") else None,
                detector=str(d.get("detector", "model")),  # files before the stacker: the network
                val_events=int(d.get("val_events", 0)),
                cross_fit=int(d.get("cross_fit", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: damaged pump calibration ({type(exc).__name__}: {exc})") from exc
        if len(cal.calibration) != len(PUMP_TARGETS) or cal.alarm_output not in PUMP_TARGETS:
            raise ModelFileError(f"{where}: damaged pump calibration (outputs or alarm_output)")
        if cal.detector not in DETECTORS or (cal.detector == "stacker" and cal.stacker is None):
            raise ModelFileError(f"{where}: pump.detector is {cal.detector!r}, it must be one of {DETECTORS} it has")
        for name, value, ok, rule in (
            ("pump.horizon", cal.horizon, cal.horizon >= 1, "a number of steps >= 1"),
            ("pump.calibration", cal.calibration, np.isfinite(cal.calibration).all(), "finite Platt parameters"),
            ("pump.threshold", cal.threshold, 0.0 <= cal.threshold <= 1.0 or cal.threshold == np.inf,
             "a probability in [0, 1] (or inf: no alarms)"),
            ("pump.max_false_alarms_per_day", cal.max_false_alarms_per_day,
             0.0 < cal.max_false_alarms_per_day < np.inf, "a positive number"),
        ):
            if not ok:
                raise ModelFileError(f"{where}: {name} is {value!r}, it must be {rule}; retrain or restore the file")
        return cal
