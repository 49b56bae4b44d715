"""Pump detectors that need no network, the baselines every pump report sets beside the model.

Each scores bar t from bars up to t only (rolling windows that end at the bar, no whole-history statistic), so
appending bars never changes an earlier score, and each is tuned on data of the kind it will judge:

- z-scores of market activity: log quote volume, buy count, buy quote volume and buy share, each against the
  previous `window` bars with its standard deviation floored (thin markets sit flat for hours, and one ordinary
  trade after a flat hour must not score as an infinite surprise). Window and floor are chosen from a small grid
  on the non-test tokens (they fit nothing, so training and validation tokens both serve), by recall within the
  false-alarm budget, then fewer false alarms, then AUPRC.
- a logistic regression (scikit-learn) on La Morgia et al. (2020) style features: rush orders, taker orders,
  buy and total quote volume, buy share and returns, each now and against moving windows; fitted on training
  tokens, its regularisation chosen on validation tokens by AUPRC. Time of day is left out on purpose: it would
  learn the schedule of the groups in the data, not the market.
- La Morgia et al.'s random forest (scikit-learn) on the same features (`forest`), their published detector, and
  the same forest with the minute of the hour and the hour of the day (`forest_clock`), the strongest anchor on
  unseen events: fitted on training tokens, depth chosen on validation tokens by AUPRC, kept as the trees'
  arrays.

A `BaselineSet` holds the tuned detectors and their alarm thresholds as plain numbers, so a model file can keep
it (and load it without unpickling anything).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, Protocol

import numpy as np
import pandas as pd

from pumpcast.channels import calendar
from pumpcast.events import ANY, TokenScores, judged_kind, pump_labels
from pumpcast.metrics import average_precision, choose_threshold, event_metrics
from pumpcast.schema import BUYS, PRICE, SELLS, VOLUME, ModelFileError, TokenSeries

#: Bars over which a volume is put in units of the token's typical active bar (a day of 1-minute bars).
VOLUME_SCALE_BARS = 1440


def rolling_zscore(x: np.ndarray, window: int = 60, min_std: float = 0.5) -> np.ndarray:
    """z-score of each step against the previous `window` steps (past only; NaN where x is NaN and until a tenth
    of the window has values: a buy share has none in bars without trades), the standard deviation floored at
    min_std."""
    s = pd.Series(x, dtype="float64")
    past = s.shift(1).rolling(window, min_periods=max(2, window // 10))
    return ((s - past.mean()) / np.maximum(past.std(), min_std)).to_numpy(dtype=np.float64, copy=True)


def scaled_log_volume(v: np.ndarray) -> np.ndarray:
    """log1p of a volume in units of the median active bar of the previous VOLUME_SCALE_BARS bars: comparable
    across tokens whatever their price level; NaN stays NaN (absent)."""
    s = pd.Series(v, dtype="float64")
    scale = s.where(s > 0).shift(1).rolling(VOLUME_SCALE_BARS, min_periods=1).median()
    ratio = (s / scale).where(scale.notna(), np.sign(s))  # before the first active bar: 0, and 1 for that bar
    return np.log1p(ratio).to_numpy()


def _buy_share(tok: TokenSeries) -> np.ndarray:
    """Share of the bar's trades that are taker buys; NaN in a bar without trades."""
    buys, sells = tok.features[:, BUYS], tok.features[:, SELLS]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(buys + sells > 0, buys / (buys + sells), np.nan)


#: The z-scored signals: the per-bar series of a token, and the floors of its standard deviation to try.
SIGNALS: dict[str, tuple[Callable[[TokenSeries], np.ndarray], tuple[float, ...]]] = {
    "volume_z": (lambda tok: scaled_log_volume(tok.features[:, VOLUME]), (0.5, 1.0, 2.0)),
    "buys_z": (lambda tok: np.log1p(tok.features[:, BUYS]), (0.5, 1.0, 2.0)),
    "buy_volume_z": (lambda tok: scaled_log_volume(tok.extra("buy_volume")), (0.5, 1.0, 2.0)),
    "buy_share_z": (_buy_share, (0.05, 0.1, 0.2)),
}
WINDOWS = (60, 240, 1440)


class Detector(Protocol):
    """A baseline pump detector: a per-bar score of a token from its past only, and the alarm threshold fitted
    for it on validation data (kept on the detector, as Darts keeps a fitted threshold on its detector)."""

    threshold: float

    def score(self, tok: TokenSeries) -> np.ndarray: ...


