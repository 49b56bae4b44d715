import csv
import gzip
import math
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from pumpcast.ingest import candles_to_bars, ingest_files, read_events, trades_to_bars
from pumpcast.schema import EXTRA_FEATURES, FEATURES
from pumpcast.store import TokenDataManager


def independent_bars(path):
    """Minute bars by plain Python over the CSV rows: the reference the ingestion is checked against."""
    with gzip.open(path, "rt") as fh:
        rows = list(csv.DictReader(fh))
    rows.sort(key=lambda r: int(r["timestamp"]))
    bars = {}
    for r in rows:
        minute = int(r["timestamp"]) // 60000
        b = bars.setdefault(minute, {"price": None, "volume": 0.0, "buys": 0, "sells": 0})
        b["price"] = float(r["price"])
        b["volume"] += float(r["btc_volume"])
        b["buys" if r["side"] == "buy" else "sells"] += 1
    first, last = min(bars), max(bars)
    out, price = [], None
    for m in range(first, last + 1):
        b = bars.get(m)
        if b:
            price = b["price"]
        out.append((m * 60000, price, b["volume"] if b else 0.0, b["buys"] if b else 0, b["sells"] if b else 0))
    return out


@pytest.mark.parametrize(
    "name", ["MTH_2021-07-27_17.00.csv.gz", "NEBL_2020-11-02_18.00.csv.gz", "NAS_2022-02-01_15.00.csv.gz"]
)
def test_trade_bars_match_independent_computation(binance_dir, name):
    [bars] = trades_to_bars(binance_dir / name)
    ref = independent_bars(binance_dir / name)
    assert len(ref) == bars.features.shape[0]
    ts, price, vol, buys, sells = (np.array(c, dtype=float) for c in zip(*ref, strict=True))
    np.testing.assert_array_equal(bars.timestamps, ts.astype(np.int64))
    np.testing.assert_allclose(bars.features[:, FEATURES.index("price")], price, rtol=1e-12)
    np.testing.assert_allclose(bars.features[:, FEATURES.index("volume")], vol, rtol=1e-9, atol=1e-15)
    np.testing.assert_array_equal(bars.features[:, FEATURES.index("buys")], buys)
    np.testing.assert_array_equal(bars.features[:, FEATURES.index("sells")], sells)
    # A CEX pair has no pool and no supply: absent, never zero.
    assert np.isnan(bars.features[:, FEATURES.index("liquidity")]).all()
    assert np.isnan(bars.features[:, FEATURES.index("market_cap")]).all()
    assert bars.symbol == name.split("_")[0] + "/BTC"


