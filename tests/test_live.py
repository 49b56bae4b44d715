"""Live detection: `detect --follow` on a growing trade or bar file (or stdin) gives the bars, probabilities and
alarms a replay of the same data gives, each alarm stamped with its bar's close."""

import gzip
import io
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from pumpcast.cli import main
from pumpcast.detection import PumpDetector
from pumpcast.ingest import trades_to_bars
from pumpcast.live import BarBuilder, detect_live, follow_lines
from pumpcast.model import ModelConfig, PumpcastTransformer
from pumpcast.modelfile import DataInfo, ModelBundle, save_model_file
from pumpcast.pumps import PumpCalibration
from pumpcast.schema import DataError
from pumpcast.windows import Normalizer

BARS = 900  # about 15 hours of NAS/BTC trades before its pump


@pytest.fixture(scope="module")
def trades_csv(binance_dir, tmp_path_factory):
    """The first BARS minutes of a real trade file, as a collector would have written it (plain CSV)."""
    with gzip.open(binance_dir / "NAS_2022-02-01_15.00.csv.gz", "rt") as fh:
        lines = fh.readlines()
    first = int(lines[1].split(",")[1]) // 60_000
    keep = [ln for ln in lines[1:] if int(ln.split(",")[1]) // 60_000 < first + BARS]
    path = tmp_path_factory.mktemp("live") / "trades.csv"
    path.write_text(lines[0] + "".join(keep))
    return path


@pytest.fixture(scope="module")
def model_file(trades_csv):
    """A small network with a pump head (untrained: what is tested is that live and replay agree), its alarm
    threshold set so that the replay raises a few alarms."""
    torch.manual_seed(0)
    config = ModelConfig(seq_len=64, horizon=4, patch_len=8, embed_size=16, nhead=2, dim_feedforward=32, pump_head=True)
    bundle = ModelBundle(
        PumpcastTransformer(config).eval(),
        Normalizer(np.zeros(6), np.ones(6)),
        data=DataInfo(interval_ms=60_000),
        pump=PumpCalibration(horizon=10),
    )
    [tok] = trades_to_bars(trades_csv)
    p = PumpDetector(bundle).score(tok.features)
    bundle.pump.threshold = float(np.quantile(p[np.isfinite(p)], 0.98))
    return save_model_file(bundle, trades_csv.parent / "m.pth")


def test_live_trades_give_the_replay_bars_and_probabilities(trades_csv, model_file):
    [tok] = trades_to_bars(trades_csv)
    detector = PumpDetector.load(model_file)
    expected = detector.score(tok.features)
    results = list(detect_live(PumpDetector.load(model_file), follow_lines(trades_csv, idle_exit_s=0.2)))
    assert len(results) == len(tok.timestamps) > BARS - 10  # the last minutes may have had no trade
    np.testing.assert_array_equal([r.bar.start_ms for r in results], tok.timestamps)
    np.testing.assert_array_equal(np.array([r.bar.features for r in results]), tok.features)
    np.testing.assert_array_equal([r.close_ms for r in results], tok.timestamps + 60_000)  # raised at the close
    np.testing.assert_array_equal([r.detection.probability for r in results], expected)
    onsets = np.flatnonzero([r.detection.alarm for r in results])
    np.testing.assert_array_equal(onsets, detector.alarms(expected))
    assert onsets.size > 0


def test_follow_prints_the_alarms_detect_prints_for_the_stored_bars(
    trades_csv, model_file, tmp_path, capsys, monkeypatch
):
    [tok] = trades_to_bars(trades_csv)
    bars_csv = tmp_path / "bars.csv"
    frame = tok.to_pandas()
    frame["time"] = frame["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    frame.to_csv(bars_csv, index=False)

    def alarms(*args: str) -> list[str]:
        assert main(["detect", "--load-model", str(model_file), *args]) == 0
        return [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ALARM")]

    replay = alarms("--input", str(bars_csv))
    assert replay and all("threshold" in ln for ln in replay)
    assert alarms("--follow", str(trades_csv), "--idle-exit", "0.2") == replay  # trades, as a collector writes
    monkeypatch.setattr("sys.stdin", io.StringIO(bars_csv.read_text()))
    assert alarms("--follow", "-") == replay  # bars on standard input


def test_follow_waits_for_lines_still_being_written(tmp_path):
    path = tmp_path / "growing.csv"
    path.write_text("a,b\n1,2\n3,")  # the collector is half-way through a line

    def collector():
        time.sleep(0.3)
        with path.open("a") as fh:
            fh.write("4\n5,6\n")

    writer = threading.Thread(target=collector)
    writer.start()
    lines = [ln for block in follow_lines(path, poll_s=0.05, idle_exit_s=1.0) for ln in block]
    writer.join()
    assert lines == ["a,b\n", "1,2\n", "3,4\n", "5,6\n"]


def test_bad_live_input_is_refused_in_one_line(tmp_path):
    bars = BarBuilder("time,price,volume,liquidity,buys,sells,market_cap\n", 60_000, "bars.csv")
    with pytest.raises(DataError, match="bars.csv: bars 90 s apart do not fit this model's 60 s bars"):
        bars.feed(["2022-02-01T15:00:00Z,1,0,,0,0,\n", "2022-02-01T15:01:30Z,1,0,,0,0,\n"])
    hourly = BarBuilder("time,price,volume,liquidity,buys,sells,market_cap\n", 60_000, "hours.csv")
    with pytest.raises(DataError, match="hours.csv: bars 3600 s apart do not fit this model's 60 s bars"):
        hourly.feed([f"2022-02-01T{h:02d}:00:00Z,1,0,,0,0,\n" for h in range(10, 14)])  # not three-hour gaps
    with pytest.raises(DataError, match="no such file to follow"):
        next(follow_lines(tmp_path / "missing.csv"))
    # a gap in a bar feed is filled as ingestion fills it: price carried, no activity
    filled = BarBuilder("time,price,volume,liquidity,buys,sells,market_cap\n", 60_000, "bars.csv")
    out = filled.feed(["2022-02-01T15:00:00Z,2,5,,1,0,\n", "2022-02-01T15:03:00Z,3,1,,1,1,\n"])
    assert [b.start_ms for b in out] == [
        pd.Timestamp("2022-02-01T15:00Z").value // 10**6 + k * 60_000 for k in range(4)
    ]
    np.testing.assert_array_equal(out[1].features, [2, 0, np.nan, 0, 0, np.nan])


# ------------------------------------------------------------------ what streams do


class _Clock:
    """Stands in for the follower's clock: sleeping advances it, and the n-th sleep can run something (the
    collector's next move), so that what the follower sees does not depend on the machine's speed."""

    def __init__(self, actions: dict[int, object]):
        self.now, self.sleeps, self.actions = 1000.0, 0, actions

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        action = self.actions.get(self.sleeps)
        if action is not None:
            action()


def _lines(blocks) -> list[str]:
    return [ln for block in blocks for ln in block]


def test_idle_time_counts_only_waiting_not_scoring(tmp_path, monkeypatch):
    path = tmp_path / "feed.csv"
    path.write_text("a,b\n1,2\n")
    clock = _Clock({3: lambda: path.open("a").write("3,4\n")})  # the collector writes after 0.6 s of waiting
    monkeypatch.setattr("pumpcast.live.time", clock)
    got = []
    for block in follow_lines(path, poll_s=0.2, idle_exit_s=5.0):
        got += block
        clock.now += 60.0  # scoring this block took a minute (a busy box): that is not idle time
    assert got == ["a,b\n", "1,2\n", "3,4\n"]
    assert clock.sleeps == 3 + 25  # then 5 s of waiting with nothing new


def test_rotation_and_truncation_are_followed_and_said(tmp_path, monkeypatch, caplog):
    path = tmp_path / "feed.csv"
    path.write_text("a,b\n1,2\n3,4\n")

    def rotate():
        path.rename(tmp_path / "feed.csv.1")
        path.write_text("a,b\n5,6\n")  # the new file repeats the header

    def truncate():
        with path.open("r+") as fh:
            fh.truncate(0)
        path.write_text("7,8\n")  # the collector goes on writing rows

    def last_words():
        with (tmp_path / "feed.csv.1").open("a") as fh:  # too late: the old file was read to its end
            fh.write("9,9\n")

    clock = _Clock({2: rotate, 4: truncate, 6: last_words})
    monkeypatch.setattr("pumpcast.live.time", clock)
    got = _lines(follow_lines(path, poll_s=0.2, idle_exit_s=2.0))
    assert got == ["a,b\n", "1,2\n", "3,4\n", "5,6\n", "7,8\n"]
    assert "feed.csv: rotated" in caplog.text and "feed.csv: truncated" in caplog.text


def test_undecodable_bytes_are_one_line_naming_the_line(tmp_path):
    path = tmp_path / "feed.csv"
    path.write_bytes(b"a,b\n1,2\n\xff\xfe,3\n")
    with pytest.raises(DataError, match=r"feed.csv: line 3 is not UTF-8 text"):
        _lines(follow_lines(path, idle_exit_s=0))


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--follow", "FEED", "--idle-exit", "nan"], "not a number of seconds >= 0"),
        (["--follow", "FEED", "--idle-exit", "-1"], "not a number of seconds >= 0"),
        (["--follow", "-", "--idle-exit", "1"], "standard input ends when its writer closes it"),
        (["--input", "FEED", "--idle-exit", "1"], "--idle-exit goes with --follow FILE"),
    ],
)
def test_idle_exit_is_refused_where_it_means_nothing(model_file, trades_csv, capsys, extra, needle):
    argv = [a.replace("FEED", str(trades_csv)) for a in extra]
    assert main(["detect", "--load-model", str(model_file), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.count("\n") == 0, err


def test_a_long_gap_builds_only_the_window_and_scores_as_a_replay(trades_csv, model_file, tmp_path, caplog):
    lines = trades_csv.read_text().splitlines(keepends=True)
    cut = len(lines) // 2
    shift = 300 * 60_000  # five hours without a trade in the middle of the feed
    later = []
    for ln in lines[cut:]:
        f = ln.split(",")
        f[1] = str(int(f[1]) + shift)
        later.append(",".join(f))
    gapped = tmp_path / "gapped.csv"
    gapped.write_text("".join(lines[:cut] + later))
    [tok] = trades_to_bars(gapped)  # the replay fills the whole gap
    expected = PumpDetector.load(model_file).score(tok.features)
    results = list(detect_live(PumpDetector.load(model_file), follow_lines(gapped, idle_exit_s=0)))
    assert len(results) < len(tok.timestamps) - 200  # most of the gap was neither built nor scored
    assert "quiet bars before it are scored" in caplog.text
    steps = np.array([r.bar.step for r in results])
    np.testing.assert_array_equal([r.bar.start_ms for r in results], tok.timestamps[steps])
    traded = pd.read_csv(gapped)["timestamp"].to_numpy() // 60_000 * 60_000
    real = np.isin(tok.timestamps[steps], traded)  # the bars with a trade
    got = np.array([r.detection.probability for r in results])
    np.testing.assert_array_equal(got[real], expected[steps[real]])
    huge = BarBuilder("timestamp,side,price,amount\n", 60_000, "feed.csv", max_fill=64)
    out = huge.feed(["1600000000000,buy,1.0,2.0\n", f"{1600000000000 + 2 * 365 * 86_400_000},buy,1.0,2.0\n"])
    assert len(out) == 65 and out[-1].step == 2 * 365 * 1440 - 1  # two years: 65 bars built, not a million


def test_out_of_order_trades_are_sorted_into_an_open_bar_or_skipped_and_said(caplog):
    builder = BarBuilder("timestamp,side,price,amount\n", 60_000, "feed.csv")
    t0 = 1643727600000  # 15:00
    out = builder.feed([f"{t0 + 30_000},buy,1.0,1.0\n", f"{t0 + 10_000},sell,2.0,1.0\n"])  # 15:00:10 after :30
    assert out == [] and "feed.csv: trades out of time order" in caplog.text
    out = builder.feed([f"{t0 + 70_000},buy,3.0,1.0\n", f"{t0 + 20_000},buy,9.0,1.0\n"])  # :20 after 15:01:10
    [bar] = out  # 15:00 was still open: it closes with its three trades in time order, the last at 15:00:30
    assert bar.features[0] == 1.0 and bar.features[3] == 2 and bar.features[4] == 1
    builder.feed([f"{t0 + 50_000},sell,9.0,1.0\n", f"{t0 + 130_000},buy,4.0,1.0\n"])  # a closed bar: skipped
    builder.finish()
    assert builder.skipped_late == 1 and builder.sorted_in == 2
    assert "3 trade(s) came out of time order: 2 sorted into their open bar, 1 skipped" in caplog.text
