"""Sub-minute bars end to end: real trades ingested at 15 s, a backtest with event metrics, and live detection
whose alarms are stamped with 15-second bar closes."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_MODEL

from pumpcast.cli import main
from pumpcast.detection import PumpDetector
from pumpcast.live import detect_live, follow_lines
from pumpcast.store import TokenDataManager

FILES = ["NAS_2022-02-01_15.00.csv.gz", "QLC_2020-09-06_16.00.csv.gz", "WABI_2021-10-14_15.00.csv.gz"]
FILES += ["ATM_2021-09-10_16.00.csv.gz", "GRS_2020-04-02_16.00.csv.gz"]
HOURS = 2  # trades kept on each side of the announced pump


@pytest.fixture(scope="module")
def trade_files(binance_dir, tmp_path_factory):
    """Five real pumps, each cut to the trades of HOURS hours around its announcement (plain CSV)."""
    folder = tmp_path_factory.mktemp("trades15s")
    out = []
    for name in FILES:
        announced = pd.Timestamp(
            name.split("_", 1)[1].removesuffix(".csv.gz").replace("_", "T").replace(".", ":"), tz="UTC"
        )
        lo, hi = (
            (announced - pd.Timedelta(hours=HOURS)).value // 10**6,
            (announced + pd.Timedelta(hours=HOURS)).value // 10**6,
        )
        with gzip.open(binance_dir / name, "rt") as fh:
            lines = fh.readlines()
        keep = [ln for ln in lines[1:] if lo <= int(ln.split(",")[1]) < hi]
        path = folder / name.removesuffix(".gz")
        path.write_text(lines[0] + "".join(keep))
        out.append(path)
    return out


def test_fifteen_second_bars_ingest_backtest_and_follow(trade_files, binance_dir, tmp_path, capsys):
    data = tmp_path / "data"
    events = str(binance_dir / "events.csv")
    assert (
        main(
            [
                "-q",
                "ingest",
                "trades",
                *map(str, trade_files),
                "--events",
                events,
                "--interval",
                "15s",
                "--data-dir",
                str(data),
            ]
        )
        == 0
    )
    store = TokenDataManager(data)
    tok = store.read(0)
    assert tok.interval_ms == 15_000 and len(tok.timestamps) > 4 * 60 * HOURS
    [event] = tok.events
    assert tok.timestamps[event.start] == pd.Timestamp("2022-02-01T15:00Z").value // 10**6  # the announced bar
    assert tok.extras is not None and np.nansum(tok.extra("rush_orders")) > 0

    out = tmp_path / "bt"
    argv = ["backtest", "--data-dir", str(data), *TINY_MODEL, "--epochs", "1", "--window-stride", "8", "--folds", "2"]
    argv += ["--horizons", "1,4", "--every", "9", "--context", "100", "--bootstrap", "100", "--output-dir", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "backtest.json").read_text())
    assert report["events"]["model"]["events"] == 5
    assert {"volume_z", "buys_z", "buy_volume_z", "logistic"} <= set(report["events"])

    model = out / "folds" / "fold0.pth"
    detector = PumpDetector.load(model)
    assert detector.bundle.data.interval_ms == 15_000
    p = detector.score(tok.features)
    results = list(detect_live(PumpDetector.load(model), follow_lines(trade_files[0], idle_exit_s=0.2)))
    np.testing.assert_array_equal([r.bar.start_ms for r in results], tok.timestamps)
    np.testing.assert_array_equal([r.detection.probability for r in results], p)
    capsys.readouterr()
    threshold = str(float(np.nanquantile(p, 0.99)))
    argv = ["detect", "--load-model", str(model), "--follow", str(trade_files[0]), "--idle-exit", "0.2"]
    assert main([*argv, "--threshold", threshold]) == 0
    alarms = [ln.split()[1] for ln in capsys.readouterr().out.splitlines() if ln.startswith("ALARM")]
    assert alarms and all(pd.Timestamp(t).second % 15 == 0 for t in alarms)  # each at a 15 s bar's close