@dataclass(frozen=True)
class ZScoreDetector:
    """Rolling z-score of one SIGNALS series."""

    signal: str
    window: int
    floor: float
    threshold: float = float("inf")

    def score(self, tok: TokenSeries) -> np.ndarray:
        return rolling_zscore(SIGNALS[self.signal][0](tok), self.window, self.floor)


#: Columns of morgia_features.
MORGIA_WIDTH = 24


def morgia_features(tok: TokenSeries) -> np.ndarray:
    """(T, MORGIA_WIDTH) La Morgia-style features of each bar from its past: for rush orders, taker buy orders, quote
    volume, buy quote volume and absolute return, the value now, its z-scores against the previous hour and day,
    and its last 5 bars' mean over the previous hour's; the buy share now and over 5 bars; the return now and
    over 5 bars. Order counts fall back to trade counts and buy volume to nothing (NaN) when the source lacks
    them."""
    buy_orders = tok.extra("buy_orders")
    if not np.isfinite(buy_orders).any():
        buy_orders = tok.features[:, BUYS]
    ret = np.r_[0.0, np.diff(np.log(tok.features[:, PRICE]))]
    series = [
        np.log1p(tok.extra("rush_orders")),
        np.log1p(buy_orders),
        scaled_log_volume(tok.features[:, VOLUME]),
        scaled_log_volume(tok.extra("buy_volume")),
        np.abs(ret),
    ]
    cols = []
    for x in series:
        s = pd.Series(x)
        cols += [
            x,
            rolling_zscore(x, 60, 0.5),
            rolling_zscore(x, 1440, 0.5),
            (s.rolling(5, min_periods=1).mean() - s.shift(5).rolling(60, min_periods=5).mean()).to_numpy(),
        ]
    share = pd.Series(_buy_share(tok))
    cols += [share.to_numpy(), share.rolling(5, min_periods=1).mean().to_numpy()]
    cols += [ret, pd.Series(ret).rolling(5, min_periods=1).sum().to_numpy()]
    return np.stack(cols, axis=1)


@dataclass(frozen=True)
class LogisticDetector:
    """Logistic regression on morgia_features, kept as numbers: the features' means and scales, the weights and
    the intercept. Scores are log-odds; an absent feature counts as its training mean."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    C: float
    threshold: float = float("inf")

    def score(self, tok: TokenSeries) -> np.ndarray:
        return self.score_rows(morgia_features(tok))

    def score_rows(self, x: np.ndarray) -> np.ndarray:
        """Scores of rows of morgia_features."""
        z = np.nan_to_num((x - np.asarray(self.mean)) / np.asarray(self.scale))
        return z @ np.asarray(self.coef) + self.intercept


#: The forests: trees, the depths tried (validation AUPRC picks one), the smallest leaf, and the value an absent
#: feature takes (below every real one, so a tree can split it off: absent is not zero).
FOREST_TREES = 100
FOREST_DEPTHS = (6, 10)
FOREST_MIN_LEAF = 20
FOREST_SAMPLES = 20_000  # bars each tree draws (bootstrap): bounds the fit at any bar length
ABSENT = -1e6


def forest_features(tok: TokenSeries, clock: bool) -> np.ndarray:
    """morgia_features, with the calendar columns (channels.calendar) when `clock`, absent values at ABSENT."""
    x = morgia_features(tok)
    if clock:
        x = np.concatenate([x, calendar(tok.timestamps)], axis=1)
    return np.where(np.isfinite(x), x, ABSENT)


@dataclass(frozen=True)
class ForestDetector:
    """A random forest kept as numbers: per tree, each node's split feature (-1 at a leaf), cut (go left when
    the feature is <= it), children, and the pump share of its training bars (classes balanced). The score is
    the mean pump share over the trees, as scikit-learn's predict_proba."""

    feature: tuple[tuple[int, ...], ...]
    cut: tuple[tuple[float, ...], ...]
    left: tuple[tuple[int, ...], ...]
    right: tuple[tuple[int, ...], ...]
    share: tuple[tuple[float, ...], ...]
    depth: int
    clock: bool = False
    threshold: float = float("inf")

    @classmethod
    def of(cls, forest: Any, depth: int, clock: bool) -> ForestDetector:
        """From a fitted RandomForestClassifier (classes 0 and 1)."""
        trees = [est.tree_ for est in forest.estimators_]
        value = [t.value[:, 0, :] / t.value[:, 0, :].sum(axis=1, keepdims=True) for t in trees]
        return cls(
            tuple(tuple(np.where(t.children_left >= 0, t.feature, -1).tolist()) for t in trees),
            tuple(tuple(map(float, t.threshold)) for t in trees),
            tuple(tuple(map(int, t.children_left)) for t in trees),
            tuple(tuple(map(int, t.children_right)) for t in trees),
            tuple(tuple(map(float, v[:, 1])) for v in value),
            depth,
            clock,
        )

    def score(self, tok: TokenSeries) -> np.ndarray:
        return self.score_rows(forest_features(tok, self.clock))

    def score_rows(self, x: np.ndarray) -> np.ndarray:
        """Scores of rows of forest_features."""
        x = x.astype(np.float32)  # scikit-learn compares float32 values with its cuts
        rows = np.arange(len(x))
        total = np.zeros(len(x))
        trees = zip(self.feature, self.cut, self.left, self.right, self.share, strict=True)
        for feature, cut, left, right, share in trees:
            f, c, lt, rt = (np.asarray(a) for a in (feature, cut, left, right))
            node = np.zeros(len(x), dtype=np.int64)
            for _ in range(self.depth):
                split = f[node] >= 0
                if not split.any():
                    break
                go_left = x[rows, np.maximum(f[node], 0)] <= c[node]
                node = np.where(split, np.where(go_left, lt[node], rt[node]), node)
            total += np.asarray(share)[node]
        return total / len(self.feature)


