"""Lazy training windows over stored series, and the scale-free normalisation they are served in.

A window is seq_len input steps followed by horizon target steps of one token. Windows are never
materialised: the dataset keeps each token's series once (float32, flat) and an index of where windows may
start; a batch is gathered with one fancy-indexing call. Memory grows with the data, not with seq_len x the
number of windows.

Normalisation is scale-free, so one model serves tokens whose prices differ by 1e9x:
- level features (price, liquidity, market cap): log(x) minus the log of the last input step;
- activity features (volume, buys, sells): log1p(x / mean of the window's inputs).
Both use the input part of the window only (nothing from the future), then a per-feature centre and scale,
fitted on training windows only, bring every feature to unit variance. Absent values are masked, not zeroed
into the data: their normalised value is 0 and their mask is False.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from pumpcast.events import PUMP_TARGETS
from pumpcast.schema import BUYS, FEATURES, LIQUIDITY, MARKET_CAP, PRICE, SELLS, VOLUME, PumpcastError

if TYPE_CHECKING:
    from pumpcast.store import TokenDataManager

LEVEL = (PRICE, LIQUIDITY, MARKET_CAP)
ACTIVITY = (VOLUME, BUYS, SELLS)
assert ACTIVITY[0] == VOLUME
NORM_DTYPE = np.dtype(
    [
        ("feature", "S16"),
        ("transform", "S16"),
        ("input_center", "<f8"),
        ("input_scale", "<f8"),
        ("target_center", "<f8"),
        ("target_scale", "<f8"),
    ]
)


def to_base(raw: np.ndarray) -> np.ndarray:
    """Raw features (..., 6) -> the per-step base values windows are built from: logs of level features,
    activity features as they are; NaN stays NaN (absent)."""
    base = np.array(raw, dtype=np.float64, copy=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        base[..., LEVEL] = np.log(base[..., LEVEL])
    return base


def relative(base: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Base values of windows (B, W, 6) -> values relative to each window's inputs, and the references (B, 6).

    Reference: last input step for level features, mean input activity for activity features.
    ACTIVITY must start with VOLUME (checked at import). Wide windows (B, W, 6 + C) keep their channel columns
    (channels.py: already scale-free) as they are; references are of the six features only.
    """
    ref = np.empty((base.shape[0], len(FEATURES)), dtype=np.float64)
    rel = np.empty_like(base, dtype=np.float64)
    rel[..., len(FEATURES) :] = base[..., len(FEATURES) :]
    ref[:, LEVEL] = base[:, seq_len - 1, LEVEL]
    rel[..., LEVEL] = base[..., LEVEL] - ref[:, None, LEVEL]
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(
            np.where(np.isfinite(base[:, :seq_len, ACTIVITY]), base[:, :seq_len, ACTIVITY], np.nan), axis=1
        )
    idle = ~(np.isfinite(mean) & (mean > 0))
    # Trade counts are unitless, so an idle window keeps a scale of one trade; volume has a currency unit and
    # no scale can be read off an idle window: its volume is then unknown (masked), not guessed.
    mean[:, 1:] = np.where(idle[:, 1:], 1.0, mean[:, 1:])
    mean[:, 0] = np.where(idle[:, 0], np.nan, mean[:, 0])
    ref[:, ACTIVITY] = mean
    with np.errstate(invalid="ignore"):
        rel[..., ACTIVITY] = np.log1p(base[..., ACTIVITY] / mean[:, None, :])
    rel[:, :seq_len, VOLUME] = np.where(
        idle[:, None, 0] & np.isfinite(base[:, :seq_len, VOLUME]), 0.0, rel[:, :seq_len, VOLUME]
    )  # idle inputs are known zeros
    return rel, ref


