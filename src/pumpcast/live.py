"""Live pump detection: bars built from a growing file of trades or bars (as a collector writes it, `tail -F`
style, or standard input) and scored by `PumpDetector.update` the moment each bar closes.

A bar closes when the first row of a later bar arrives (or the input ends): trades are aggregated exactly as
`pumpcast ingest trades` aggregates them, bars without trades carry the price forward with zero activity, so a
live feed gives the bars, probabilities and alarms a replay of the stored file gives. Alarms are stamped with
their bar's close, the earliest moment they could have been raised.

What streams do, and what the follower does about it:
- idle time is only time spent waiting for a line: the time the consumer spends scoring never counts;
- a rotated file (renamed away, a new file at the path) is read to its end, then the new file from its start;
  a truncated one (copy-truncate) from its start again; each said in one line; a repeated header is skipped;
- a gap longer than the model's window: only the last seq_len quiet bars before the next trade are built and
  scored (the window then holds what a replay's would), the rest are skipped and said;
- trades out of time order: sorted into their bar while it is open (as ingest sorts a file), skipped when
  their bar has closed; said once, counted at the end;
- a line that is not UTF-8 text: a one-line error naming the file and the line.
"""

from __future__ import annotations

import io
import logging
import math
import os
import select
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple, TextIO

import numpy as np
import pandas as pd

from pumpcast.channels import CONTEXT
from pumpcast.detection import Detection, PumpDetector
from pumpcast.forecasting import frame_extras, history_array
from pumpcast.ingest import trade_times, trades_to_bars
from pumpcast.schema import FEATURES, LIQUIDITY, MARKET_CAP, PRICE, ConfigError, DataError
from pumpcast.timeutil import iso

log = logging.getLogger(__name__)

#: Lines parsed together at most: a replay of a whole file is read in blocks, a live feed line by line.
BLOCK_LINES = 20_000


def follow_lines(source: str | Path, poll_s: float = 0.2, idle_exit_s: float | None = None) -> Iterator[list[str]]:
    """Blocks of complete lines of a text file as they are appended (`-`: standard input, until it ends). A
    file is followed until idle_exit_s seconds pass with nothing to read (None: for ever), across rotation and
    truncation; a last line without its newline is held back until it is complete (or the input ends)."""
    if idle_exit_s is not None and not (
        isinstance(idle_exit_s, int | float) and math.isfinite(idle_exit_s) and idle_exit_s >= 0
    ):
        raise ConfigError(f"idle_exit must be a number of seconds >= 0, got {idle_exit_s!r}", "idle_exit")
    if str(source) == "-":
        if idle_exit_s is not None:
            raise ConfigError(
                "idle_exit goes with a file: standard input is read until its writer closes it", "idle_exit"
            )
        yield from _stream_blocks(sys.stdin)
        return
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: no such file to follow; start the collector first or give an existing CSV")
    yield from _Follower(path, poll_s, idle_exit_s).blocks()


def _decode(raw: bytes | str, name: str, line: int) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8-sig" if line == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name}: line {line} is not UTF-8 text (byte {exc.start + 1} of the line); write the feed as UTF-8 CSV"
        ) from None


def _stream_blocks(stream: TextIO) -> Iterator[list[str]]:
    """Complete lines of a stream (standard input) to its end, in blocks of what has arrived."""
    fh: BinaryIO | TextIO = getattr(stream, "buffer", stream)
    block: list[str] = []
    number = 0
    for raw in iter(fh.readline, b"" if hasattr(stream, "buffer") else ""):
        number += 1
        line = _decode(raw, "<stdin>", number)
        block.append(line if line.endswith("\n") else line + "\n")
        if len(block) >= BLOCK_LINES or not _more_now(fh):
            yield block
            block = []
    if block:
        yield block