#: Exceedance probabilities at which a score's validation distribution is kept for the ensemble (1 to 1e-5).
TAIL_PROBS = np.logspace(0.0, -5.0, 101)


def surprise(x: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """-log10 of how often validation scores reached x (levels: the scores at TAIL_PROBS, ascending); NaN stays
    NaN. Puts scores of any scale on one scale of rarity."""
    return -np.log10(np.interp(x, np.asarray(levels), TAIL_PROBS))


@dataclass(frozen=True)
class Ensemble:
    """The model and one baseline together: the sum of their surprises, so a bar both find rare outranks a bar
    only one of them does. Each score's scale comes from the validation tokens."""

    baseline: str
    model_levels: tuple[float, ...]
    baseline_levels: tuple[float, ...]
    threshold: float = float("inf")

    @classmethod
    def fit(cls, baseline: str, model: np.ndarray, base: np.ndarray) -> Ensemble:
        """From validation scores of the model and the baseline (finite values only)."""
        q = 1.0 - TAIL_PROBS
        return cls(baseline, tuple(np.quantile(model, q)), tuple(np.quantile(base, q)))

    def score(self, model: np.ndarray, base: np.ndarray) -> np.ndarray:
        return surprise(model, self.model_levels) + surprise(base, self.baseline_levels)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model file") -> Ensemble:
        try:
            ens = cls(
                str(d["baseline"]),
                tuple(map(float, d["model_levels"])),
                tuple(map(float, d["baseline_levels"])),
                float(d.get("threshold", np.inf)),
            )
            if not (np.isfinite(ens.model_levels).all() and np.isfinite(ens.baseline_levels).all()):
                raise ValueError("levels must be finite numbers")
            if not ens.threshold >= 0:
                raise ValueError(f"threshold {ens.threshold!r} must be a surprise >= 0 (or inf)")
            return ens
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: damaged ensemble ({type(exc).__name__}: {exc})") from exc


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float | tuple) and not isinstance(value, bool)


C_GRID = (0.01, 0.1, 1.0)


def _ranged(score: np.ndarray, rng: tuple[int, int]) -> np.ndarray:
    out = np.full(score.shape, np.nan)
    out[rng[0] : rng[1]] = score[rng[0] : rng[1]]
    return out


