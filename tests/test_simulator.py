import numpy as np
import pytest

from pumpcast import simulator
from pumpcast.cli import main as pumpcast
from pumpcast.ingest import attach_events, read_events, trades_to_bars
from pumpcast.realism import STATS, calm_mask, describe, hill_index, inside_band, pump_shape, series_stats
from pumpcast.schema import FEATURES, Event
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


def test_dex_features_come_from_the_pool(block):
    liquidity_steps = {"liquidity_add", "liquidity_withdrawal", "rug_pull"}
    for tok in block[:50]:
        x, y = tok.reserves[:, 0], tok.reserves[:, 1]
        f = tok.features
        assert (x > 0).all() and (y > 0).all()
        np.testing.assert_allclose(f[:, FEATURES.index("liquidity")], 2 * y, rtol=1e-12)
        supply = f[:, FEATURES.index("market_cap")] / f[:, FEATURES.index("price")]
        np.testing.assert_allclose(supply, supply[0], rtol=1e-9)
        assert (f[:, FEATURES.index("volume")] >= 0).all()
        assert (f[:, FEATURES.index("buys")] == np.round(f[:, FEATURES.index("buys")])).all()
        # swaps keep k = x * y exactly; only liquidity providers (and the rug pull) change it
        k = x * y
        moved = np.flatnonzero(~np.isclose(k[1:], k[:-1], rtol=1e-9, atol=0)) + 1
        allowed = {e.start for e in tok.events if e.type in liquidity_steps}
        assert set(moved.tolist()) <= allowed


def test_the_price_is_the_last_trade_and_bounces(block):
    buy_gap, sell_gap, acf = [], [], []
    for tok in block[:100]:
        price, mid = tok.features[:, 0], tok.reserves[:, 1] / tok.reserves[:, 0]
        side = tok.last_side
        gap = np.log(price / mid)
        buy_gap.append(np.median(gap[side > 0]))
        sell_gap.append(np.median(gap[side < 0]))
        r = np.diff(np.log(price))
        if np.count_nonzero(r) > 50:
            acf.append(np.corrcoef(r[:-1], r[1:])[0, 1])
    # a buy pays above the pool price, a sell gets below it: consecutive returns bounce
    assert np.median(buy_gap) > 0 > np.median(sell_gap)
    assert np.median(acf) < -0.05


@pytest.mark.parametrize("venue", ["dex", "cex"])
def test_no_trade_no_price_change(venue):
    for tok in simulator.generate(20, 600, seed=4, venue=venue):
        f = tok.features
        quiet = np.flatnonzero(tok.last_side[1:] == 0) + 1
        assert quiet.size > 0
        np.testing.assert_array_equal(f[quiet, 0], f[quiet - 1, 0])
        assert (f[quiet, FEATURES.index("buys")] + f[quiet, FEATURES.index("sells")] == 0).all()
        assert (f[quiet, FEATURES.index("volume")] == 0).all() or any(e.type == "rug_pull" for e in tok.events)
        traded = tok.last_side != 0
        assert (f[traded, FEATURES.index("buys")] + f[traded, FEATURES.index("sells")] > 0).all()


def test_cex_pair_has_no_pool_and_trades_on_a_grid():
    for tok in simulator.generate(30, 800, seed=2, venue="cex"):
        f = tok.features
        assert np.isnan(f[:, FEATURES.index("liquidity")]).all()
        assert np.isnan(f[:, FEATURES.index("market_cap")]).all()
        assert np.isfinite(f[:, [0, 1, 3, 4]]).all()
        ticks = f[:, 0] / tok.tick
        np.testing.assert_allclose(ticks, np.round(ticks), atol=1e-6)
        # the last trade is at the ask (buy) or the bid (sell) around the book's mid price
        mid = tok.reserves[:, 1] / tok.reserves[:, 0]
        side = tok.last_side
        assert (f[side > 0, 0] >= mid[side > 0]).all() and (f[side < 0, 0] <= mid[side < 0]).all()


def test_venues_are_deterministic_and_differ():
    for venue in ("dex", "cex"):
        a = list(simulator.generate(2, 300, seed=1, venue=venue))
        b = list(simulator.generate(2, 300, seed=1, venue=venue))
        np.testing.assert_array_equal(a[1].features, b[1].features)
        np.testing.assert_array_equal(a[1].last_side, b[1].last_side)
    dex, cex = (list(simulator.generate(1, 300, seed=1, venue=v))[0] for v in ("dex", "cex"))
    assert dex.events == cex.events  # same market story, another venue
    assert not np.array_equal(dex.features[:, 0], cex.features[:, 0])
    with pytest.raises(ValueError, match="venue"):
        next(simulator.generate(1, 300, venue="otc"))