def _more_now(fh) -> bool:
    """Whether another line can be read from a pipe without waiting."""
    try:
        return bool(select.select([fh], [], [], 0)[0])
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real stream (a test's StringIO)
        return True


class _Follower:
    """A growing file read as `tail -F` reads it (see the module docstring)."""

    def __init__(self, path: Path, poll_s: float, idle_exit_s: float | None):
        self.path, self.poll_s, self.idle_exit_s = path, poll_s, idle_exit_s
        self.header: str | None = None
        self.number = 0  # lines read so far, across files
        self.expect_header = False  # after a rotation or truncation: a repeated header is skipped

    def blocks(self) -> Iterator[list[str]]:
        fh = self.path.open("rb")
        partial = b""
        idle_since = time.monotonic()
        try:
            while True:
                block: list[str] = []
                while len(block) < BLOCK_LINES:
                    raw = fh.readline()
                    if not raw:
                        break
                    raw, partial = partial + raw, b""
                    if not raw.endswith(b"\n"):
                        partial = raw  # the writer is half-way through this line
                        break
                    self._take(raw, block)
                if block:
                    yield block
                    idle_since = time.monotonic()  # the consumer's time is not idle time
                    continue
                reopened = self._reopened(fh)
                if reopened is not None:
                    if partial:  # the old file's last line is as complete as it will ever be
                        self._take(partial + b"\n", block)
                        partial = b""
                        if block:
                            yield block
                    fh.close()
                    fh = reopened
                    idle_since = time.monotonic()
                    continue
                if self.idle_exit_s is not None and time.monotonic() - idle_since >= self.idle_exit_s:
                    if partial:
                        self._take(partial + b"\n", block)
                        yield block
                    return
                time.sleep(self.poll_s)
        finally:
            fh.close()

    def _take(self, raw: bytes, block: list[str]) -> None:
        self.number += 1
        line = _decode(raw, str(self.path), self.number)
        if self.header is None:
            self.header = line
        elif self.expect_header:
            self.expect_header = False
            if line == self.header:
                return
        block.append(line)

    def _reopened(self, fh: BinaryIO) -> BinaryIO | None:
        """A new handle when the file at the path was replaced (rotation) or cut short (truncation), else None."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:  # renamed away, the new file not there yet: keep reading the old one
            return None
        mine = os.fstat(fh.fileno())
        if (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
            what = "rotated (a new file at the path); reading the new file from its start"
        elif now.st_size < fh.tell():
            what = "truncated; reading it again from its start"
        else:
            return None
        try:
            new = self.path.open("rb")
        except FileNotFoundError:
            return None
        log.warning("%s: %s", self.path, what)
        self.expect_header = True
        return new


class ClosedBar(NamedTuple):
    """A bar that has closed: its start (Unix ms), the six features (NaN where absent), its step: its index
    in the series a replay of the whole feed would give (skipped bars of a long gap count), and its extras
    (schema.EXTRA_FEATURES; None when the feed does not give them)."""

    start_ms: int
    features: np.ndarray
    step: int = 0
    extras: np.ndarray | None = None


class BarBuilder:
    """Rows of trades or of bars in, closed bars of interval_ms out. The header line tells which: a bar file has
    the six feature columns (as `pumpcast export` writes them), anything else is read as trades. max_fill (the
    model's seq_len) bounds the quiet bars built for a gap: of a longer gap only the last max_fill are built."""

    def __init__(self, header: str, interval_ms: int, name: str = "input", max_fill: int | None = None):
        self.header, self.interval_ms, self.name = header, int(interval_ms), name
        self.max_fill = max_fill
        columns = [c.strip().lower() for c in header.strip().split(",")]
        self.kind = "bars" if all(f in columns for f in FEATURES) else "trades"
        self.pending = pd.DataFrame()  # trades of the bar still open
        self.last: ClosedBar | None = None
        self.latest_ms: int | None = None  # the latest trade time seen
        self.sorted_in = self.skipped_late = self.skipped_quiet = 0
        self.first_spacings: list[int] = []  # of a bar feed: three equal ones that are not interval_ms refuse it

    def feed(self, lines: Iterable[str]) -> list[ClosedBar]:
        """The bars these rows close, in time order."""
        frame = pd.read_csv(io.StringIO(self.header + "".join(lines)))
        if frame.empty:
            return []
        if self.kind == "bars":
            return self._bars(frame)
        times = trade_times(frame, self.name)
        frame = self._in_order(frame, times)
        if frame.empty:
            return []
        rows = pd.concat([self.pending, frame], ignore_index=True) if len(self.pending) else frame
        times = trade_times(rows, self.name)
        if (np.diff(times) < 0).any():  # a late trade of the open bar: into its place among the pending ones
            order = np.argsort(times, kind="stable")
            rows, times = rows.iloc[order].reset_index(drop=True), times[order]
        bar = times // self.interval_ms
        open_bar = int(bar.max())
        closed = bar < open_bar
        self.pending = rows[~closed].reset_index(drop=True)
        out = self._from_trades(rows[closed]) if closed.any() else []
        return out + self._fill_until(open_bar * self.interval_ms)

    def _in_order(self, frame: pd.DataFrame, times: np.ndarray) -> pd.DataFrame:
        """The rows that can still count: late trades of a bar still open are kept (feed sorts them into it, as
        ingest sorts a file), those of a bar that has closed are dropped; the first time either happens it is
        said."""
        before = np.maximum.accumulate(np.concatenate([[self.latest_ms or times[0]], times]))[:-1]
        late = times < before
        if not late.any():
            self.latest_ms = int(times[-1]) if self.latest_ms is None else max(self.latest_ms, int(times[-1]))
            return frame
        closed_until = (self.last.start_ms + self.interval_ms) if self.last is not None else -1
        too_late = times < closed_until
        if self.sorted_in + self.skipped_late == 0:
            first = int(np.flatnonzero(late)[0])
            log.warning(
                "%s: trades out of time order (one at %s after one at %s): those of a bar still open are sorted "
                "into it, as ingest sorts a file; those of a closed bar are skipped; counted at the end",
                self.name,
                iso(int(times[first])),
                iso(int(before[first])),
            )
        self.skipped_late += int(too_late.sum())
        self.sorted_in += int((late & ~too_late).sum())
        self.latest_ms = max(int(before[-1]), int(times.max()))
        return frame[~too_late].reset_index(drop=True)  # feed sorts them among the open bar's trades

    def finish(self) -> list[ClosedBar]:
        """At the end of the input: the bar still open closes; what was sorted or skipped is said."""
        out = self._from_trades(self.pending) if len(self.pending) else []
        self.pending = pd.DataFrame()
        if self.sorted_in or self.skipped_late:
            log.warning(
                "%s: %d trade(s) came out of time order: %d sorted into their open bar, %d skipped (their bar had "
                "closed)",
                self.name,
                self.sorted_in + self.skipped_late,
                self.sorted_in,
                self.skipped_late,
            )
        return out

    def _from_trades(self, rows: pd.DataFrame) -> list[ClosedBar]:
        """Closed bars of trades in time order, split where a gap is longer than max_fill bars (so that a gap
        never builds more than max_fill quiet bars)."""
        bar = trade_times(rows, self.name) // self.interval_ms
        limit = np.inf if self.max_fill is None else self.max_fill + 1
        cuts = np.flatnonzero(np.diff(bar) > limit) + 1
        out: list[ClosedBar] = []
        for part in np.split(np.arange(len(rows)), cuts):
            series = trades_to_bars(rows.iloc[part], interval=f"{self.interval_ms}ms")
            if len(series) != 1:
                raise DataError(f"{self.name}: holds trades of {len(series)} pairs; follow one pair per file")
            tok = series[0]
            out += self._fill_until(int(tok.timestamps[0]))
            extras = tok.extras if tok.extras is not None else [None] * len(tok.timestamps)
            for start, feats, extra in zip(tok.timestamps, tok.features, extras, strict=True):
                out.append(self._close(int(start), feats, extra))
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
        known = frame_extras(frame)
        extras = list(known) if known is not None else [None] * len(frame)
        for start, feats, extra in zip(starts.astype("int64").to_numpy(), values, extras, strict=True):
            if self.last is not None and start <= self.last.start_ms:
                raise DataError(
                    f"{self.name}: bar {iso(int(start))} is not after the bar before it; give bars in order"
                )
            apart = None if self.last is None else int(start - self.last.start_ms)
            if apart is not None and len(self.first_spacings) < 3:
                self.first_spacings.append(apart)
            regular = len(self.first_spacings) == 3 and len(set(self.first_spacings)) == 1  # bars of another length
            if apart is not None and (apart % self.interval_ms or (regular and apart != self.interval_ms)):
                raise DataError(
                    f"{self.name}: bars {apart // 1000} s apart do not fit this model's {self.interval_ms // 1000} s "
                    "bars; follow bars of the model's interval"
                )
            out += self._fill_until(int(start))
            out.append(self._close(int(start), feats, extra))
        return out

    def _fill_until(self, start_ms: int) -> list[ClosedBar]:
        """Bars without trades from the last closed bar up to (not including) start_ms: price, liquidity and
        market cap carried forward, zero volume and counts (absent ones stay absent); of a gap longer than
        max_fill bars only the last max_fill (said once per gap)."""
        if self.last is None:
            return []
        first = self.last.start_ms + self.interval_ms
        missing = max(0, (start_ms - first) // self.interval_ms)
        if self.max_fill is not None and missing > self.max_fill:
            skip = missing - self.max_fill
            log.warning(
                "%s: nothing from %s to %s (%d bars); the last %d quiet bars before it are scored (the model's "
                "window), the %d before them skipped",
                self.name,
                iso(first),
                iso(start_ms),
                missing,
                self.max_fill,
                skip,
            )
            self.skipped_quiet += skip
            self.last = self.last._replace(start_ms=self.last.start_ms + skip * self.interval_ms)
            self.last = self.last._replace(step=self.last.step + skip)
        quiet = np.where(np.isnan(self.last.features), np.nan, 0.0)
        quiet[[PRICE, LIQUIDITY, MARKET_CAP]] = self.last.features[[PRICE, LIQUIDITY, MARKET_CAP]]
        no_trades = None if self.last.extras is None else np.where(np.isnan(self.last.extras), np.nan, 0.0)
        out = []
        while self.last.start_ms + self.interval_ms < start_ms:
            out.append(self._close(self.last.start_ms + self.interval_ms, quiet, no_trades))
        return out

    def _close(self, start_ms: int, features: np.ndarray, extras: np.ndarray | None = None) -> ClosedBar:
        step = 0 if self.last is None else self.last.step + 1
        extras = None if extras is None else np.asarray(extras, dtype=np.float64)
        self.last = ClosedBar(start_ms, np.asarray(features, dtype=np.float64), step, extras)
        return self.last


class LiveResult(NamedTuple):
    """One closed bar scored: when it closed (Unix ms), the bar (with its step), and the detector's result."""

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
            # a gap builds the quiet bars the window and its channels read (channels.CONTEXT before the window)
            fill = detector.seq_len + (CONTEXT if detector.bundle.config.groups else 0)
            builder, block = BarBuilder(block[0], interval, name, max_fill=fill), block[1:]
        for bar in builder.feed(block):
            yield LiveResult(bar.start_ms + interval, bar, detector.update(bar.features, bar.extras, bar.start_ms))
    for bar in builder.finish() if builder is not None else []:
        yield LiveResult(bar.start_ms + interval, bar, detector.update(bar.features, bar.extras, bar.start_ms))
