"""Real market data in: trade lists and OHLCV candles become fixed-interval bars of the six features.

Absent features (a CEX pair has no pool, hence no liquidity; no supply, hence no market cap) stay NaN and are
marked absent in the store's availability mask: never zeros.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pumpcast.config import VOLUME_UNITS, DataConfig, IngestConfig
from pumpcast.schema import (
    BUYS,
    EVENT_TYPES,
    EXTRA_FEATURES,
    FEATURES,
    LIQUIDITY,
    MARKET_CAP,
    PRICE,
    SELLS,
    VOLUME,
    ConfigError,
    DataError,
    Event,
    PumpcastError,
    TokenSeries,
)
from pumpcast.store import TokenDataManager
from pumpcast.timeutil import iso, parse_interval

log = logging.getLogger(__name__)

#: Column names tried, in order, when no explicit mapping is given.
TRADE_COLUMNS: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "time", "ts", "datetime", "date"),
    "side": ("side", "taker_side"),
    "price": ("price",),
    "amount": ("amount", "qty", "quantity", "base_volume", "size"),
    "quote": ("quote_volume", "btc_volume", "quote_qty", "usd_volume", "value", "cost"),
    "symbol": ("symbol", "pair", "market"),
    "address": ("address", "token_address", "mint"),
    "liquidity": ("liquidity", "pool_liquidity", "reserve_usd"),
    "supply": ("supply", "total_supply", "circulating_supply"),
}
CANDLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "time", "ts", "datetime", "date", "open_time"),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume",),
    "quote_volume": ("quote_volume", "quote_asset_volume"),
    "symbol": ("symbol", "pair", "market"),
    "address": ("address", "token_address", "mint"),
    "buys": ("buys", "buy_count"),
    "sells": ("sells", "sell_count"),
    "liquidity": ("liquidity",),
    "supply": ("supply", "total_supply"),
}


#: Headerless layouts, told apart by their number of columns (and the kind of data asked for).
HEADERLESS: dict[tuple[str, int], tuple[str, ...]] = {
    # Binance public data: klines, trades, aggTrades; Kraken's and similar exchanges' trade dumps
    ("candles", 12): (
        "timestamp",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "close_time",
        "quote_volume",
        "trades",
        "taker_buy_base",
        "taker_buy_quote",
        "ignore",
    ),
    ("candles", 6): ("timestamp", "open", "high", "low", "close", "volume"),
    ("trades", 3): ("timestamp", "price", "amount"),
    ("trades", 7): ("id", "price", "amount", "quote_volume", "timestamp", "is_buyer_maker", "is_best_match"),
    ("trades", 8): (
        "agg_id",
        "price",
        "amount",
        "first_id",
        "last_id",
        "timestamp",
        "is_buyer_maker",
        "is_best_match",
    ),
}
#: JSON lists of lists: ccxt fetch_ohlcv (6 values) and freqtrade's trades files (7 values).
JSON_ROWS: dict[int, tuple[str, ...]] = {
    6: ("timestamp", "open", "high", "low", "close", "volume"),
    7: ("timestamp", "id", "type", "side", "price", "amount", "cost"),
}
DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".feather", ".json", ".json.gz")


def read_table(path: str | Path, kind: str | None = None) -> pd.DataFrame:
    """A file as a frame, its format told from its name and content: CSV (with a header, or one of the
    headerless layouts of `kind`: Binance klines, trades and aggTrades, Kraken trades), gzip CSV, Parquet,
    Feather (freqtrade), JSON (ccxt fetch_ohlcv / fetch_trades dumps, freqtrade trades). One-line errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith(".feather"):
            return pd.read_feather(path)
        if name.endswith((".json", ".json.gz")):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt") as fh:
                return _json_frame(json.load(fh), path)
        frame = pd.read_csv(path)
    except PumpcastError:
        raise
    except Exception as exc:  # pandas and pyarrow raise many types for unreadable input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {first})") from exc
    if kind and len(frame.columns) and all(_is_number(c) for c in frame.columns):
        layout = HEADERLESS.get((kind, len(frame.columns)))
        if layout is None:
            known = ", ".join(f"{n} columns" for k, n in HEADERLESS if k == kind)
            raise DataError(
                f"{path}: has no header and {len(frame.columns)} columns; headerless {kind} files pumpcast knows have "
                f"{known}; add a header row naming the columns"
            )
        frame = pd.read_csv(path, header=None, names=list(layout))
        if "is_buyer_maker" in frame:  # the maker bought, so the taker sold
            maker_bought = frame["is_buyer_maker"].astype(str).str.lower().isin(("true", "1"))
            frame["side"] = np.where(maker_bought, "sell", "buy")
    return frame


