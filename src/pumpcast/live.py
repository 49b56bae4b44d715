"""Live pump detection: bars built from a growing file of trades or bars (as a collector writes it, `tail -f`
style, or standard input) and scored by `PumpDetector.update` the moment each bar closes.

A bar closes when the first row of a later bar arrives (or the input ends): trades are aggregated exactly as
`pumpcast ingest trades` aggregates them, bars without trades carry the price forward with zero activity, so a
live feed gives the bars, probabilities and alarms a replay of the stored file gives. Alarms are stamped with
their bar's close, the earliest moment they could have been raised.
"""

from __future__ import annotations

import io
import select
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, TextIO

import numpy as np
import pandas as pd

from pumpcast.detection import Detection, PumpDetector
from pumpcast.forecasting import history_array
from pumpcast.ingest import trade_times, trades_to_bars
from pumpcast.schema import FEATURES, LIQUIDITY, MARKET_CAP, PRICE, DataError
from pumpcast.timeutil import iso

#: Lines parsed together at most: a replay of a whole file is read in blocks, a live feed line by line.
BLOCK_LINES = 20_000


def follow_lines(source: str | Path, poll_s: float = 0.2, idle_exit_s: float | None = None) -> Iterator[list[str]]:
    """Blocks of complete lines of a text file as they are appended (`-`: standard input, until it ends). A
    file is followed until idle_exit_s seconds pass without a new line (None: for ever); a last line without
    its newline is held back until it is complete (or the input ends)."""
    if str(source) == "-":
        yield from _blocks(sys.stdin, wait=None)
        return
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: no such file to follow; start the collector first or give an existing CSV")
    with path.open(encoding="utf-8", newline="") as fh:
        yield from _blocks(fh, wait=(poll_s, idle_exit_s))


def _blocks(fh: TextIO, wait: tuple[float, float | None] | None) -> Iterator[list[str]]:
    """Complete lines in blocks of what is there now; wait=(poll, idle exit) polls a file for more, None reads a
    stream to its end."""
    partial, block, last_line = "", [], time.monotonic()
    while True:
        line = fh.readline()
        if line:
            line, partial = partial + line, ""
            if not line.endswith("\n"):
                partial = line
                continue
            block.append(line)
            last_line = time.monotonic()
            if len(block) < BLOCK_LINES and _more_now(fh, wait):
                continue
        if block:
            yield block
            block = []
        if line:
            continue
        if wait is None or (wait[1] is not None and time.monotonic() - last_line > wait[1]):
            if partial:
                yield [partial + "\n"]
            return
        time.sleep(wait[0])


