"""The formats traders already have, read from the real files in ../shared/data/freqtrade (freqtrade's own
Feather, JSON and Parquet candles and trades, a headerless Kraken trade CSV) and from Binance's headerless
layouts, each checked against an independent computation with pandas."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pumpcast.cli import main
from pumpcast.ingest import candles_to_bars, ingest_files, trades_to_bars
from pumpcast.schema import EXTRA_FEATURES, FEATURES
from pumpcast.store import TokenDataManager

FREQTRADE = Path(__file__).resolve().parents[2] / "shared" / "data" / "freqtrade"


@pytest.fixture(scope="module")
def ft() -> Path:
    if not FREQTRADE.is_dir():
        pytest.skip(f"shared freqtrade data not found at {FREQTRADE}")
    return FREQTRADE


def _expected_candles(frame: pd.DataFrame, rule: str) -> pd.DataFrame:
    """Bars from candles by pandas resampling: close carried forward, volume summed."""
    t = pd.to_datetime(frame["date"], utc=True)
    x = frame.assign(date=t).set_index("date").sort_index()
    out = pd.DataFrame({"price": x["close"].resample(rule).last().ffill(), "volume": x["volume"].resample(rule).sum()})
    return out


@pytest.mark.parametrize("name,rule", [("UNITTEST_BTC-1m.feather", "1min"), ("XRP_ETH-5m.feather", "5min")])
def test_freqtrade_feather_candles(ft, name, rule):
    frame = pd.read_feather(ft / name)
    [bars] = candles_to_bars(ft / name, interval=rule)
    expected = _expected_candles(frame, rule)
    np.testing.assert_array_equal(bars.timestamps, expected.index.as_unit("ms").asi8)
    np.testing.assert_allclose(bars.features[:, 0], expected["price"])
    np.testing.assert_allclose(bars.features[:, 1], expected["volume"])
    assert np.isnan(bars.features[:, 2:]).all()  # no liquidity, trade counts or market cap in candles: absent
    assert bars.symbol == name.split("-")[0].replace("_", "/") and bars.volume_unit == "base"
    assert bars.quote_asset == bars.symbol.split("/")[1]


def test_freqtrade_json_candles_equal_the_feather_ones(ft):
    [a] = candles_to_bars(ft / "UNITTEST_BTC-1m.feather")
    [b] = candles_to_bars(ft / "UNITTEST_BTC-1m.json")  # ccxt fetch_ohlcv layout
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    np.testing.assert_allclose(a.features, b.features, equal_nan=True)


def _expected_trades(frame: pd.DataFrame) -> pd.DataFrame:
    """Bars from trades by pandas: last price carried forward, quote volume summed, trades counted per side."""
    x = frame.assign(t=pd.to_datetime(frame["timestamp"], unit="ms", utc=True)).set_index("t").sort_index(kind="stable")
    g = x.resample("1min")
    return pd.DataFrame(
        {
            "price": g["price"].last().ffill(),
            "volume": g["cost"].sum(),
            "buys": g["side"].apply(lambda s: (s == "buy").sum()),
            "sells": g["side"].apply(lambda s: (s == "sell").sum()),
        }
    )


@pytest.mark.parametrize("name", ["XRP_ETH-trades.feather", "XRP_ETH-trades.parquet", "XRP_ETH-trades.json.gz"])
def test_freqtrade_trades_in_every_format(ft, name):
    expected = _expected_trades(pd.read_feather(ft / "XRP_ETH-trades.feather"))
    [bars] = trades_to_bars(ft / name)
    np.testing.assert_array_equal(bars.timestamps, expected.index.as_unit("ms").asi8)
    np.testing.assert_allclose(bars.features[:, [0, 1, 3, 4]], expected[["price", "volume", "buys", "sells"]])
    assert bars.symbol == "XRP/ETH" and bars.volume_unit == "quote" and bars.quote_asset == "ETH"


def test_headerless_kraken_trades(ft):
    raw = pd.read_csv(ft / "kraken-BCHEUR-trades.csv", header=None, names=["t", "price", "amount"])
    x = raw.assign(t=pd.to_datetime(raw["t"], unit="s", utc=True), quote=raw["price"] * raw["amount"]).set_index("t")
    g = x.resample("1min")
    [bars] = trades_to_bars(ft / "kraken-BCHEUR-trades.csv", symbol="BCH/EUR")
    np.testing.assert_allclose(bars.features[:, 0], g["price"].last().ffill())
    np.testing.assert_allclose(bars.features[:, 1], g["quote"].sum())
    assert np.isnan(bars.features[:, 3:5]).all()  # no taker side in the file: buys and sells are absent
    assert bars.quote_asset == "EUR"


def _binance_klines(frame: pd.DataFrame) -> pd.DataFrame:
    """The freqtrade candles in Binance's headerless kline layout (with a quote volume column)."""
    ms = pd.to_datetime(frame["date"], utc=True).astype("int64") // 10**6
    quote = frame["volume"] * frame["close"]
    return pd.DataFrame(
        [
            ms,
            frame["open"],
            frame["high"],
            frame["low"],
            frame["close"],
            frame["volume"],
            ms + 59_999,
            quote,
            np.arange(len(frame)),
            frame["volume"] / 2,
            quote / 2,
            np.zeros(len(frame)),
        ]
    ).T


