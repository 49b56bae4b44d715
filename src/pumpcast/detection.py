"""Pump detection with a trained model: scores and alarms.

`PumpDetector` turns bars into the calibrated probability that a pump is starting or under way, and that
probability into alarms at the threshold chosen on validation data. It scores a whole history at once
(`score`) or bars as they arrive (`update`), through the same window code, so a live feed raises exactly the
alarms a replay of the same bars raises. The probability at bar t comes from the seq_len bars that end at t:
nothing after t is read.

`score_ranges` is where calibration (calibration.py) and scoring (scoring.py) both start: the model's logits
and the baselines' scores over given ranges of stored tokens.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from pumpcast.channels import CONTEXT, channel_names, check_width, columns, covariates, model_inputs, union
from pumpcast.detectors import BaselineSet
from pumpcast.events import PUMP_TARGETS, TokenScores, alarm_onsets
from pumpcast.modelfile import ModelBundle
from pumpcast.onnxfile import load_bundle
from pumpcast.pumps import PumpCalibration
from pumpcast.schema import EXTRA_FEATURES, FEATURES, DataError, ModelFileError, TokenSeries
from pumpcast.stacking import STACK_GROUPS, stack_inputs
from pumpcast.store import TokenDataManager
from pumpcast.windows import relative, to_base

#: The network is always asked for exactly this many windows at once (the last call of a history and a live bar
#: are padded with copies of their last window). Matrix kernels choose their code by the batch's shape, so a
#: window scored in a batch of 8 and in one of 128 can differ in the last bits (seen on a Xeon in 2026: batches of
#: 8 differ from 16 and up); with one shape, a bar's probability is the same bits whether it is scored alone by
#: `update` or among others in a replay of a whole history. 32 costs 9% per window against 128 and makes a live
#: bar 4.6 ms on one thread (default model; 128 rows would make it 17 ms).
SCORE_BATCH = 32
#: Windows of a history gathered at a time (memory stays bounded however long the history).
HISTORY_CHUNK = 8 * SCORE_BATCH
#: Windows prepared (made relative and normalised) at a time: small enough to stay in the CPU cache, which
#: makes preparation 2.5x faster than in batches of 256.
PREP_ROWS = 16


def pump_logits(
    bundle: ModelBundle, history: np.ndarray | TokenSeries, lo: int = 0, hi: int | None = None
) -> np.ndarray:
    """Raw pump logits (T, 3) of one token (a TokenSeries, its wide inputs (T, 6 + C) or its raw features
    (T, 6), which leave the model's channels absent): row t from the window that ends at step t, for t in
    [lo, hi); NaN elsewhere and where no full window exists yet."""
    groups = bundle.config.groups
    inputs = model_inputs(history, groups) if isinstance(history, TokenSeries) else check_width(history, groups)
    n, L = inputs.shape[0], bundle.config.seq_len
    out = np.full((n, len(PUMP_TARGETS)), np.nan)
    ends = np.arange(max(lo, L - 1), n if hi is None else min(hi, n))
    base = to_base(inputs)
    for i in range(0, ends.size, HISTORY_CHUNK):  # bounded memory: a few network batches of windows at a time
        chunk = ends[i : i + HISTORY_CHUNK]
        out[chunk] = window_logits(bundle, base[chunk[:, None] - L + 1 + np.arange(L)])
    return out


@torch.inference_mode()
def window_logits(bundle: ModelBundle, base_windows: np.ndarray) -> np.ndarray:
    """Base values of windows (b, L, 6 + C) -> raw pump logits (b, 3): the one place the network is asked, always
    with SCORE_BATCH windows (the last batch padded with copies of the last window)."""
    L, b = bundle.config.seq_len, base_windows.shape[0]
    parts = [
        bundle.normalizer.normalize(relative(base_windows[i : i + PREP_ROWS], L)[0], L) for i in range(0, b, PREP_ROWS)
    ]
    z, mask = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    pad = -b % SCORE_BATCH
    z = np.concatenate([z, np.repeat(z[-1:], pad, axis=0)])
    mask = np.concatenate([mask, np.repeat(mask[-1:], pad, axis=0)])
    device = next(bundle.model.parameters()).device
    out = []
    for i in range(0, z.shape[0], SCORE_BATCH):
        zi = torch.from_numpy(z[i : i + SCORE_BATCH]).to(device)
        _, logits = bundle.model(zi, torch.from_numpy(mask[i : i + SCORE_BATCH]).to(device), forecast=False)
        out.append(logits.float().cpu().numpy())
    return np.concatenate(out)[:b]


class Detection(NamedTuple):
    """One bar's result: the calibrated pump probability (NaN until seq_len bars are known) and whether an
    alarm begins at this bar (the first bar of a run at or above the threshold)."""

    probability: float
    alarm: bool


class PumpDetector:
    """Pump probabilities and alarms of a model with a calibrated pump head.

    `PumpDetector.load("model_v2.pth").score(history)` for a history (a TokenSeries, or raw features (T, 6));
    `update(bar, extras, start_ms)` for bars that arrive one at a time (it keeps the last seq_len bars, the raw
    bars its channels read, and whether the alarm is raised).

    It is one detector, the one the model file names (`detector`): the network's calibrated pump head ("model")
    or the stacker over the network's logits and the market signals ("stacker"), whichever was better on
    validation; `threshold` is that detector's. `scores` gives both.
    """

    def __init__(self, bundle: ModelBundle, threshold: float | None = None, device: str | torch.device | None = None):
        """device None leaves the network where it is: a detector may share it with a Forecaster (on a GPU, say)
        and must not move it under that forecaster's feet; the windows go to the network's device."""
        if not bundle.has_pump_head:
            raise ModelFileError("this model has no calibrated pump head; train it with pump_weight > 0")
        assert bundle.pump is not None
        self.bundle = bundle
        self.calibration: PumpCalibration = bundle.pump
        self.detector = self.calibration.detector
        self.threshold = self.calibration.thresholds[self.detector] if threshold is None else float(threshold)
        stacker = self.calibration.stacker
        #: the channel groups of this detector's wide inputs: the network's and, with a stacker, the stacker's
        self.groups = union(bundle.config.groups, STACK_GROUPS if stacker is not None else ())
        self._model_cols = columns(self.groups, bundle.config.groups)
        self._stack_cols = columns(self.groups, STACK_GROUPS, features=False) if stacker is not None else None
        if device is not None:
            bundle.model.to(torch.device(device))
        bundle.model.eval()
        self.seq_len = bundle.config.seq_len
        self.reset()

    @classmethod
    def load(cls, path: str | Path, threshold: float | None = None, device: str | torch.device = "cpu"):
        return cls(load_bundle(path), threshold, device)

    # ------------------------------------------------------------------ whole histories
    def inputs(self, history: np.ndarray | TokenSeries) -> np.ndarray:
        """A history as this detector's wide inputs (T, 6 + C): a TokenSeries gives every channel it can, raw
        features (T, 6) none (absent)."""
        if isinstance(history, TokenSeries):
            return model_inputs(history, self.groups)
        return check_width(np.asarray(history, dtype=np.float64), self.groups)

    def logits(self, history: np.ndarray | TokenSeries, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Raw pump logits (T, 3) of a history; see pump_logits."""
        return pump_logits(self.bundle, self.inputs(history)[:, self._model_cols], lo, hi)

    def probability(self, logits: np.ndarray) -> np.ndarray:
        """Raw logits (T, 3) -> the network's calibrated probability (T,) of the alarm output ("any": a pump
        starts within the pump horizon or is under way; "now": one is under way; chosen on validation)."""
        return self.calibration.probability(logits)

    def scores(self, history: np.ndarray | TokenSeries, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        """Per step of a history: the probability of the network ("model") and, with a stacker, the stacker's."""
        wide = self.inputs(history)
        logits = pump_logits(self.bundle, wide[:, self._model_cols], lo, hi)
        return self.scores_of(logits, wide)

    def scores_of(self, logits: np.ndarray, wide: np.ndarray) -> dict[str, np.ndarray]:
        """`scores` from logits already computed and the wide inputs of the same steps."""
        out = {"model": self.probability(logits)}
        if self._stack_cols is not None:
            assert self.calibration.stacker is not None
            out["stacker"] = self.calibration.stacker.score(stack_inputs(logits, wide[:, self._stack_cols]))
        return out

    def score(self, history: np.ndarray | TokenSeries, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The probability (T,) of this detector (see the class) at each step of a history; NaN before seq_len
        steps."""
        return self.scores(history, lo, hi)[self.detector]

    def alarms(self, probabilities: np.ndarray) -> np.ndarray:
        """Steps where an alarm begins: the first step of each run at or above the threshold."""
        return alarm_onsets(np.nan_to_num(probabilities) >= self.threshold)

    # ------------------------------------------------------------------ live bars
    def reset(self) -> None:
        """Forget the bars seen so far (a new token or a gap in the feed)."""
        self._window = np.full((self.seq_len, len(FEATURES) + len(channel_names(self.groups))), np.nan)
        self._raw = np.full((CONTEXT + 1, len(FEATURES)), np.nan)  # the raw bars the channels read
        self._extras = np.full((CONTEXT + 1, len(EXTRA_FEATURES)), np.nan)
        self._seen = 0
        self._alarmed = False

    def update(self, bar: np.ndarray, extras: np.ndarray | None = None, start_ms: int | None = None) -> Detection:
        """Take the newest closed bar (the six features, NaN where absent; with a model that reads channels its
        extras (schema.EXTRA_FEATURES) and its start (Unix ms), each None when unknown) and score the window it
        ends. Equal to the bit to `score` of the same bars as one history."""
        bar = np.asarray(bar, dtype=np.float64).reshape(-1)
        if bar.shape != (len(FEATURES),):
            raise DataError(f"a bar has {len(FEATURES)} features ({', '.join(FEATURES)}), got {bar.shape[0]}")
        if not (np.isfinite(bar[0]) and bar[0] > 0):
            raise DataError(f"bar {self._seen}: price {bar[0]!r} is not a positive number")
        groups = self.groups
        if groups:
            extra = np.full(len(EXTRA_FEATURES), np.nan) if extras is None else np.asarray(extras, np.float64)
            self._raw = np.concatenate([self._raw[1:], bar[None]])
            self._extras = np.concatenate([self._extras[1:], extra.reshape(1, -1)])
            times = None if start_ms is None else np.full(CONTEXT + 1, int(start_ms), dtype=np.int64)
            bar = np.concatenate([bar, covariates(self._raw, self._extras, times, groups, lo=CONTEXT)[0]])
        self._window = np.concatenate([self._window[1:], bar[None]])
        self._seen += 1
        if self._seen < self.seq_len:
            p = float("nan")
        else:
            logits = window_logits(self.bundle, to_base(self._window[:, self._model_cols])[None])
            p = float(self.scores_of(logits, self._window[-1:])[self.detector][0])
        alarmed = bool(np.nan_to_num(p) >= self.threshold)
        onset = alarmed and not self._alarmed
        self._alarmed = alarmed
        return Detection(p, onset)


# ---------------------------------------------------------------------- scoring stored ranges


@dataclass
class RangeScores:
    """One token scored over a range: raw pump logits (T, 3) and baseline scores (T,), NaN outside the range
    and where no full window exists yet."""

    token: TokenSeries
    logits: np.ndarray
    baselines: dict[str, np.ndarray]

    @property
    def steps_per_day(self) -> float:
        return self.token.steps_per_day


def score_ranges(
    bundle: ModelBundle,
    store: TokenDataManager,
    ranges: dict[int, tuple[int, int]],
    baselines: BaselineSet | None = None,
) -> list[RangeScores]:
    """Model logits and the scores of the given baselines (by default the model file's) over each token's range,
    the baselines only where the model scores too (same steps, same days); tokens whose events are unknown are
    left out (nothing to score against). Calibration at training and evaluation both start from here."""
    if baselines is None:
        baselines = bundle.pump.baselines if bundle.pump is not None else BaselineSet()
    out = []
    items = sorted(ranges.items())
    for t, rng in tqdm(items, desc="scoring tokens", unit="token", disable=len(items) < 5 or not sys.stderr.isatty()):
        scored = score_token_range(bundle, store.read(t), rng, baselines)
        if scored is not None:
            out.append(scored)
    return out


def score_token_range(
    bundle: ModelBundle, tok: TokenSeries, rng: tuple[int, int], baselines: BaselineSet
) -> RangeScores | None:
    """score_ranges for one token already read; None when its events are unknown or the range is empty."""
    a, b = rng
    if not tok.events_known or b <= a:
        return None
    logits = pump_logits(bundle, tok, a, b)
    outside = ~np.isfinite(logits[:, 0])
    scores = baselines.scores(tok)
    for s in scores.values():
        s[outside] = np.nan
    return RangeScores(tok, logits, scores)


def event_scores(detector: PumpDetector, scored: list[RangeScores]) -> dict[str, list[TokenScores]]:
    """Per-step scores for the event metrics: "detector" (the one `detect` uses, as the model file names it),
    the network's calibrated alarm probability ("model"), the stacker's when the file has one, each baseline
    and, when the model file has one, the ensemble of the model with its best baseline."""
    out: dict[str, list[TokenScores]] = {"detector": [], "model": []} if scored else {}
    out.update({name: [] for name in scored[0].baselines} if scored else {})
    ensemble = detector.calibration.ensemble
    for r in scored:
        tok = r.token
        mine = detector.scores_of(r.logits, detector.inputs(tok))
        for name in ("detector", *mine):
            s = mine[detector.detector if name == "detector" else name]
            out.setdefault(name, []).append(TokenScores(tok.token_id, s, tok.events, r.steps_per_day, tok.source))
        for name, s in r.baselines.items():
            out[name].append(TokenScores(tok.token_id, s, tok.events, r.steps_per_day, tok.source))
        if ensemble is not None and ensemble.baseline in r.baselines:
            both = ensemble.score(out["model"][-1].scores, r.baselines[ensemble.baseline])
            out.setdefault("ensemble", []).append(
                TokenScores(tok.token_id, both, tok.events, r.steps_per_day, tok.source)
            )
    return out
