"""La Morgia et al.'s random forest baseline: kept as arrays, it scores as scikit-learn does and loads safely."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from pumpcast.detectors import ABSENT, MORGIA_WIDTH, BaselineSet, ForestDetector, forest_features
from pumpcast.schema import ModelFileError
from pumpcast.simulator import generate, to_series


def _forest(clock: bool) -> tuple[ForestDetector, RandomForestClassifier, np.ndarray]:
    tok = to_series(next(generate(1, 3000, seed=3)), seed=3)
    x = forest_features(tok, clock)
    y = (np.random.default_rng(0).random(len(x)) < 0.1).astype(int)
    forest = RandomForestClassifier(20, max_depth=6, class_weight="balanced_subsample", random_state=0)
    forest.fit(x.astype(np.float32), y)
    return ForestDetector.of(forest, 6, clock), forest, x


@pytest.mark.parametrize("clock", [False, True])
def test_forest_scores_as_scikit_learn_does(clock):
    det, forest, x = _forest(clock)
    assert x.shape[1] == MORGIA_WIDTH + (4 if clock else 0)
    assert (x == ABSENT).any()  # bars without trades have no buy share: absent, not zero
    np.testing.assert_allclose(det.score_rows(x), forest.predict_proba(x.astype(np.float32))[:, 1], atol=1e-12)


def test_forest_round_trips_as_plain_numbers_and_refuses_a_damaged_tree():
    det, _, x = _forest(True)
    stored = BaselineSet({"forest_clock": det}).to_dict()
    back = BaselineSet.from_dict(stored).detectors["forest_clock"]
    assert back == det
    np.testing.assert_array_equal(back.score_rows(x), det.score_rows(x))
    bad = {"forest_clock": {**stored["forest_clock"], "left": [[99, *det.left[0][1:]], *det.left[1:]]}}
    with pytest.raises(ModelFileError, match="damaged baseline detectors.*tree 0"):
        BaselineSet.from_dict(bad)