def _is_number(text: object) -> bool:
    """Whether a column name is really a data value (a number, or a boolean that pandas may have suffixed
    with .1, .2 to keep names unique): then the file has no header."""
    word = str(text).lower()
    if word in ("true", "false"):
        return True
    try:
        float(word)
    except ValueError:
        base, _, suffix = word.rpartition(".")
        return bool(base) and suffix.isdigit() and _is_number(base)
    return True


def _json_frame(data: object, path: Path) -> pd.DataFrame:
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data[:100]):
        return pd.DataFrame.from_records(data)  # ccxt fetch_trades / fetch_ohlcv as records
    if isinstance(data, list) and data and isinstance(data[0], list) and len(data[0]) in JSON_ROWS:
        return pd.DataFrame(data, columns=list(JSON_ROWS[len(data[0])]))
    raise DataError(
        f"{path}: JSON that is neither a list of records nor lists of 6 (OHLCV) or 7 (freqtrade trades) values"
    )


def symbol_from_name(path: Path) -> str:
    """A pair's name from a data file's name: freqtrade's XRP_ETH-1m.feather -> XRP/ETH; else the name up to
    its first '-' or '.' (Binance's XRPETH-1m-2019-10.csv -> XRPETH)."""
    stem = path.name.split(".")[0].split("-")[0]
    parts = stem.split("_")
    return "/".join(parts) if len(parts) == 2 and all(p.isalnum() for p in parts) else stem


def quote_asset(symbol: str) -> str:
    """ATM/BTC -> BTC; '' when the symbol does not say."""
    return symbol.split("/")[1].split(":")[0] if "/" in symbol else ""


def expand_inputs(files: Sequence[str | Path], kind: str) -> list[Path]:
    """Files as given, with each folder replaced by its data files of that kind (a freqtrade data directory:
    trades files are the ones named *-trades.*)."""
    out: list[Path] = []
    for f in map(Path, files):
        if not f.is_dir():
            out.append(f)
            continue
        found = sorted(
            p
            for p in f.iterdir()
            if p.name.lower().endswith(DATA_SUFFIXES) and ("-trades" in p.name) == (kind == "trades")
        )
        if not found:
            raise DataError(f"{f}: no {kind} data files ({', '.join(DATA_SUFFIXES)}) in this folder")
        out.extend(found)
    return out


def _resolve(
    df: pd.DataFrame, path: Path, names: dict[str, tuple[str, ...]], mapping: dict[str, str], required: Sequence[str]
) -> dict[str, str]:
    """Map each logical field to a column of df: an explicit mapping first, then the usual names."""
    lower = {c.lower(): c for c in df.columns}
    found: dict[str, str] = {}
    for logical, candidates in names.items():
        explicit = mapping.get(logical)
        if explicit:
            if explicit not in df.columns:
                raise DataError(
                    f"{path}: column {explicit!r} (given for {logical}) not found; columns are {list(df.columns)}"
                )
            found[logical] = explicit
            continue
        for c in candidates:
            if c in lower:
                found[logical] = lower[c]
                break
    missing = [r for r in required if r not in found]
    if missing:
        flags = ", ".join(f"--{m}-col" for m in missing)
        raise DataError(f"{path}: missing column(s) {missing}; columns are {list(df.columns)}; name them with {flags}")
    return found


