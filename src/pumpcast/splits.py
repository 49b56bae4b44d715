"""Train / validation / test splits that never let one target step serve two splits.

A split is a set of target ranges: for each split name, token id -> [start, end) of the steps whose values may
be predicted as targets there. Inputs may reach back before a range (history is known at forecast time);
targets never leave it. split_info.json records everything needed to rebuild and audit the split.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pumpcast.config import SPLIT_STRATEGIES, DataConfig
from pumpcast.events import is_real
from pumpcast.schema import ConfigError, DataError
from pumpcast.store import TokenDataManager

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Target ranges per split; see the module docstring."""

    strategy: str
    test_ratio: float
    val_ratio: float
    train_token_ratio: float
    seed: int
    ranges: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)

    def tokens(self, name: str) -> list[int]:
        """Token ids that have a non-empty target range in this split."""
        return sorted(t for t, (a, b) in self.ranges.get(name, {}).items() if b > a)

    def to_json(self) -> dict:
        d = asdict(self)
        d["ranges"] = {s: {str(t): list(r) for t, r in rs.items()} for s, rs in self.ranges.items()}
        d["token_ids"] = {s: self.tokens(s) for s in SPLITS}
        return d

    @classmethod
    def from_json(cls, d: dict) -> Split:
        ranges = {s: {int(t): (int(r[0]), int(r[1])) for t, r in rs.items()} for s, rs in d["ranges"].items()}
        return cls(d["strategy"], d["test_ratio"], d["val_ratio"], d["train_token_ratio"], d["seed"], ranges)


def make_split(
    lengths: dict[int, int],
    strategy: str = "time",
    test_ratio: float = 0.4,
    val_ratio: float = 0.2,
    train_token_ratio: float = 0.6,
    seed: int = 0,
    with_events: set[int] | None = None,
) -> Split:
    """Split tokens (id -> number of steps).

    time:  every token, chronologically: train first, then validation, then test (default 40/20/40).
    token: whole tokens: train_token_ratio of them train, the rest validation and test in val:test proportion.
    mixed: the last test_ratio of every token's steps is test; before that, train tokens train and the others
           validate, so train and validation differ in tokens and test differs in time.
    none:  no test part (the test set is elsewhere): val_ratio of the tokens (at least one when there are two)
           validate, the ones in `with_events` first, since calibration and alarm thresholds need events;
           the others train.
    """
    if strategy not in SPLIT_STRATEGIES:
        raise ConfigError(f"split_strategy {strategy!r}: choose one of {', '.join(SPLIT_STRATEGIES)}", "split_strategy")
    if not (0 <= test_ratio < 1 and 0 <= val_ratio < 1 and test_ratio + val_ratio < 1):
        raise ConfigError("test_ratio and val_ratio must be >= 0 and sum to less than 1", "test_ratio", "val_ratio")
    if not 0 < train_token_ratio <= 1:
        raise ConfigError("train_token_ratio must be in (0, 1]", "train_token_ratio")
    ids = sorted(lengths)
    split = Split(strategy, test_ratio, val_ratio, train_token_ratio, seed, {s: {} for s in SPLITS})
    if strategy == "time":
        for t in ids:
            n = lengths[t]
            a = int(round(n * (1 - test_ratio - val_ratio)))
            b = int(round(n * (1 - test_ratio)))
            split.ranges["train"][t], split.ranges["val"][t], split.ranges["test"][t] = (0, a), (a, b), (b, n)
        return split
    order = [int(t) for t in np.random.default_rng(seed).permutation(ids)]
    if strategy == "none":
        n_val = min(len(ids) - 1, max(1, round(len(ids) * val_ratio))) if len(ids) > 1 else 0
        val_ids = set(sorted(order, key=lambda t: t not in (with_events or set()))[:n_val])
        for t in ids:
            split.ranges["val" if t in val_ids else "train"][int(t)] = (0, lengths[t])
        return split
    n_train = max(1, int(round(len(ids) * train_token_ratio)))
    if len(ids) >= 3:
        n_train = min(n_train, len(ids) - 2 if strategy == "token" else len(ids) - 1)
    train_ids, rest = sorted(order[:n_train]), sorted(order[n_train:])
    if strategy == "token":
        n_val = int(round(len(rest) * val_ratio / (val_ratio + test_ratio))) if rest else 0
        if len(rest) >= 2:
            n_val = min(max(n_val, 1), len(rest) - 1)
        val_ids = set(rest[:n_val])
        for t in ids:
            n = lengths[t]
            split.ranges["train" if t in train_ids else "val" if t in val_ids else "test"][int(t)] = (0, n)
        return split
    for t in ids:  # mixed
        n = lengths[t]
        b = int(round(n * (1 - test_ratio)))
        split.ranges["train" if t in train_ids else "val"][int(t)] = (0, b)
        split.ranges["test"][int(t)] = (b, n)
    return split


def load_split_file(path: str | Path, lengths: dict[int, int]) -> Split:
    """A split_info.json written earlier (or by hand), checked against the store's tokens."""
    try:
        split = Split.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a readable split_info.json ({type(exc).__name__}: {exc})") from exc
    for name, ranges in split.ranges.items():
        for t, (a, b) in ranges.items():
            if t not in lengths or not 0 <= a <= b <= lengths[t]:
                raise DataError(f"{path}: {name} range {a}-{b} of token {t} does not fit the store")
    return split


def tokens_with_events(store: TokenDataManager) -> set[int]:
    """Ids of the tokens validation takes first: those that carry events (calibration needs events), and of
    them only the real ones when the store has any (thresholds are chosen on the kind of data they judge)."""
    entries = store.entries()
    with_events = {t for t, e in entries.items() if e.events}
    real = {t for t in with_events if is_real(entries[t].source)}
    return real or with_events


def resolve_split(store: TokenDataManager, data: DataConfig, reuse: str = "no") -> Split:
    """The split a command works on, decided in one place:

    - data.split_file, when given, always;
    - reuse="same-strategy": the store's recorded split when it was made with data.split_strategy (test mode
      on a store that was trained on), else a new one;
    - reuse="required": the store's recorded split, or a one-line error (evaluation must not invent one);
    - reuse="no": a new split from data's strategy, ratios and seed.
    """
    if data.split_file:
        return load_split_file(data.split_file, store.lengths())
    stored = store.load_split() if reuse != "no" else None
    if reuse == "required" and stored is None:
        raise DataError(f"{store.split_path}: no split; train on this store first or give split_file")
    if stored is not None and (reuse == "required" or stored.get("strategy") == data.split_strategy):
        return load_split_file(store.split_path, store.lengths())
    return make_split(
        store.lengths(),
        data.split_strategy,
        data.test_ratio,
        data.val_ratio,
        data.train_token_ratio,
        data.seed,
        tokens_with_events(store),
    )
