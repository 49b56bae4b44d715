"""Pump labels and event metrics on small cases computed by hand."""

import numpy as np
import pytest

from pumpcast.detectors import rolling_zscore
from pumpcast.events import TokenScores, alarm_onsets, pump_labels
from pumpcast.metrics import average_precision, choose_threshold, event_metrics, false_alarms_per_day
from pumpcast.schema import Event

PUMP = "pump_and_dump"


def test_labels_soon_now_any():
    lab = pump_labels(20, [Event(PUMP, 10, 12, 15, 0.5), Event("news", 2, 2, 4, 1.0)], horizon=3)
    assert np.flatnonzero(lab[:, 0]).tolist() == [7, 8, 9]  # the start lies in (t, t + 3]
    assert np.flatnonzero(lab[:, 1]).tolist() == [10, 11, 12]  # start .. peak
    assert np.flatnonzero(lab[:, 2]).tolist() == [7, 8, 9, 10, 11, 12]
    real = pump_labels(20, [Event(PUMP, 10, -1, -1, float("nan"))], horizon=2)  # peak unknown: 5 steps
    assert np.flatnonzero(real[:, 1]).tolist() == [10, 11, 12, 13, 14]
    assert np.flatnonzero(real[:, 0]).tolist() == [8, 9]


def test_alarm_runs_count_once():
    assert alarm_onsets(np.array([0, 1, 1, 0, 1, 1, 1, 0, 0, 1], bool)).tolist() == [1, 4, 9]


def _item(scores, events, steps_per_day=1440.0):  # 1-minute bars
    return TokenScores(0, np.asarray(scores, dtype=float), events, steps_per_day)


def test_event_metrics_hand_computed():
    scores = np.zeros(200)
    scores[:20] = np.nan  # no full window yet: not evaluated
    scores[47] = 1.0  # 3 steps before the start: an early warning
    scores[48:50] = 1.0  # same run: still one alarm
    scores[120:125] = 1.0  # far from any event: one false alarm
    scores[150] = 1.0  # a second false alarm
    events = [Event(PUMP, 50, 52, 80, 0.3), Event(PUMP, 170, 171, 190, 0.2)]  # the second is missed
    m = event_metrics([_item(scores, events)], threshold=0.5, horizon=5)
    assert m.events == 2
    assert m.recall == 0.5 and m.early_warning_rate == 0.5
    assert m.median_delay_steps == -3
    assert m.days == pytest.approx(180 / 1440)
    assert m.false_alarms_per_day == pytest.approx(2 / (180 / 1440))
    # an alarm inside the event's span (after the detection window) is neither a detection nor a false alarm
    late = np.zeros(200)
    late[60] = 1.0
    m = event_metrics([_item(late, events)], threshold=0.5, horizon=5)
    assert m.recall == 0 and m.false_alarms_per_day == 0
    # detection two steps after the start counts, three does not
    for step, hit in ((52, 1.0), (53, 0.0)):
        s = np.zeros(200)
        s[step] = 1.0
        assert event_metrics([_item(s, events[:1])], 0.5, 5).recall == hit


def test_average_precision_hand_computed():
    assert average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx(
        (1 / 1 + 2 / 3) / 2
    )
    assert average_precision(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # a tie


def test_threshold_is_the_lowest_within_the_false_alarm_budget():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 0.5, 1000)
    scores[[100, 300, 500, 700]] = [0.9, 0.8, 0.7, 0.6]  # four isolated high-score alarms, no events
    item = _item(scores, [], steps_per_day=500.0)  # 2 days
    th = choose_threshold([item], horizon=5, max_false_alarms_per_day=1.0)
    assert event_metrics([item], th, 5).false_alarms_per_day <= 1.0
    assert 0.6 < th <= 0.8  # two alarms in two days are allowed, three are not
    assert choose_threshold([item], 5, max_false_alarms_per_day=0.0) > 0.9


def test_false_alarm_counts_of_many_thresholds_match_event_metrics():
    """choose_threshold counts false alarms at 401 thresholds in one pass; each count equals event_metrics'."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        items = []
        for _ in range(3):
            n = int(rng.integers(5, 200))
            scores = rng.normal(size=n)
            scores[rng.random(n) < 0.2] = np.nan
            if rng.random() < 0.5:
                scores = np.round(scores, 1)  # ties
            starts = rng.integers(-5, n + 5, rng.integers(0, 3))
            items.append(_item(scores, [Event(PUMP, int(s), -1, -1, np.nan) for s in starts], steps_per_day=50.0))
        thresholds = np.r_[np.linspace(-3, 3, 37), 0.1, 0.2]
        slow = [event_metrics(items, th, 4, auprc=False).false_alarms_per_day for th in thresholds]
        np.testing.assert_allclose(false_alarms_per_day(items, 4, thresholds), slow)


def test_rolling_zscore_uses_the_past_only():
    x = np.ones(100)
    x[50] = 10.0
    z = rolling_zscore(x, window=20, min_std=0.5)
    assert np.isnan(z[0]) and z[50] == pytest.approx((10 - 1) / 0.5)  # a burst after a flat past: floored std
    y = x.copy()
    y[60:] = 1000.0  # the future does not change earlier scores
    np.testing.assert_array_equal(rolling_zscore(y, 20)[:60], z[:60])


def test_event_spans_after_a_start_are_times_not_bars():
    """At 15-second bars an event is judged as at 1-minute bars: detected up to 2 minutes after its start
    (8 bars, not 2), a real pump under way for 5 minutes (20 bars)."""
    real = [Event(PUMP, 100, -1, -1, float("nan"))]
    per_day = 86_400_000 / 15_000
    for late, detected in ((8, 1.0), (9, 0.0)):
        scores = np.zeros(400)
        scores[100 + late] = 1.0
        m = event_metrics([_item(scores, real, steps_per_day=per_day)], 0.5, horizon=5)
        assert m.recall == detected and m.false_alarms_per_day == (0.0 if detected else 1 / (400 / per_day))
    now = pump_labels(400, real, horizon=5, interval_ms=15_000)[:, 1]
    assert np.flatnonzero(now).tolist() == list(range(100, 120))
    assert pump_labels(400, real, horizon=5)[:, 1].sum() == 5  # 1-minute bars: as before


def test_a_threshold_spends_the_false_alarm_budget_it_is_given():
    """Ten days of 1-minute bars of noise with two pumps: the chosen threshold raises between 0.7 and 1 false
    alarm a day (a quantile grid used to jump over the thresholds that spend the budget)."""
    rng = np.random.default_rng(3)
    events = [Event("pump_and_dump", 3000, 3005, 3010, 1.0), Event("pump_and_dump", 9000, 9005, 9010, 1.0)]
    items = [TokenScores(t, rng.normal(size=14_400), events, 1440.0) for t in range(3)]
    for budget in (0.5, 1.0, 3.0):
        th = choose_threshold(items, 10, budget)
        spent = false_alarms_per_day(items, 10, np.array([th]))[0]
        assert 0.7 * budget <= spent <= budget