#: Unix time units told apart by magnitude (digits before the decimal point of a time after 2001).
UNITS = {10: ("seconds", 1e3), 13: ("milliseconds", 1.0), 16: ("microseconds", 1e-3), 19: ("nanoseconds", 1e-6)}
#: Times outside these bounds are refused as a wrong unit or a typo, before anything is allocated.
EARLIEST_MS, LATEST_MS = 946_684_800_000, 4_102_444_800_000  # 2000-01-01, 2100-01-01
#: A file whose bars would exceed this many is refused before its arrays are allocated.
MAX_BARS = 20_000_000


def _timestamps_ms(series: pd.Series, path: Path, column: str) -> np.ndarray:
    """Unix ms from Unix time in s, ms, us or ns (the unit told apart per file by magnitude; a file that mixes
    units is refused) or from ISO-8601 text; times before 2000 or after 2099 are refused."""
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype="float64")
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise DataError(f"{path}: column {column!r} row {row + 2} has a missing or non-finite timestamp")
        digits = np.floor(np.log10(np.maximum(np.abs(values), 1.0))).astype(int) + 1
        bands = np.unique(digits)
        if len(bands) > 1:
            names = sorted({UNITS[d][0] if d in UNITS else f"{d}-digit numbers" for d in bands})
            first = sorted(int(np.flatnonzero(digits == d)[0]) + 2 for d in bands)
            raise DataError(
                f"{path}: column {column!r} mixes time units ({', '.join(names)}; rows "
                f"{', '.join(str(r) for r in first[:3])}); write every time in one unit"
            )
        if bands[0] not in UNITS:
            raise DataError(
                f"{path}: column {column!r} row 2 is {series.iloc[0]!r}: not Unix time in seconds, milliseconds, "
                "microseconds or nanoseconds after 2000; fix the column or name the time column"
            )
        ms = values * UNITS[bands[0]][1]
    else:
        try:
            parsed = pd.to_datetime(series, utc=True, format="ISO8601")
        except (ValueError, TypeError, OverflowError) as exc:
            first = str(exc).splitlines()[0]
            raise DataError(f"{path}: column {column!r} is neither Unix time nor ISO-8601 time ({first})") from exc
        if parsed.isna().any():
            row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise DataError(f"{path}: column {column!r} row {row + 2} has a missing timestamp")
        ms = parsed.astype("datetime64[ms, UTC]").astype("int64").to_numpy().astype("float64")
    bad = (ms < EARLIEST_MS) | (ms >= LATEST_MS)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column {column!r} row {row + 2} is {series.iloc[row]!r}, outside 2000-2099; fix the time or "
            "its unit"
        )
    return ms.astype(np.int64)


def trade_times(df: pd.DataFrame, name: str = "<DataFrame>", columns: dict[str, str] | None = None) -> np.ndarray:
    """Unix ms of each row of a trade list, read as trades_to_bars reads them (`live` splits rows into bars)."""
    path = Path(name)
    cols = _resolve(df, path, TRADE_COLUMNS, columns or {}, required=("timestamp", "price"))
    return _timestamps_ms(df[cols["timestamp"]], path, cols["timestamp"])


def _positive(series: pd.Series, path: Path, column: str, what: str) -> np.ndarray:
    """Numeric, finite, > 0 values, or a one-line error naming the first bad row."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column {column!r} row {row + 2} has {what} {_shown(series.iloc[row])}; {what}s must be positive "
            "numbers"
        )
    return values


def _shown(value: object) -> str:
    """A cell as a message shows it: text quoted, numbers plain."""
    return repr(value) if isinstance(value, str) else str(value)


def _nonnegative(series: pd.Series, path: Path, column: str) -> np.ndarray:
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column {column!r} row {row + 2} has {_shown(series.iloc[row])}; expected a number >= 0"
        )
    return values


def _in_time_order(rows: pd.DataFrame, cols: dict[str, str], path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows and their Unix ms timestamps in time order; says so when the file was not."""
    ts = _timestamps_ms(rows[cols["timestamp"]], path, cols["timestamp"])
    if ts.size > 1 and (np.diff(ts) < 0).any():
        log.warning("%s: rows were not in time order; sorted them by timestamp", path)
        order = np.argsort(ts, kind="stable")
        return rows.iloc[order], ts[order]
    return rows, ts