@dataclass
class BaselineSet:
    """The tuned baselines of one model (or fold) and their alarm thresholds for the false-alarm budget."""

    detectors: dict[str, Detector] = field(default_factory=dict)

    @property
    def thresholds(self) -> dict[str, float]:
        return {name: d.threshold for name, d in self.detectors.items()}

    def scores(self, tok: TokenSeries) -> dict[str, np.ndarray]:
        """Every detector's per-bar score of one token (NaN where it cannot score)."""
        return {name: d.score(tok) for name, d in self.detectors.items()}

    def to_dict(self) -> dict[str, Any]:
        return {name: {"kind": type(d).__name__, **asdict(d)} for name, d in self.detectors.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model file") -> BaselineSet:
        out = cls()
        try:
            for name, spec in d.items():
                spec = dict(spec)
                kind, threshold = spec.pop("kind"), float(spec.pop("threshold"))
                if kind == "ZScoreDetector":
                    det: Detector = ZScoreDetector(
                        str(spec["signal"]), int(spec["window"]), float(spec["floor"]), threshold
                    )
                    if det.signal not in SIGNALS:
                        raise ValueError(f"unknown signal {det.signal!r}")
                elif kind == "LogisticDetector":
                    det = LogisticDetector(
                        tuple(map(float, spec["mean"])),
                        tuple(map(float, spec["scale"])),
                        tuple(map(float, spec["coef"])),
                        float(spec["intercept"]),
                        float(spec["C"]),
                        threshold,
                    )
                elif kind == "ForestDetector":
                    det = _forest(spec, threshold)
                else:
                    raise ValueError(f"unknown detector kind {kind!r}")
                plain = [v for v in asdict(det).values() if _numeric(v) and not isinstance(det, ForestDetector)]
                if np.isnan(threshold) or not all(np.isfinite(v).all() for v in plain):
                    raise ValueError(f"{name}: threshold {threshold!r} or a parameter is not a number")
                if isinstance(det, ZScoreDetector) and not (det.window >= 1 and det.floor > 0):
                    raise ValueError(f"{name}: window {det.window} or floor {det.floor} is not positive")
                out.detectors[str(name)] = det
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: damaged baseline detectors ({type(exc).__name__}: {exc})") from exc
        return out


def _forest(spec: Mapping[str, Any], threshold: float) -> ForestDetector:
    """A ForestDetector from its stored arrays, checked so that scoring cannot index outside a tree."""
    det = ForestDetector(
        *(tuple(tuple(map(kind, tree)) for tree in spec[name]) for name, kind in _FOREST_ARRAYS),
        int(spec["depth"]),
        bool(spec["clock"]),
        threshold,
    )
    width = MORGIA_WIDTH + (calendar(np.zeros(1)).shape[1] if det.clock else 0)
    if not det.feature or det.depth < 1:
        raise ValueError("a forest needs trees and a depth >= 1")
    for i, (f, c, lt, rt, sh) in enumerate(zip(det.feature, det.cut, det.left, det.right, det.share, strict=True)):
        n = len(f)
        if not n or any(len(a) != n for a in (c, lt, rt, sh)):
            raise ValueError(f"tree {i}: arrays of different lengths")
        f, c, lt, rt, sh = (np.asarray(a) for a in (f, c, lt, rt, sh))
        split = f >= 0
        if (f >= width).any() or ((lt < 0) != ~split).any() or ((rt < 0) != ~split).any():
            raise ValueError(f"tree {i}: a feature or child does not fit the tree")
        if (np.maximum(lt, rt) >= n).any() or not np.isfinite(c).all() or not ((sh >= 0) & (sh <= 1)).all():
            raise ValueError(f"tree {i}: a child, cut or share out of range")
    return det


_FOREST_ARRAYS = (("feature", int), ("cut", float), ("left", int), ("right", int), ("share", float))


def _items(tokens: Sequence[TokenSeries], ranges: Mapping[int, tuple[int, int]], score) -> list[TokenScores]:
    return [
        TokenScores(t.token_id, _ranged(score(t), ranges[t.token_id]), t.events, t.steps_per_day, t.source)
        for t in tokens
        if t.token_id in ranges
    ]


def tune_zscore(
    signal: str, tokens: Sequence[TokenSeries], ranges: Mapping[int, tuple[int, int]], horizon: int, budget: float
) -> ZScoreDetector | None:
    """The window and floor of one signal's z-score, and its threshold, best on the given tokens' ranges (most
    events detected within the false-alarm budget, then fewest false alarms, then highest AUPRC); None when no
    token has the signal."""
    best = None
    for window in WINDOWS:
        for floor in SIGNALS[signal][1]:
            det = ZScoreDetector(signal, window, floor)
            items = _items(tokens, ranges, det.score)
            if not any(np.isfinite(it.scores).any() for it in items):
                return None
            th = choose_threshold(items, horizon, budget)
            m = event_metrics(items, th, horizon)
            key = (np.nan_to_num(m.recall), -m.false_alarms_per_day, np.nan_to_num(m.auprc))
            if best is None or key > best[0]:
                best = (key, replace(det, threshold=th))
    assert best is not None
    return best[1]


def _rows(
    tokens: Sequence[TokenSeries], ranges: Mapping[int, tuple[int, int]], horizon: int, features
) -> tuple[np.ndarray, np.ndarray] | None:
    """Features and labels ("a pump starts within `horizon` bars or is under way") of the given ranges' bars;
    None when there are none."""
    xs, ys = [], []
    for t in tokens:
        if t.token_id in ranges:
            a, b = ranges[t.token_id]
            xs.append(features(t)[a:b])
            ys.append(pump_labels(len(t.timestamps), t.events, horizon, t.interval_ms)[a:b, ANY])
    return (np.concatenate(xs), np.concatenate(ys)) if xs else None


def fit_logistic(
    tokens: Sequence[TokenSeries],
    train: Mapping[int, tuple[int, int]],
    val: Mapping[int, tuple[int, int]],
    horizon: int,
    seed: int = 0,
) -> LogisticDetector | None:
    """Logistic regression of "a pump starts within `horizon` bars or is under way" on morgia_features over the
    training ranges (classes balanced), C by validation AUPRC; None without positives in training."""
    from sklearn.linear_model import LogisticRegression

    fit_rows, val_rows = _rows(tokens, train, horizon, morgia_features), _rows(tokens, val, horizon, morgia_features)
    if fit_rows is None or fit_rows[1].sum() == 0:
        return None
    x, y = fit_rows
    known = np.isfinite(x)
    count = np.maximum(known.sum(axis=0), 1)  # a feature the tokens lack (rush orders of candles) stays at 0
    mean = np.where(known, x, 0.0).sum(axis=0) / count
    scale = np.sqrt(np.where(known, (x - mean) ** 2, 0.0).sum(axis=0) / count)
    scale = np.where(scale > 0, scale, 1.0)
    z = np.nan_to_num((x - mean) / scale)
    candidates = []
    for C in C_GRID:
        fit = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed).fit(z, y)
        candidates.append(LogisticDetector(tuple(mean), tuple(scale), tuple(fit.coef_[0]), float(fit.intercept_[0]), C))
    return _best_on(candidates, val_rows)


