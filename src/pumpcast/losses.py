"""Forecast losses. A loss owns three things that must agree: how many outputs the head gives per predicted
value (`outputs_per_value`), how those outputs are trained (`__call__`), and how they are decoded into a
forecast (`point`). A new kind of forecast (quantiles, a distribution) is one new class here, registered in
LOSSES; the model sizes its head from it and the Forecaster decodes with it.

Shapes: pred (B, H, F, K) = batch, horizon, features, outputs per value; target and mask (B, H, F).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from pumpcast.schema import PRICE, ConfigError


def feature_weights(n_features: int, aux_weight: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Price weighted 1, the other features aux_weight: price is the forecast that matters."""
    w = torch.full((n_features,), aux_weight, device=device, dtype=dtype)
    w[PRICE] = 1.0
    return w


class HuberLoss:
    """A point forecast trained with the Huber loss (robust to rug-pull-sized jumps) on normalised values.
    As a distribution it is one quantile, the median."""

    name: ClassVar[str] = "huber"
    outputs_per_value: ClassVar[int] = 1
    levels: ClassVar[tuple[float, ...]] = (0.5,)

    def __init__(self, delta: float = 1.0):
        self.delta = delta

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, aux_weight: float) -> torch.Tensor:
        """Mean loss over available target values (absent ones are left out)."""
        point = self.point(pred)
        m = mask.to(point.dtype) * feature_weights(point.shape[-1], aux_weight, point.device, point.dtype)
        err = torch.nn.functional.huber_loss(point, target, reduction="none", delta=self.delta)
        return (err * m).sum() / m.sum().clamp_min(1.0)

    def point(self, pred: torch.Tensor) -> torch.Tensor:
        """Head outputs (B, H, F, K) -> the point forecast (B, H, F), normalised."""
        return pred[..., 0]

    def quantiles(self, pred: torch.Tensor) -> torch.Tensor:
        """Head outputs (B, H, F, K) -> the forecast quantiles at `levels` (B, H, F, len(levels)), normalised."""
        return pred


class QuantileLoss(HuberLoss):
    """A forecast distribution: one output per quantile level, trained with the pinball loss. The point
    forecast is the median, the only MAE-optimal forecast: where most one-minute price changes are exactly
    zero, it says "no change" unless the model knows better. Decoded quantiles are sorted, so they never
    cross (monotone rearrangement, Chernozhukov et al. 2010)."""

    name: ClassVar[str] = "quantile"
    levels: ClassVar[tuple[float, ...]] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
    outputs_per_value: ClassVar[int] = len(levels)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, aux_weight: float) -> torch.Tensor:
        """Mean pinball loss over levels and available target values."""
        tau = torch.tensor(self.levels, device=pred.device, dtype=pred.dtype)
        diff = target[..., None] - pred  # (B, H, F, K)
        err = torch.maximum(tau * diff, (tau - 1) * diff).mean(dim=-1)  # (B, H, F)
        m = mask.to(pred.dtype) * feature_weights(pred.shape[-2], aux_weight, pred.device, pred.dtype)
        return (err * m).sum() / m.sum().clamp_min(1.0)

    def point(self, pred: torch.Tensor) -> torch.Tensor:
        return self.quantiles(pred)[..., self.levels.index(0.5)]

    def quantiles(self, pred: torch.Tensor) -> torch.Tensor:
        return torch.sort(pred, dim=-1).values


def mean_weights(levels: tuple[float, ...], grid: int = 1000) -> np.ndarray:
    """Weights w with mean ~= quantiles @ w: the mean of the piecewise-linear quantile function through the
    levels, held flat beyond the outer ones (a point forecast's single level is its own mean)."""
    u = (np.arange(grid) + 0.5) / grid
    eye = np.eye(len(levels))
    return np.array([np.interp(u, levels, eye[k]).mean() for k in range(len(levels))])


LOSSES: dict[str, type[HuberLoss]] = {"huber": HuberLoss, "quantile": QuantileLoss}


def get_loss(name: str) -> HuberLoss:
    """The loss registered under name."""
    if name not in LOSSES:
        raise ConfigError(f"loss {name!r}: choose one of {', '.join(LOSSES)}", "loss")
    return LOSSES[name]()


def pump_loss(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the three pump outputs, positives up-weighted (pumps are rare); windows of
    tokens whose events are unknown (NaN labels) are left out."""
    known = torch.isfinite(labels)
    if not known.any():
        return logits.sum() * 0.0
    err = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.nan_to_num(labels), pos_weight=pos_weight, reduction="none"
    )
    return (err * known).sum() / known.sum()