def _more_now(fh: TextIO, wait: tuple[float, float | None] | None) -> bool:
    """Whether another line can be read without waiting (a file: always try; a pipe: ask the OS)."""
    if wait is not None:
        return True
    try:
        return bool(select.select([fh], [], [], 0)[0])
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real stream (a test's StringIO)
        return True


class ClosedBar(NamedTuple):
    """A bar that has closed: its start (Unix ms) and the six features (NaN where absent)."""

    start_ms: int
    features: np.ndarray


class BarBuilder:
    """Rows of trades or of bars in, closed bars of interval_ms out. The header line tells which: a bar file has
    the six feature columns (as `pumpcast export` writes them), anything else is read as trades."""

    def __init__(self, header: str, interval_ms: int, name: str = "input"):
        self.header, self.interval_ms, self.name = header, int(interval_ms), name
        columns = [c.strip().lower() for c in header.strip().split(",")]
        self.kind = "bars" if all(f in columns for f in FEATURES) else "trades"
        self.pending = pd.DataFrame()  # trades of the bar still open
        self.last: ClosedBar | None = None

    def feed(self, lines: Iterable[str]) -> list[ClosedBar]:
        """The bars these rows close, in time order."""
        frame = pd.read_csv(io.StringIO(self.header + "".join(lines)))
        if frame.empty:
            return []
        if self.kind == "bars":
            return self._bars(frame)
        rows = pd.concat([self.pending, frame], ignore_index=True) if len(self.pending) else frame
        bar = trade_times(rows, self.name) // self.interval_ms
        open_bar = int(bar.max())
        closed = bar < open_bar
        self.pending = rows[~closed].reset_index(drop=True)
        out = self._from_trades(rows[closed]) if closed.any() else []
        return out + self._fill_until(open_bar * self.interval_ms)

    def finish(self) -> list[ClosedBar]:
        """At the end of the input: the bar still open closes."""
        out = self._from_trades(self.pending) if len(self.pending) else []
        self.pending = pd.DataFrame()
        return out

    def _from_trades(self, rows: pd.DataFrame) -> list[ClosedBar]:
        series = trades_to_bars(rows, interval=f"{self.interval_ms}ms")
        if len(series) != 1:
            raise DataError(f"{self.name}: holds trades of {len(series)} pairs; follow one pair per file")
        tok = series[0]
        if self.last is not None and tok.timestamps[0] <= self.last.start_ms:
            raise DataError(
                f"{self.name}: a trade of bar {iso(int(tok.timestamps[0]))} came after that bar closed; write trades "
                "in time order"
            )
        out = self._fill_until(int(tok.timestamps[0]))
        for start, feats in zip(tok.timestamps, tok.features, strict=True):
            out.append(self._close(int(start), feats))
        return out

    def _bars(self, frame: pd.DataFrame) -> list[ClosedBar]:
        if "time" not in frame.columns:
            raise DataError(f"{self.name}: a bar file needs its time column; write bars as `pumpcast export` does")
        values, _ = history_array(frame.drop(columns="time"), self.name)  # gaps are filled below, not refused
        try:
            starts = pd.to_datetime(frame["time"], utc=True, format="ISO8601").astype("datetime64[ms, UTC]")
        except (ValueError, TypeError) as exc:
            raise DataError(f"{self.name}: column 'time' is not ISO-8601 time ({exc})") from exc
        out: list[ClosedBar] = []
        for start, feats in zip(starts.astype("int64").to_numpy(), values, strict=True):
            if self.last is not None and start <= self.last.start_ms:
                raise DataError(
                    f"{self.name}: bar {iso(int(start))} is not after the bar before it; give bars in order"
                )
            if self.last is not None and (start - self.last.start_ms) % self.interval_ms:
                raise DataError(
                    f"{self.name}: bars {(start - self.last.start_ms) // 1000} s apart do not fit this model's "
                    f"{self.interval_ms // 1000} s bars; follow bars of the model's interval"
                )
            out += self._fill_until(int(start))
            out.append(self._close(int(start), feats))
        return out

    def _fill_until(self, start_ms: int) -> list[ClosedBar]:
        """Bars without trades from the last closed bar up to (not including) start_ms: price, liquidity and
        market cap carried forward, zero volume and counts (absent ones stay absent)."""
        out = []
        while self.last is not None and self.last.start_ms + self.interval_ms < start_ms:
            quiet = np.where(np.isnan(self.last.features), np.nan, 0.0)
            quiet[[PRICE, LIQUIDITY, MARKET_CAP]] = self.last.features[[PRICE, LIQUIDITY, MARKET_CAP]]
            out.append(self._close(self.last.start_ms + self.interval_ms, quiet))
        return out

    def _close(self, start_ms: int, features: np.ndarray) -> ClosedBar:
        self.last = ClosedBar(start_ms, np.asarray(features, dtype=np.float64))
        return self.last


class LiveResult(NamedTuple):
    """One closed bar scored: when it closed (Unix ms), its start, and the detector's result."""

    close_ms: int
    bar: ClosedBar
    detection: Detection


def detect_live(detector: PumpDetector, blocks: Iterable[list[str]], name: str = "input") -> Iterator[LiveResult]:
    """Score each bar as it closes; `blocks` are blocks of CSV lines, the first line the header."""
    interval = detector.bundle.data.interval_ms
    builder: BarBuilder | None = None
    for block in blocks:
        if builder is None:
            if not block:
                continue
            builder, block = BarBuilder(block[0], interval, name), block[1:]
        for bar in builder.feed(block):
            yield LiveResult(bar.start_ms + interval, bar, detector.update(bar.features))
    for bar in builder.finish() if builder is not None else []:
        yield LiveResult(bar.start_ms + interval, bar, detector.update(bar.features))
