"""The stacker: one pump detector learned over the network's pump logits and the causal market signals.

A logistic regression (scikit-learn) of "a pump starts within K bars or is under way" on the network's three
raw pump logits, the z-scores of volume, buys and rush orders and the clock (channels.py's zscores and
calendar columns). It is fitted on out-of-fold scores: with cross-fitting (PumpConfig.cross_fit) every real
training token is scored by a sub-model that never trained on it, so the stacker and its threshold see 16+
events instead of the 3 of one validation split. Its regularisation is chosen by grouped cross-validation over
tokens (GroupKFold: no token's bars on both sides), and the threshold on those cross-validated predictions,
never on bars the stacker was fitted on.

Every input comes from the bar and the bars before it, each computed from its own window, so `update` and
`score` agree to the bit (the score is summed term by term, in the same order for one row as for many).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import expit

from pumpcast.channels import channel_names
from pumpcast.events import PUMP_TARGETS
from pumpcast.metrics import average_precision
from pumpcast.schema import ModelFileError

#: The channel groups the stacker reads beside the logits.
STACK_GROUPS = ("zscores", "calendar")
#: Its inputs, in order.
STACK_INPUTS = (*(f"logit_{t}" for t in PUMP_TARGETS), *channel_names(STACK_GROUPS))
C_GRID = (0.001, 0.01, 0.1, 1.0)
#: Token groups of the cross-validation that chooses C (fewer when there are fewer tokens with events).
CV_FOLDS = 4


def stack_inputs(logits: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """(T, len(STACK_INPUTS)) from raw pump logits (T, 3) and the STACK_GROUPS columns (T, C); rows without
    logits are NaN (not scored), an absent channel counts as 0 (no surprise, no clock)."""
    x = np.concatenate([logits, np.nan_to_num(channels, nan=0.0)], axis=1)
    x[~np.isfinite(logits).all(axis=1)] = np.nan
    return x


@dataclass(frozen=True)
class Stacker:
    """The fitted regression as numbers (loaded without unpickling): input means and scales, weights, intercept,
    the chosen C, and the alarm threshold (a probability) for the false-alarm budget."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    C: float
    threshold: float = float("inf")

    def score(self, x: np.ndarray) -> np.ndarray:
        """Rows of stack_inputs (T, d) -> the probability (T,) of a pump starting or under way; NaN rows stay
        NaN. Term by term, so a row's bits do not depend on how many rows come with it."""
        z = (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        acc = np.full(z.shape[0], self.intercept)
        for j, w in enumerate(self.coef):
            acc = acc + z[:, j] * w
        return expit(acc)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"inputs": list(STACK_INPUTS)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model file") -> Stacker:
        try:
            if list(d["inputs"]) != list(STACK_INPUTS):
                raise ValueError(f"inputs {d['inputs']} are not this pumpcast's {list(STACK_INPUTS)}")
            st = cls(
                tuple(map(float, d["mean"])),
                tuple(map(float, d["scale"])),
                tuple(map(float, d["coef"])),
                float(d["intercept"]),
                float(d["C"]),
                float(d["threshold"]),
            )
            sizes = {len(st.mean), len(st.scale), len(st.coef)}
            if sizes != {len(STACK_INPUTS)}:
                raise ValueError(f"{sizes} weights for {len(STACK_INPUTS)} inputs")
            if not (np.isfinite([*st.mean, *st.scale, *st.coef, st.intercept]).all() and min(st.scale) > 0):
                raise ValueError("a weight is not a finite number or a scale is not positive")
            if not (0.0 <= st.threshold <= 1.0 or st.threshold == np.inf):
                raise ValueError(f"threshold {st.threshold!r} is not a probability (or inf)")
            return st
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: damaged stacker ({type(exc).__name__}: {exc}); retrain") from exc


def _fit(x: np.ndarray, y: np.ndarray, C: float, seed: int) -> Stacker:
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    fit = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit((x - mean) / scale, y)
    return Stacker(tuple(mean), tuple(scale), tuple(fit.coef_[0]), float(fit.intercept_[0]), C)


def fit_stacker(
    rows: Sequence[np.ndarray], labels: Sequence[np.ndarray], seed: int = 0
) -> tuple[Stacker, list[np.ndarray]] | None:
    """From each token's stack_inputs rows (T_i, d) and labels (T_i,): the stacker refitted on every finite row
    with the C of the best grouped cross-validated AUPRC, and each token's cross-validated probabilities (NaN
    where the row is) for choosing its threshold. None with fewer than 2 tokens that have a positive."""
    keep = [np.isfinite(r).all(axis=1) for r in rows]
    positive = [i for i, (y, k) in enumerate(zip(labels, keep, strict=True)) if y[k].sum() > 0]
    if len(positive) < 2:
        return None
    folds = min(CV_FOLDS, len(positive))
    order = np.random.default_rng(seed).permutation(len(rows))
    group = np.empty(len(rows), dtype=int)
    group[order] = np.arange(len(rows)) % folds  # whole tokens to a group
    best: tuple[float, float, list[np.ndarray]] | None = None
    for C in C_GRID:
        cv = [np.full(len(r), np.nan) for r in rows]
        for g in range(folds):
            inside = [i for i in range(len(rows)) if group[i] != g]
            y = np.concatenate([labels[i][keep[i]] for i in inside])
            if y.min() == y.max():
                continue
            st = _fit(np.concatenate([rows[i][keep[i]] for i in inside]), y, C, seed)
            for i in range(len(rows)):
                if group[i] == g and keep[i].any():
                    cv[i][keep[i]] = st.score(rows[i][keep[i]])
        scored = [np.isfinite(c) for c in cv]
        ap = average_precision(
            np.concatenate([y[s] for y, s in zip(labels, scored, strict=True)]),
            np.concatenate([c[s] for c, s in zip(cv, scored, strict=True)]),
        )
        if best is None or np.nan_to_num(ap, nan=-1.0) > best[0]:
            best = (float(np.nan_to_num(ap, nan=-1.0)), C, cv)
    assert best is not None
    _, C, cv = best
    x = np.concatenate([r[k] for r, k in zip(rows, keep, strict=True)])
    y = np.concatenate([y[k] for y, k in zip(labels, keep, strict=True)])
    return _fit(x, y, C, seed), cv
