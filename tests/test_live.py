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
    builder = BarBuilder("timestamp,side,price,amount\n", 60_000, "feed.csv")
    builder.feed(["1643727600000,buy,1.0,2.0\n", "1643727700000,buy,1.0,2.0\n"])  # closes the 15:00 bar
    with pytest.raises(DataError, match="feed.csv: a trade of bar .* came after that bar closed"):
        builder.feed(["1643727610000,sell,1.0,2.0\n", "1643727800000,buy,1.0,2.0\n"])
    bars = BarBuilder("time,price,volume,liquidity,buys,sells,market_cap\n", 60_000, "bars.csv")
    with pytest.raises(DataError, match="bars.csv: bars 90 s apart do not fit this model's 60 s bars"):
        bars.feed(["2022-02-01T15:00:00Z,1,0,,0,0,\n", "2022-02-01T15:01:30Z,1,0,,0,0,\n"])
    with pytest.raises(DataError, match="no such file to follow"):
        next(follow_lines(tmp_path / "missing.csv"))
    # a gap in a bar feed is filled as ingestion fills it: price carried, no activity
    filled = BarBuilder("time,price,volume,liquidity,buys,sells,market_cap\n", 60_000, "bars.csv")
    out = filled.feed(["2022-02-01T15:00:00Z,2,5,,1,0,\n", "2022-02-01T15:03:00Z,3,1,,1,1,\n"])
    assert [b.start_ms for b in out] == [
        pd.Timestamp("2022-02-01T15:00Z").value // 10**6 + k * 60_000 for k in range(4)
    ]
    np.testing.assert_array_equal(out[1].features, [2, 0, np.nan, 0, 0, np.nan])