def _fill_pool_features(
    feats: np.ndarray, rows: pd.DataFrame, cols: dict[str, str], idx: np.ndarray, path: Path
) -> None:
    """Liquidity (last value per bar) and market cap (price x last supply) where the file has them; else they
    stay NaN: absent."""
    n = feats.shape[0]
    if "liquidity" in cols:
        liq = _nonnegative(rows[cols["liquidity"]], path, cols["liquidity"])
        feats[:, LIQUIDITY] = pd.Series(_last_per_bar(idx, liq, n)).ffill().to_numpy()
    if "supply" in cols:
        supply = _positive(rows[cols["supply"]], path, cols["supply"], "supply")
        feats[:, MARKET_CAP] = pd.Series(_last_per_bar(idx, supply, n)).ffill().to_numpy() * feats[:, PRICE]


def _token_key(address: str | None, symbol: str, first_ms: int) -> str:
    """Identity of a token: its address, else its pair and the start of its period.

    A pair seen in two separate periods (e.g. two pump events months apart) is two series, not one with a
    months-long gap; re-ingesting the same period replaces it.
    """
    if address:
        return address
    start = pd.Timestamp(first_ms, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%MZ")
    return f"{symbol}@{start}"


def _group_by_symbol(df: pd.DataFrame, cols: dict[str, str], path: Path, symbol: str | None):
    """Yield (symbol, address, rows) per pair in the file; a file with no symbol column is one pair."""
    if symbol is not None or "symbol" not in cols:
        yield (symbol or symbol_from_name(path)), _first(df, cols, "address"), df
        return
    for sym, rows in df.groupby(cols["symbol"], sort=True):
        yield str(sym), _first(rows, cols, "address"), rows


def _first(df: pd.DataFrame, cols: dict[str, str], logical: str) -> str | None:
    if logical not in cols or df.empty:
        return None
    value = df[cols[logical]].iloc[0]
    return None if pd.isna(value) else str(value)


def _bar_index(ts: np.ndarray, interval_ms: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Bar number of each row (0 = first bar) and the bars' start times; absurd spans are refused first."""
    bar = ts // interval_ms
    first, last = int(bar.min()), int(bar.max())
    if last - first + 1 > MAX_BARS:
        raise DataError(
            f"{path}: its times span {last - first + 1:,} bars of {interval_ms} ms (from {iso(int(ts.min()))} to "
            f"{iso(int(ts.max()))}), more than {MAX_BARS:,}; split the file or choose a longer interval"
        )
    return bar - first, (np.arange(first, last + 1, dtype=np.int64) * interval_ms)


def _finite(values: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Values computed from a file's columns must stay finite (a price of 1e308 times an amount does not)."""
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(f"{path}: {what} overflows at row {int(np.flatnonzero(bad)[0]) + 2}; check its values")
    return values


def _last_per_bar(idx: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Value of the last row in each bar (rows in time order), NaN for bars without rows."""
    out = np.full(n, np.nan)
    out[idx] = values  # later rows overwrite earlier ones: numpy assigns in order
    return out


def _source(source: str | Path | pd.DataFrame, kind: str) -> tuple[pd.DataFrame, Path]:
    """A file (read in whatever format it is) or a DataFrame given directly, and the name errors use."""
    if isinstance(source, pd.DataFrame):
        return source, Path("<DataFrame>")
    return read_table(source, kind), Path(source)


def trades_to_bars(
    source: str | Path | pd.DataFrame,
    interval: str = DataConfig.interval,
    columns: dict[str, str] | None = None,
    symbol: str | None = None,
    key: str | None = None,
) -> list[TokenSeries]:
    """Aggregate a trade list (a file in any supported format, or a DataFrame) into bars: price = last trade
    (carried forward over empty bars), volume = quote volume, buys/sells = trade counts per taker side (absent
    when the trades have no side); liquidity and market cap only where the file has them."""
    interval_ms = parse_interval(interval)
    df, path = _source(source, "trades")
    cols = _resolve(df, path, TRADE_COLUMNS, columns or {}, required=("timestamp", "price"))
    if "amount" not in cols and "quote" not in cols:
        raise DataError(
            f"{path}: needs a trade size: an amount column or a quote volume column (name them with columns "
            "amount / quote; on the command line --amount-col / --quote-col)"
        )
    if df.empty:
        raise DataError(f"{path}: has no rows")
    out = []
    groups = list(_group_by_symbol(df, cols, path, symbol))
    for sym, address, rows in groups:
        rows, ts = _in_time_order(rows, cols, path)
        price = _positive(rows[cols["price"]], path, cols["price"], "price")
        if "quote" in cols:
            quote = _nonnegative(rows[cols["quote"]], path, cols["quote"])
        else:
            with np.errstate(over="ignore"):
                quote = _finite(
                    price * _nonnegative(rows[cols["amount"]], path, cols["amount"]), path, "price x amount"
                )
        idx, bar_ts = _bar_index(ts, interval_ms, path)
        n = bar_ts.size
        feats = np.full((n, len(FEATURES)), np.nan)
        feats[:, PRICE] = pd.Series(_last_per_bar(idx, price, n)).ffill().to_numpy()
        feats[:, VOLUME] = np.bincount(idx, weights=quote, minlength=n)
        if not np.isfinite(feats[:, VOLUME]).all():
            raise DataError(f"{path}: the volume of a bar overflows; check the file's prices and amounts")
        if "side" in cols:
            side = rows[cols["side"]].astype(str).str.lower().to_numpy()
            is_buy, is_sell = side == "buy", side == "sell"
            if not (is_buy | is_sell).all():
                bad = int(np.flatnonzero(~(is_buy | is_sell))[0])
                raise DataError(
                    f"{path}: column {cols['side']!r} row {bad + 2} is {side[bad]!r}; expected 'buy' or 'sell'"
                )
            feats[:, BUYS] = np.bincount(idx, weights=is_buy.astype(float), minlength=n)
            feats[:, SELLS] = np.bincount(idx, weights=is_sell.astype(float), minlength=n)
        extras = _taker_extras(idx, ts, is_buy, quote, n) if "side" in cols else None
        _fill_pool_features(feats, rows, cols, idx, path)
        token_key = key if (key and len(groups) == 1) else _token_key(address, sym, int(bar_ts[0]))
        out.append(
            TokenSeries(
                token_key,
                sym,
                f"trades:{path.name}",
                interval_ms,
                bar_ts,
                feats,
                quote_asset=quote_asset(sym),
                extras=extras,
            )
        )
    return out


def _taker_extras(idx: np.ndarray, ts: np.ndarray, is_buy: np.ndarray, quote: np.ndarray, n: int) -> np.ndarray:
    """The EXTRA_FEATURES of each bar from trades in time order with taker sides: buy and sell quote volume,
    taker orders per side (a run of same-side trades in one millisecond is one order) and rush orders (buy
    orders of two or more trades). Order counts stay NaN when the times have whole seconds only: trades of one
    second cannot be told apart into orders."""
    out = np.zeros((n, len(EXTRA_FEATURES)))
    out[:, 0] = np.bincount(idx, weights=np.where(is_buy, quote, 0.0), minlength=n)
    out[:, 1] = np.bincount(idx, weights=np.where(is_buy, 0.0, quote), minlength=n)
    new_order = np.r_[True, (ts[1:] != ts[:-1]) | (is_buy[1:] != is_buy[:-1])]
    starts = np.flatnonzero(new_order)
    fills = np.diff(np.r_[starts, ts.size])
    buy, at = is_buy[starts], idx[starts]
    out[:, 2] = np.bincount(at, weights=buy.astype(float), minlength=n)
    out[:, 3] = np.bincount(at, weights=(~buy).astype(float), minlength=n)
    out[:, 4] = np.bincount(at, weights=(buy & (fills >= 2)).astype(float), minlength=n)
    if ts.size and not (ts % 1000).any():
        out[:, 2:] = np.nan
    return out


def candles_to_bars(
    source: str | Path | pd.DataFrame,
    interval: str = DataConfig.interval,
    columns: dict[str, str] | None = None,
    symbol: str | None = None,
    key: str | None = None,
    volume_unit: str = IngestConfig.volume_unit,
) -> list[TokenSeries]:
    """Turn OHLCV candles (a file in any supported format, or a DataFrame) into bars: price = close; volume =
    the quote volume when the candles have it (Binance klines), else their volume, stored in volume_unit
    ("base" for freqtrade, ccxt and Binance candles); missing candles carry the close forward with zero
    volume. Finer candles are aggregated; coarser ones are refused; identical duplicates are dropped."""
    if volume_unit not in VOLUME_UNITS:
        raise ConfigError(f"volume_unit {volume_unit!r}: choose base or quote", "volume_unit")
    interval_ms = parse_interval(interval)
    df, path = _source(source, "candles")
    cols = _resolve(df, path, CANDLE_COLUMNS, columns or {}, required=("timestamp", "close"))
    if "volume" not in cols and "quote_volume" not in cols:
        raise DataError(f"{path}: needs a volume column; columns are {list(df.columns)}; name it with --volume-col")
    unit, vol_col = ("quote", cols["quote_volume"]) if "quote_volume" in cols else (volume_unit, cols["volume"])
    if df.empty:
        raise DataError(f"{path}: has no rows")
    out = []
    groups = list(_group_by_symbol(df, cols, path, symbol))
    for sym, address, rows in groups:
        rows, ts = _in_time_order(rows, cols, path)
        dup = np.zeros(ts.size, dtype=bool)
        dup[1:] = ts[1:] == ts[:-1]
        if dup.any():
            same = rows.iloc[np.flatnonzero(dup)].to_numpy() == rows.iloc[np.flatnonzero(dup) - 1].to_numpy()
            if not same.all():
                t = pd.Timestamp(int(ts[np.flatnonzero(dup)[0]]), unit="ms", tz="UTC")
                raise DataError(f"{path}: two different candles share the timestamp {t}; remove one and ingest again")
            log.warning("%s: dropped %d duplicated candle(s)", path, int(dup.sum()))
            rows, ts = rows.iloc[~dup], ts[~dup]
        step = int(np.median(np.diff(ts))) if ts.size > 2 else interval_ms
        if step > interval_ms:
            raise DataError(
                f"{path}: its candles are {step // 1000} s apart, longer than the {interval_ms // 1000} s bars asked "
                f"for; ingest them with --interval {step // 1000}s (candles cannot be split)"
            )
        close = _positive(rows[cols["close"]], path, cols["close"], "price")
        volume = _nonnegative(rows[vol_col], path, vol_col)
        idx, bar_ts = _bar_index(ts, interval_ms, path)
        n = bar_ts.size
        feats = np.full((n, len(FEATURES)), np.nan)
        feats[:, PRICE] = pd.Series(_last_per_bar(idx, close, n)).ffill().to_numpy()
        feats[:, VOLUME] = np.bincount(idx, weights=volume, minlength=n)
        for logical, col in (("buys", BUYS), ("sells", SELLS)):
            if logical in cols:
                feats[:, col] = np.bincount(
                    idx, weights=_nonnegative(rows[cols[logical]], path, cols[logical]), minlength=n
                )
        _fill_pool_features(feats, rows, cols, idx, path)
        token_key = key if (key and len(groups) == 1) else _token_key(address, sym, int(bar_ts[0]))
        out.append(
            TokenSeries(
                token_key,
                sym,
                f"candles:{path.name}",
                interval_ms,
                bar_ts,
                feats,
                volume_unit=unit,
                quote_asset=quote_asset(sym),
            )
        )
    return out


def read_events(path: str | Path) -> pd.DataFrame:
    """Known event times: a CSV with a symbol (or key) column, a time column, and optionally type and end time.

    Returns columns symbol, time_ms, type, end_ms (end_ms = -1 where unknown).
    """
    path = Path(path)
    df = read_table(path)
    lower = {c.lower(): c for c in df.columns}
    sym_col = next((lower[c] for c in ("symbol", "key", "pair", "address") if c in lower), None)
    time_col = next(
        (lower[c] for c in ("pump_time_utc", "time", "timestamp", "start", "start_time") if c in lower), None
    )
    if sym_col is None or time_col is None:
        raise DataError(
            f"{path}: an events file needs a symbol (or key) column and a time column; columns are {list(df.columns)}"
        )
    out = pd.DataFrame({"symbol": df[sym_col].astype(str), "time_ms": _timestamps_ms(df[time_col], path, time_col)})
    out["type"] = df[lower["type"]].astype(str).str.strip() if "type" in lower else "pump_and_dump"
    unknown = ~out["type"].isin(EVENT_TYPES)
    if unknown.any():  # an event of an unknown type would be stored and then counted by nothing
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataError(
            f"{path}: column {lower['type']!r} row {row + 2} is {out['type'].iloc[row]!r}, not an event type pumpcast "
            f"knows ({', '.join(EVENT_TYPES)}); write pump_and_dump for pumps"
        )
    end_col = next((lower[c] for c in ("end", "end_time") if c in lower), None)
    out["end_ms"] = _timestamps_ms(df[end_col], path, end_col) if end_col else -1
    return out


def attach_events(bars: TokenSeries, events: pd.DataFrame) -> TokenSeries:
    """Add the events of this token (matched by key, pair or base symbol, inside its time range) as Events.

    Real events carry only their announced start (and end if given); peak is -1 (unknown), magnitude NaN.
    """
    base = bars.symbol.split("/")[0]
    names = {bars.key, bars.symbol, base}
    first, last = int(bars.timestamps[0]), int(bars.timestamps[-1]) + bars.interval_ms
    for row in events.itertuples(index=False):
        if row.symbol in names and first <= row.time_ms < last:
            start = int((row.time_ms - first) // bars.interval_ms)
            end = int((row.end_ms - first) // bars.interval_ms) if row.end_ms >= 0 else -1
            bars.events.append(Event(str(row.type), start, -1, end, float("nan")))
    return bars


def ingest_files(
    kind: str,
    files: Sequence[str | Path],
    data_dir: str | Path,
    interval: str = DataConfig.interval,
    columns: dict[str, str] | None = None,
    symbol: str | None = None,
    key: str | None = None,
    events: str | Path | None = None,
    volume_unit: str = IngestConfig.volume_unit,
    allow_mixed_intervals: bool = IngestConfig.allow_mixed_intervals,
) -> list[int]:
    """Read every file first (so one bad file leaves the store untouched), then store all tokens in one
    transaction. Folders (freqtrade data directories) stand for their data files of this kind."""

    if kind not in ("trades", "candles"):
        raise DataError(f"ingest {kind!r}: choose trades or candles")
    files = expand_inputs(files, kind)
    extra = {"volume_unit": volume_unit} if kind == "candles" else {}
    if key and len(files) > 1:
        raise ConfigError("key names one token: give it with a single input file", "key")
    event_table = read_events(events) if events else None
    series = []
    for f in files:
        reader = trades_to_bars if kind == "trades" else candles_to_bars
        bars_of_file = reader(f, interval=interval, columns=columns, symbol=symbol, key=key, **extra)
        log.info("%s: %s", f, ", ".join(f"{b.symbol} {len(b.timestamps):,} bars" for b in bars_of_file))
        for bars in bars_of_file:
            bars.events_known = event_table is not None
            series.append(attach_events(bars, event_table) if event_table is not None else bars)
    return TokenDataManager(data_dir).write(series, allow_mixed_intervals)
