"""Names and versions shared by every part of pumpcast: the six features, the event record, the error types."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The six per-step features, in storage order. Price is the forecast target.
FEATURES: tuple[str, ...] = ("price", "volume", "liquidity", "buys", "sells", "market_cap")
PRICE, VOLUME, LIQUIDITY, BUYS, SELLS, MARKET_CAP = range(6)

#: Optional extra per-bar features that a trade list with taker sides gives (NaN where the source cannot tell;
#: stored beside the six with their own mask): taker buy and sell quote volume, distinct taker orders per side
#: (trades of one side in the same millisecond are one order: a taker order that sweeps several makers is
#: reported as several trades with one time) and rush orders (taker buy orders filled in two or more trades
#: within that millisecond; La Morgia et al., 2020).
EXTRA_FEATURES: tuple[str, ...] = ("buy_volume", "sell_volume", "buy_orders", "sell_orders", "rush_orders")

#: Version of the on-disk store layout; a store written by a newer version is refused, not misread.
SCHEMA_VERSION = 1

#: Event types the simulator writes and ingestion may attach.
EVENT_TYPES: tuple[str, ...] = (
    "pump_and_dump",
    "news",
    "trading_burst",
    "liquidity_add",
    "liquidity_withdrawal",
    "rug_pull",
)

#: HDF5/NumPy record of one event; steps are indices into the token's series.
EVENT_DTYPE = np.dtype([("type", "S24"), ("start", "<i8"), ("peak", "<i8"), ("end", "<i8"), ("magnitude", "<f8")])


class PumpcastError(Exception):
    """A user-facing error: one line that names the file or field, the problem and the fix."""


class ConfigError(PumpcastError, ValueError):
    """A bad setting. The message names settings by their field names (`embed_size`); `fields` lists them so
    that a front end can say them its own way (the CLI prints `--embed-size`)."""

    def __init__(self, message: str, *fields: str):
        super().__init__(message)
        self.fields = fields


class DataError(PumpcastError, ValueError):
    """Input data that cannot be used as it is: a history, a bar, a trade or candle file, a store."""


class ModelFileError(PumpcastError):
    """A model file that cannot be used: missing, foreign, damaged or from a newer pumpcast."""


@dataclass(frozen=True)
class Event:
    """One market event of a token: where it starts, peaks and ends (step indices) and how big it is.

    For pumps, magnitude is the peak gain (peak price / price before the start - 1).
    """

    type: str
    start: int
    peak: int
    end: int
    magnitude: float


def events_to_array(events: list[Event]) -> np.ndarray:
    """Pack events into the structured array stored in HDF5."""
    arr = np.zeros(len(events), dtype=EVENT_DTYPE)
    for i, e in enumerate(events):
        arr[i] = (e.type.encode(), e.start, e.peak, e.end, e.magnitude)
    return arr


def array_to_events(arr: np.ndarray) -> list[Event]:
    """Unpack the stored structured array into events."""
    return [
        Event(r["type"].decode(), int(r["start"]), int(r["peak"]), int(r["end"]), float(r["magnitude"])) for r in arr
    ]


@dataclass
class TokenSeries:
    """One token's fixed-interval series as stored: raw features (NaN where absent), bar times and events.

    key is the token's identity in the store (an address, or pair@start for a CEX pair's period).
    """

    key: str
    symbol: str
    source: str
    interval_ms: int
    timestamps: np.ndarray  # (T,) int64, Unix ms of each bar's start
    features: np.ndarray  # (T, 6) float64, NaN where absent
    events: list[Event] = field(default_factory=list)
    token_id: int = -1
    events_known: bool = True  # False when nobody told us the token's events: no pump labels, not "no pumps"
    volume_unit: str = "quote"  # "quote": volume in the quote asset (trades, pools); "base": in the token itself
    quote_asset: str = ""  # what prices and quote volume are in (BTC for ATM/BTC), "" when unknown
    extras: np.ndarray | None = None  # (T, len(EXTRA_FEATURES)) float64, NaN where absent; None: none known

    def extra(self, name: str) -> np.ndarray:
        """One extra feature (T,), all NaN when the source did not give it."""
        if self.extras is None:
            return np.full(len(self.timestamps), np.nan)
        return self.extras[:, EXTRA_FEATURES.index(name)]

    def to_pandas(self):
        """The bars as a DataFrame: `time` (UTC, each bar's start), the six features and, when the source gave
        them, the extras (NaN where absent), as `pumpcast export` writes them and `Forecaster.predict` reads them."""
        import pandas as pd

        frame = pd.DataFrame(self.features, columns=list(FEATURES))
        if self.extras is not None:
            frame[list(EXTRA_FEATURES)] = self.extras
        frame.insert(0, "time", pd.to_datetime(self.timestamps, unit="ms", utc=True))
        return frame

    @property
    def unit_label(self) -> str:
        """What the price is in, for axis labels ("BTC", or "quote" when unknown)."""
        return self.quote_asset or "quote"

    @property
    def steps_per_day(self) -> float:
        """Bars in a day: what false alarms per day are counted in."""
        return 86_400_000 / self.interval_ms

    @property
    def mask(self) -> np.ndarray:
        """(T, 6) bool: True where a feature has a value."""
        return np.isfinite(self.features)

    @property
    def available(self) -> dict[str, bool]:
        """Whether each feature has any value at all in this series."""
        return {name: bool(np.isfinite(self.features[:, i]).any()) for i, name in enumerate(FEATURES)}
