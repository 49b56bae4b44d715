import numpy as np
import pytest

from pumpcast import simulator
from pumpcast.realism import pump_shape, series_stats
from pumpcast.schema import FEATURES
from pumpcast.store import TokenDataManager


@pytest.fixture(scope="module")
def block():
    return list(simulator.generate(simulator.BLOCK, 800, seed=3))


def test_swaps_preserve_k_and_keep_reserves_positive():
    rng = np.random.default_rng(0)
    x, y = 10 ** rng.uniform(0, 12, 1000), 10 ** rng.uniform(2, 8, 1000)
    k = x * y
    x1, y1 = simulator.swap_buy(x, y, y * rng.uniform(0, 5, 1000))
    np.testing.assert_allclose(x1 * y1, k, rtol=1e-12)
    assert (y1 >= y).all() and (x1 <= x).all()
    x2, y2 = simulator.swap_sell(x1, y1, x1 * rng.uniform(0, 5, 1000))
    np.testing.assert_allclose(x2 * y2, k, rtol=1e-12)
    assert (x2 > 0).all() and (y2 > 0).all() and (x2 >= x1).all()


def test_features_come_from_the_pool(block):
    for tok in block[:50]:
        x, y = tok.reserves[:, 0], tok.reserves[:, 1]
        f = tok.features
        assert (x > 0).all() and (y > 0).all()
        np.testing.assert_allclose(f[:, FEATURES.index("price")], y / x, rtol=1e-12)
        np.testing.assert_allclose(f[:, FEATURES.index("liquidity")], 2 * y, rtol=1e-12)
        supply = f[:, FEATURES.index("market_cap")] / f[:, FEATURES.index("price")]
        np.testing.assert_allclose(supply, supply[0], rtol=1e-9)
        assert (f[:, FEATURES.index("volume")] >= 0).all()
        assert (f[:, FEATURES.index("buys")] == np.round(f[:, FEATURES.index("buys")])).all()


def test_scales_span_decades(block):
    prices = np.array([t.features[0, 0] for t in block])
    liq = np.array([t.features[0, 2] for t in block])
    assert prices.min() < 1e-8 and prices.max() > 10
    assert liq.max() / liq.min() > 1e3


def test_token_does_not_depend_on_how_many_were_generated():
    a = list(simulator.generate(10, 300, seed=5))[3]
    b = list(simulator.generate(1, 300, seed=5, first_token=3))[0]
    np.testing.assert_array_equal(a.features, b.features)
    assert a.events == b.events
    # across a block boundary too
    c = list(simulator.generate(3, 300, seed=5, first_token=simulator.BLOCK - 1))
    d = list(simulator.generate(1, 300, seed=5, first_token=simulator.BLOCK + 1))[0]
    assert c[-1].token_id == d.token_id == simulator.BLOCK + 1
    np.testing.assert_array_equal(c[-1].features, d.features)


def test_same_seed_same_data_other_seed_other_data():
    a = list(simulator.generate(2, 300, seed=1))
    b = list(simulator.generate(2, 300, seed=1))
    c = list(simulator.generate(2, 300, seed=2))
    np.testing.assert_array_equal(a[1].features, b[1].features)
    assert not np.array_equal(a[1].features, c[1].features)


def test_events_are_stored_with_their_token(tmp_path):
    ids = simulator.generate_to_store(tmp_path, num_tokens=4, timesteps=2000, seed=11)
    store = TokenDataManager(tmp_path)
    assert ids == [0, 1, 2, 3]
    sim = list(simulator.generate(4, 2000, seed=11))
    for t in ids:
        tok = store.read(t)
        assert tok.events == sim[t].events
        np.testing.assert_array_equal(tok.features, sim[t].features)


def test_pumps_look_like_pumps(block):
    shapes, types = [], set()
    for tok in block:
        for e in tok.events:
            types.add(e.type)
            if e.type == "pump_and_dump":
                assert e.start <= e.peak < e.end
                s = pump_shape(tok.features[:, 0], e.start)
                if s:
                    shapes.append(s)
    assert {"pump_and_dump", "news", "trading_burst", "liquidity_add", "liquidity_withdrawal", "rug_pull"} <= types
    gains = np.array([s["peak_gain"] for s in shapes])
    retrace = np.array([s["retrace_60"] for s in shapes])
    assert len(shapes) > 50
    assert 0.05 < np.median(gains) < 1.0  # real events: median 0.17, 10-90% 0.03-0.45
    assert 0.5 < np.nanmedian(retrace) < 1.6  # most of the gain is given back within an hour
    assert np.median([s["minutes_to_peak"] for s in shapes]) <= 2


def test_market_statistics_look_real(block):
    stats = [series_stats(t.features, t.events) for t in block]
    med = {k: np.nanmedian([s[k] for s in stats]) for k in stats[0]}
    assert med["excess_kurtosis"] > 3
    assert med["acf_abs_r_1_10"] > 0.02
    assert abs(med["acf_r_1"]) < 0.1
    assert med["corr_abs_r_volume"] > 0.2
    assert 0.45 < med["calm_buy_share"] < 0.55