def test_binance_headerless_klines_use_the_quote_volume(ft, tmp_path):
    frame = pd.read_feather(ft / "XRP_ETH-1m.feather")
    _binance_klines(frame).to_csv(tmp_path / "XRPETH-1m-2019-10.csv", header=False, index=False)
    [bars] = candles_to_bars(tmp_path / "XRPETH-1m-2019-10.csv")
    x = frame.assign(q=frame["volume"] * frame["close"], date=pd.to_datetime(frame["date"], utc=True))
    expected = x.set_index("date")["q"].resample("1min").sum()
    np.testing.assert_allclose(bars.features[:, 1], expected)
    assert bars.volume_unit == "quote" and bars.symbol == "XRPETH"


def test_binance_headerless_aggtrades(ft, tmp_path):
    trades = pd.read_feather(ft / "XRP_ETH-trades.feather")
    agg = pd.DataFrame(
        {
            "a": np.arange(len(trades)),
            "p": trades["price"],
            "q": trades["amount"],
            "f": 0,
            "l": 0,
            "T": trades["timestamp"],
            "m": trades["side"] == "sell",  # the buyer was the maker when the taker sold
            "M": True,
        }
    )
    agg.to_csv(tmp_path / "XRPETH-aggTrades-2019-10-11.csv", header=False, index=False)
    [bars] = trades_to_bars(tmp_path / "XRPETH-aggTrades-2019-10-11.csv")
    expected = _expected_trades(trades.assign(cost=trades["price"] * trades["amount"]))
    np.testing.assert_allclose(bars.features[:, [0, 1, 3, 4]], expected[["price", "volume", "buys", "sells"]])


def test_ccxt_fetch_trades_records(ft, tmp_path):
    trades = pd.read_feather(ft / "XRP_ETH-trades.feather")
    records = trades.assign(symbol="XRP/ETH").drop(columns=["type"]).to_dict("records")
    (tmp_path / "trades.json").write_text(json.dumps(records))
    [a] = trades_to_bars(tmp_path / "trades.json")
    [b] = trades_to_bars(ft / "XRP_ETH-trades.feather")
    np.testing.assert_allclose(a.features, b.features, equal_nan=True)
    assert a.symbol == "XRP/ETH"


def test_a_dataframe_ingests_like_a_file(ft):
    frame = pd.read_feather(ft / "XRP_ETH-trades.feather")
    [a] = trades_to_bars(frame, symbol="XRP/ETH")
    [b] = trades_to_bars(ft / "XRP_ETH-trades.feather")
    np.testing.assert_allclose(a.features, b.features, equal_nan=True)
    frame_back = b.to_pandas()
    # trades with taker sides also give the extras, after the six features (what the channels read)
    assert list(frame_back.columns) == ["time", *FEATURES, *EXTRA_FEATURES] and len(frame_back) == len(b.timestamps)


def test_store_units_mixed_intervals_and_folders(ft, tmp_path, capsys):
    d = tmp_path / "s"
    ingest_files("candles", [ft / "XRP_ETH-1m.feather"], d)
    meta = TokenDataManager(d).metadata()["tokens"]["0"]
    assert (meta["volume_unit"], meta["quote_asset"]) == ("base", "ETH")
    # a 5-minute file refuses to become 1-minute bars, and 5-minute bars refuse to join a 1-minute store
    assert main(["ingest", "candles", str(ft / "XRP_ETH-5m.feather"), "--data-dir", str(d)]) == 2
    assert "candles cannot be split" in capsys.readouterr().err
    five = ["ingest", "candles", str(ft / "XRP_ETH-5m.feather"), "--interval", "5min", "--data-dir", str(d)]
    assert main(five) == 2
    assert "--allow-mixed-intervals" in capsys.readouterr().err
    assert main([*five, "--allow-mixed-intervals"]) == 0
    # a freqtrade data folder: its candle files (the trades files are left to `ingest trades`)
    folder = tmp_path / "ft"
    folder.mkdir()
    for name in ("UNITTEST_BTC-1m.feather", "XRP_ETH-1m.feather", "XRP_ETH-trades.feather"):
        (folder / name).write_bytes((ft / name).read_bytes())
    assert main(["ingest", "candles", str(folder), "--data-dir", str(tmp_path / "f")]) == 0
    symbols = {e["symbol"] for e in TokenDataManager(tmp_path / "f").metadata()["tokens"].values()}
    assert symbols == {"UNITTEST/BTC", "XRP/ETH"}