def independent_extras(path):
    """Per minute, by plain Python: taker buy/sell quote volume, taker orders per side (consecutive trades of one
    side in one millisecond), rush orders (buy orders of 2+ trades)."""
    with gzip.open(path, "rt") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["timestamp"]))
    bars, orders = {}, []
    for r in rows:
        ts, side = int(r["timestamp"]), r["side"]
        b = bars.setdefault(ts // 60000, [0.0, 0.0, 0, 0, 0])
        b[0 if side == "buy" else 1] += float(r["btc_volume"])
        if orders and orders[-1][:2] == [ts, side]:
            orders[-1][2] += 1
        else:
            orders.append([ts, side, 1])
    for ts, side, fills in orders:
        b = bars[ts // 60000]
        b[2 if side == "buy" else 3] += 1
        b[4] += side == "buy" and fills >= 2
    first, last = min(bars), max(bars)
    return np.array([bars.get(m, [0.0, 0.0, 0, 0, 0]) for m in range(first, last + 1)], dtype=float)


@pytest.mark.parametrize("name", ["NAS_2022-02-01_15.00.csv.gz", "MTH_2021-07-27_17.00.csv.gz"])
def test_extra_trade_features_match_independent_computation(binance_dir, name, tmp_path):
    ref = independent_extras(binance_dir / name)
    [bars] = trades_to_bars(binance_dir / name)
    assert bars.extras.shape == (len(ref), len(EXTRA_FEATURES))
    np.testing.assert_allclose(bars.extras[:, :2], ref[:, :2], rtol=1e-9, atol=1e-15)
    np.testing.assert_array_equal(bars.extras[:, 2:], ref[:, 2:])
    assert ref[:, 4].sum() > 0  # the file has rush orders
    # stored with their own mask and read back whole; a bar file without sides has no extras
    [t] = ingest_files("trades", [binance_dir / name], tmp_path / "s")
    np.testing.assert_array_equal(TokenDataManager(tmp_path / "s").read(t).extras, bars.extras)
    frame = pd.read_csv(binance_dir / name).drop(columns=["side"])
    [no_side] = trades_to_bars(frame)
    assert no_side.extras is None and np.isnan(no_side.extra("rush_orders")).all()
    frame["timestamp"] = frame["timestamp"] // 1000 * 1000  # whole seconds: orders cannot be told apart
    frame["side"] = "buy"
    [coarse] = trades_to_bars(frame)
    assert np.isfinite(coarse.extra("buy_volume")).all() and np.isnan(coarse.extra("rush_orders")).all()


def test_ingest_all_real_files_with_events(binance_dir, tmp_path):
    files = sorted(binance_dir.glob("*.csv.gz"))
    ids = ingest_files("trades", files, tmp_path, events=binance_dir / "events.csv")
    assert len(ids) == 19 == len(set(ids))
    store = TokenDataManager(tmp_path)
    meta = store.metadata()
    events = read_events(binance_dir / "events.csv")
    for t in ids:
        tok = store.read(t)
        info = meta["tokens"][str(t)]
        assert info["available"] == {
            "price": True,
            "volume": True,
            "liquidity": False,
            "buys": True,
            "sells": True,
            "market_cap": False,
        }
        assert not tok.mask[:, FEATURES.index("liquidity")].any()
        [event] = tok.events  # each file holds exactly one announced pump
        announced = events[events.symbol == tok.symbol.split("/")[0]].time_ms
        assert int(tok.timestamps[event.start]) in set(announced)
        assert 5000 < tok.features.shape[0] < 7000


def test_reingest_replaces_and_new_token_appends(binance_dir, tmp_path):
    a, b = binance_dir / "MTH_2021-07-27_17.00.csv.gz", binance_dir / "NEBL_2020-11-02_18.00.csv.gz"
    assert ingest_files("trades", [a], tmp_path) == [0]
    assert ingest_files("trades", [b], tmp_path) == [1]
    assert ingest_files("trades", [a], tmp_path, events=binance_dir / "events.csv") == [0]
    store = TokenDataManager(tmp_path)
    assert store.token_ids() == [0, 1]
    assert len(store.read(0).events) == 1 and store.read(1).events == []


def test_candles_parquet_and_iso_timestamps(tmp_path):
    times = pd.date_range("2024-01-01", periods=6, freq="1min", tz="UTC")
    df = pd.DataFrame(
        {
            "time": times.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "open": 1.0,
            "high": 2.0,
            "low": 0.5,
            "close": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5],
            "volume": [1, 2, 3, 4, 5, 6.0],
            "symbol": "ABC/USDT",
        }
    )
    df = df.drop(index=3)  # a missing candle: close carried forward, zero volume
    path = tmp_path / "c.parquet"
    df.to_parquet(path)
    [bars] = candles_to_bars(path)
    np.testing.assert_allclose(bars.features[:, 0], [1.0, 1.1, 1.2, 1.2, 1.4, 1.5])
    np.testing.assert_allclose(bars.features[:, 1], [1, 2, 3, 0, 5, 6])
    assert np.isnan(bars.features[:, 3]).all()  # no trade counts in plain candles: absent
    assert bars.key == "ABC/USDT@2024-01-01T00:00Z"
    # 5-minute bars aggregate the 1-minute candles
    [five] = candles_to_bars(path, interval="5min")
    np.testing.assert_allclose(five.features[:, 1], [11, 6])


def test_trades_with_pool_and_supply_fill_liquidity_and_market_cap(tmp_path):
    t0 = int(datetime(2024, 5, 1, tzinfo=timezone.utc).timestamp() * 1000)
    df = pd.DataFrame(
        {
            "timestamp": [t0, t0 + 1000, t0 + 130_000],
            "side": ["buy", "sell", "buy"],
            "price": [2.0, 3.0, 4.0],
            "amount": [1.0, 2.0, 1.0],
            "liquidity": [100.0, 110.0, 90.0],
            "supply": [1000.0, 1000.0, 1000.0],
            "address": "0xabc",
        }
    )
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    [bars] = trades_to_bars(path)
    assert bars.key == "0xabc"
    f = bars.features
    np.testing.assert_allclose(f[:, 0], [3.0, 3.0, 4.0])
    np.testing.assert_allclose(f[:, 1], [8.0, 0.0, 4.0])  # quote volume = price x amount
    np.testing.assert_allclose(f[:, 2], [110.0, 110.0, 90.0])
    np.testing.assert_allclose(f[:, 5], [3000.0, 3000.0, 4000.0])
    assert math.isclose(f[0, 3], 1) and math.isclose(f[0, 4], 1)