def window_span(
    length: int, target_range: tuple[int, int], seq_len: int, horizon: int, stride: int = 1
) -> tuple[int, int]:
    """(first input step of the first window, number of windows) of one token: windows whose targets lie in
    target_range. Needs only the token's length, so shards and samplers can be planned from metadata."""
    a, b = target_range
    lo = max(0, a - seq_len)
    hi = min(b, length) - seq_len - horizon  # first input step of the last window
    return lo, (max(0, (hi - lo) // max(1, stride) + 1) if hi >= lo else 0)


class Normalizer:
    """Per-feature centre and scale of window-relative values, one pair for input steps and one for target
    steps, fitted on training windows only.

    Inputs and targets get their own scale because they differ by orders of magnitude: a price 500 steps back
    is far from the last input step, the next 16 steps are close to it. With one shared scale the price
    targets would be tiny and the loss would hardly see them.
    """

    def __init__(self, center: np.ndarray, scale: np.ndarray):
        # (2, 6): row 0 for input steps, row 1 for target steps; a (6,) pair serves both
        self.center = np.broadcast_to(np.asarray(center, dtype=np.float64), (2, len(FEATURES))).copy()
        self.scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (2, len(FEATURES))).copy()

    @classmethod
    def identity(cls) -> Normalizer:
        return cls(np.zeros(len(FEATURES)), np.ones(len(FEATURES)))

    def normalize(self, rel: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Relative values (B, W, 6 [+ C]) whose first seq_len steps are inputs -> (normalised float32 with
        absent set to 0, mask); channel columns pass as they are (channels.py bounds them)."""
        mask = np.isfinite(rel)
        row = (np.arange(rel.shape[1]) >= seq_len).astype(int)  # 0 for inputs, 1 for targets
        extra = rel.shape[-1] - len(FEATURES)
        center = np.pad(self.center, ((0, 0), (0, extra)))[row]
        scale = np.pad(self.scale, ((0, 0), (0, extra)), constant_values=1.0)[row]
        z = (rel - center) / scale
        return np.where(mask, z, 0.0).astype(np.float32), mask

    def denormalize(self, z: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Normalised target values (B, H, 6) and references (B, 6) -> raw features (B, H, 6)."""
        rel = np.clip(np.asarray(z, dtype=np.float64) * self.scale[1] + self.center[1], -50.0, 50.0)
        raw = np.empty_like(rel)
        raw[..., LEVEL] = np.exp(rel[..., LEVEL] + ref[:, None, LEVEL])
        raw[..., ACTIVITY] = np.expm1(np.maximum(rel[..., ACTIVITY], 0.0)) * ref[:, None, ACTIVITY]
        raw[..., VOLUME] = np.where(np.isfinite(ref[:, None, VOLUME]), raw[..., VOLUME], 0.0)  # idle stays idle
        return raw

    def to_array(self) -> np.ndarray:
        """Structured array for normalization_params.npy (no pickling needed to read it back)."""
        arr = np.zeros(len(FEATURES), dtype=NORM_DTYPE)
        for i, name in enumerate(FEATURES):
            kind = "log_rel_last" if i in LEVEL else "log1p_rel_mean"
            arr[i] = (
                name.encode(),
                kind.encode(),
                self.center[0, i],
                self.scale[0, i],
                self.center[1, i],
                self.scale[1, i],
            )
        return arr

    @classmethod
    def from_array(cls, arr: np.ndarray) -> Normalizer:
        names = [n.decode() for n in arr["feature"]]
        if names != list(FEATURES):
            raise PumpcastError(f"normalization params name features {names}, expected {list(FEATURES)}")
        return cls(
            np.stack([arr["input_center"], arr["target_center"]]), np.stack([arr["input_scale"], arr["target_scale"]])
        )

    @classmethod
    def fit(cls, dataset: WindowDataset, max_windows: int = 4096, seed: int = 0) -> Normalizer:
        """Fit on (a deterministic sample of) the given training windows."""
        idx = np.sort(
            np.random.default_rng(seed).choice(len(dataset), size=min(len(dataset), max_windows), replace=False)
        )
        return cls.from_relative(relative(dataset.gather_base(idx), dataset.seq_len)[0], dataset.seq_len)

    @classmethod
    def fit_store(
        cls,
        store: TokenDataManager,
        ranges: Mapping[int, tuple[int, int]],
        seq_len: int,
        horizon: int,
        stride: int = 1,
        max_windows: int = 4096,
        seed: int = 0,
    ) -> Normalizer:
        """The same fit as `fit` over a dataset of these ranges, reading only the tokens the sample touches,
        one at a time (a store may not fit in memory)."""
        lengths = store.lengths()
        ids = sorted(t for t in ranges if t in lengths)
        counts = [window_span(lengths[t], ranges[t], seq_len, horizon, stride)[1] for t in ids]
        cum = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        idx = np.sort(
            np.random.default_rng(seed).choice(int(cum[-1]), size=min(int(cum[-1]), max_windows), replace=False)
        )
        owner = np.searchsorted(cum, idx, side="right") - 1
        parts = []
        for k in np.unique(owner):
            t = ids[k]
            one = WindowDataset({t: store.read_features(t)}, {t: ranges[t]}, seq_len, horizon, stride=stride)
            parts.append(one.gather_base(idx[owner == k] - cum[k]))
        return cls.from_relative(relative(np.concatenate(parts), seq_len)[0], seq_len)

    @classmethod
    def from_relative(cls, rel: np.ndarray, seq_len: int) -> Normalizer:
        """Centre and scale of relative windows (B, L + H, 6)."""
        center = np.zeros((2, len(FEATURES)))
        scale = np.ones((2, len(FEATURES)))
        for row, part in enumerate((rel[:, :seq_len], rel[:, seq_len:])):
            for f in range(len(FEATURES)):
                v = part[..., f][np.isfinite(part[..., f])]
                if v.size < 2:
                    continue
                # Level features stay centred on 0 = "no change since the last input step", so a model with
                # no information predicts persistence instead of a drift that long rollouts compound.
                c = 0.0 if f in LEVEL else v.mean()
                s = np.sqrt(((v - c) ** 2).mean())
                if s > 1e-8:
                    center[row, f], scale[row, f] = c, s
        return cls(center, scale)


class WindowDataset(Dataset):
    """Windows whose targets lie inside each token's target range; see the module docstring.

    series: token id -> raw features (T, 6), or wide inputs (T, 6 + C) (channels.model_inputs); ranges: token
    id -> [start, end) of allowed target steps.
    A batch (via __getitems__) is a dict of tensors: x (B, L, 6 [+ C]), x_mask, y (B, H, 6) (the features
    only: channels are never targets), y_mask, ref (B, 6),
    token (B,), start (B,) = index of the first input step, pump (B, 3) = the pump labels of the last input
    step (labels: token id -> (T, 3), see pumps.pump_labels; NaN for tokens whose events are unknown).
    """

    def __init__(
        self,
        series: Mapping[int, np.ndarray],
        ranges: Mapping[int, tuple[int, int]],
        seq_len: int,
        horizon: int,
        normalizer: Normalizer | None = None,
        stride: int = 1,
        labels: Mapping[int, np.ndarray] | None = None,
    ):
        self.seq_len, self.horizon, self.stride = int(seq_len), int(horizon), max(1, int(stride))
        self.normalizer = normalizer or Normalizer.identity()
        self.token_ids = np.array(sorted(t for t in ranges if t in series), dtype=np.int64)
        parts, label_parts, offsets, first, counts = [], [], [], [], []
        pos = 0
        for t in self.token_ids:
            base = to_base(series[int(t)]).astype(np.float32)
            lo, count = window_span(base.shape[0], ranges[int(t)], self.seq_len, self.horizon, self.stride)
            counts.append(count)
            first.append(lo)
            offsets.append(pos)
            parts.append(base)
            if labels is not None:  # tokens whose events are unknown get NaN labels
                label_parts.append(labels.get(int(t), np.full((base.shape[0], len(PUMP_TARGETS)), np.nan, np.float32)))
            pos += base.shape[0]
        width = next(iter(series.values())).shape[1] if series else len(FEATURES)
        self.flat = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
        self.flat_labels = np.concatenate(label_parts).astype(np.float32) if label_parts else None
        self.offsets = np.array(offsets, dtype=np.int64)
        self.first = np.array(first, dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.cum[-1])

    def locate(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Window indices -> (position of the token in token_ids, first input step)."""
        idx = np.asarray(idx, dtype=np.int64)
        k = np.searchsorted(self.cum, idx, side="right") - 1
        return k, self.first[k] + (idx - self.cum[k]) * self.stride

    def gather_base(self, idx: np.ndarray) -> np.ndarray:
        """Base values of the given windows, (B, L + H, 6) float64, gathered in one indexing call."""
        k, start = self.locate(idx)
        rows = (self.offsets[k] + start)[:, None] + np.arange(self.seq_len + self.horizon)
        return self.flat[rows].astype(np.float64)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        k, start = self.locate(idx)
        rel, ref = relative(self.gather_base(idx), self.seq_len)
        z, mask = self.normalizer.normalize(rel, self.seq_len)
        L = self.seq_len
        last = self.offsets[k] + start + L - 1  # row of each window's last input step
        return {
            "pump": torch.from_numpy(
                self.flat_labels[last]
                if self.flat_labels is not None
                else np.full((len(idx), len(PUMP_TARGETS)), np.nan, np.float32)
            ),
            "x": torch.from_numpy(z[:, :L]),
            "x_mask": torch.from_numpy(mask[:, :L]),
            "y": torch.from_numpy(np.ascontiguousarray(z[:, L:, : len(FEATURES)])),
            "y_mask": torch.from_numpy(np.ascontiguousarray(mask[:, L:, : len(FEATURES)])),
            "ref": torch.from_numpy(ref),
            "token": torch.from_numpy(self.token_ids[k]),
            "start": torch.from_numpy(start),
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DataLoader collate for WindowDataset: __getitems__ already returns a batch."""
    return batch