def _best_on(candidates: list, val_rows: tuple[np.ndarray, np.ndarray] | None) -> Any:
    """The candidate with the highest validation AUPRC of its `score_rows` (the first when there is no
    validation or it ties)."""
    if val_rows is None:
        return candidates[0]
    aps = [np.nan_to_num(average_precision(val_rows[1], c.score_rows(val_rows[0])), nan=-1.0) for c in candidates]
    return candidates[int(np.argmax(aps))]


def fit_forest(
    tokens: Sequence[TokenSeries],
    train: Mapping[int, tuple[int, int]],
    val: Mapping[int, tuple[int, int]],
    horizon: int,
    clock: bool = False,
    seed: int = 0,
) -> ForestDetector | None:
    """La Morgia et al.'s random forest (FOREST_TREES trees of FOREST_SAMPLES bootstrap bars, classes balanced
    per tree, a leaf at least FOREST_MIN_LEAF bars) on forest_features over the training ranges, depth by
    validation AUPRC; None without positives in training."""
    from sklearn.ensemble import RandomForestClassifier

    features = partial(forest_features, clock=clock)
    fit_rows, val_rows = _rows(tokens, train, horizon, features), _rows(tokens, val, horizon, features)
    if fit_rows is None or fit_rows[1].sum() == 0:
        return None
    candidates = []
    for depth in FOREST_DEPTHS:
        forest = RandomForestClassifier(
            FOREST_TREES, max_depth=depth, min_samples_leaf=FOREST_MIN_LEAF, class_weight="balanced_subsample",
            max_samples=min(FOREST_SAMPLES, len(fit_rows[1])), random_state=seed, n_jobs=1,
        ).fit(fit_rows[0].astype(np.float32), fit_rows[1])
        candidates.append(ForestDetector.of(forest, depth, clock))
    return _best_on(candidates, val_rows)


def fit_baselines(
    tokens: Sequence[TokenSeries],
    train: Mapping[int, tuple[int, int]],
    val: Mapping[int, tuple[int, int]],
    horizon: int,
    budget: float,
) -> BaselineSet:
    """Tune every baseline for one split: the z-scores on training and validation ranges together, the logistic
    regression and the forests fitted on training ranges, their thresholds chosen on validation ranges. Tokens
    whose events are unknown are left out, and synthetic ones when real tokens with events are there
    (pumps.judged_kind)."""
    tokens = judged_kind([t for t in tokens if t.events_known])
    both = {**train, **val}
    out = BaselineSet()
    for signal in SIGNALS:
        tuned = tune_zscore(signal, tokens, both, horizon, budget)
        if tuned is not None:
            out.detectors[signal] = tuned
    fitted = {
        "logistic": fit_logistic(tokens, train, val, horizon),
        "forest": fit_forest(tokens, train, val, horizon),
        "forest_clock": fit_forest(tokens, train, val, horizon, clock=True),
    }
    for name, det in fitted.items():
        if det is not None:
            th = choose_threshold(_items(tokens, val, det.score), horizon, budget)
            out.detectors[name] = replace(det, threshold=th)
    return out