def test_cex_tokens_are_stored_as_absent_not_zero(tmp_path, capsys):
    flags = ["--data-dir", str(tmp_path), "--timesteps", "400", "--seed", "11"]
    assert pumpcast(["generate", *flags, "--num-tokens", "3", "--venue", "cex"]) == 0
    assert "generated 3 synthetic CEX tokens" in capsys.readouterr().out
    simulator.generate_to_store(tmp_path, num_tokens=2, timesteps=400, seed=11)  # DEX tokens beside them
    store = TokenDataManager(tmp_path)
    assert len(store) == 5
    [tok] = [store.read(i) for i in store.lengths() if store.read(i).key == "synthetic:cex:11:0"]
    assert tok.key == "synthetic:cex:11:0" and tok.source == "synthetic:cex:seed=11"
    assert not tok.available["liquidity"] and not tok.available["market_cap"] and tok.available["price"]
    sim = next(simulator.generate(1, 400, seed=11, venue="cex"))
    np.testing.assert_array_equal(tok.features, sim.features)


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
    assert med["acf_abs_r_1"] > 0.05 and med["acf_abs_r_10"] > 0.01
    assert med["acf_r_1"] < -0.05
    assert 0.2 < med["corr_abs_r_log_volume"] < 0.8


def test_realism_statistics_measure_what_they_say():
    rng = np.random.default_rng(0)
    assert 2.7 < hill_index(rng.pareto(3.0, 200_000) + 1) < 3.3
    ar = np.zeros(50_000)
    for t in range(1, ar.size):
        ar[t] = 0.5 * ar[t - 1] + rng.standard_normal()
    steps = ar.size
    flat = np.zeros((steps, len(FEATURES)))
    flat[:, 0] = np.exp(np.cumsum(ar) * 1e-3)  # returns are the AR(1) path
    flat[:, 1] = 1.0
    s = series_stats(flat, [])
    assert abs(s["acf_r_1"] - 0.5) < 0.02
    # a pump's window is not calm: its returns leave the calm statistics
    assert calm_mask(1000, [Event("pump_and_dump", 500, 501, 560, 0.2)]).sum() == 1000 - (560 + 120 - 380)


def test_synthetic_medians_fall_inside_the_real_bands(binance_dir):
    """The realism benchmark's claim at a smaller size: most statistics inside the real 10-90% band."""
    events = read_events(binance_dir / "events.csv")
    bars = [attach_events(trades_to_bars(f)[0], events) for f in sorted(binance_dir.glob("*.csv.gz"))]
    real, n_files, n_pumps = describe((b.features, b.events) for b in bars)
    assert (n_files, n_pumps) == (19, 19)
    for venue, need in (("cex", 21), ("dex", 19)):
        tokens = simulator.generate(256, 5800, seed=2, venue=venue)
        inside = inside_band(describe((t.features, t.events) for t in tokens)[0], real)
        assert len(inside) == len(STATS) == 24
        assert sum(inside.values()) >= need, (venue, [k for k, v in inside.items() if not v])
        assert inside["calm_log_volume_acf_1"], venue  # calm volume as noisy minute to minute as real volume


def test_synthetic_pumps_carry_rush_orders_and_start_on_the_hour():
    """Synthetic tokens have the taker extras ingest builds from trades, consistent with the six features, and
    their pumps start on round hours with a burst of rush orders (what real pump groups' crowds do)."""
    from pumpcast.schema import BUYS, EXTRA_FEATURES, VOLUME

    col = {n: i for i, n in enumerate(EXTRA_FEATURES)}
    bursts, calm = [], []
    for tok in simulator.generate(16, 3000, seed=4, venue="cex"):
        ex, series = tok.extras, simulator.to_series(tok, seed=4)
        assert ex.shape == (3000, len(EXTRA_FEATURES)) and np.isfinite(ex).all()
        np.testing.assert_allclose(ex[:, col["buy_volume"]] + ex[:, col["sell_volume"]], tok.features[:, VOLUME])
        assert (ex[:, col["rush_orders"]] <= ex[:, col["buy_orders"]]).all()
        assert (ex[:, col["buy_orders"]] <= tok.features[:, BUYS]).all()
        np.testing.assert_array_equal(series.extras, ex)
        rush = ex[:, col["rush_orders"]]
        for e in tok.events:
            if e.type == "pump_and_dump":
                assert e.start % simulator.ANNOUNCE_EVERY == 0 and series.timestamps[e.start] % 3_600_000 == 0
                bursts.append(rush[e.start : e.start + 3].sum())
                calm.append(rush[e.start - 63 : e.start - 3].mean() * 3)
    assert len(bursts) >= 10
    assert np.median(np.array(bursts) / np.maximum(calm, 1.0)) > 10
