"""The network's extra input channels (trades, z-scores, the clock), the stacker over them and cross-fitting,
on real shared trades: every channel is causal, the clock is known ahead, `update` equals `score` for the
stacker, and no test token reaches a sub-model or the stacker."""

import dataclasses
import json

import numpy as np
import pytest
from helpers import TINY_MODEL

import pumpcast.training as training
from pumpcast.channels import GROUPS, advance_calendar, calendar, channel_names, model_inputs
from pumpcast.cli import main
from pumpcast.config import ModelConfig
from pumpcast.detection import PumpDetector
from pumpcast.forecasting import Forecaster
from pumpcast.ingest import trades_to_bars
from pumpcast.schema import ConfigError
from pumpcast.store import TokenDataManager

ALL = ",".join(GROUPS)
FILES = ["NAS_2022-02-01_15.00.csv.gz", "QLC_2020-09-06_16.00.csv.gz", "WABI_2021-10-14_15.00.csv.gz"]
FILES += ["ATM_2021-09-10_16.00.csv.gz", "GRS_2020-04-02_16.00.csv.gz"]


@pytest.fixture(scope="module")
def real_token(binance_dir):
    [tok] = trades_to_bars(binance_dir / FILES[0], interval="1min")
    return tok


def test_every_channel_reads_the_past_only(real_token):
    """Appending bars changes no earlier value of any channel (computed from each bar's own window)."""
    tok = real_token
    groups = tuple(GROUPS)
    whole = model_inputs(tok, groups)
    assert whole.shape == (len(tok.timestamps), 6 + len(channel_names(groups)))
    assert np.isfinite(whole[100:, 6:]).mean() > 0.8  # a real trade file gives nearly every channel
    for cut in (1, 61, 62, 1000, len(tok.timestamps) - 1):
        short = dataclasses.replace(
            tok, features=tok.features[:cut], extras=tok.extras[:cut], timestamps=tok.timestamps[:cut]
        )
        np.testing.assert_array_equal(model_inputs(short, groups), whole[:cut])


def test_candles_without_sides_get_the_trade_channels_as_absent(real_token):
    tok = dataclasses.replace(real_token, extras=None)
    wide = model_inputs(tok, ("trades", "zscores"))
    names = channel_names(("trades", "zscores"))
    assert np.isnan(wide[:, [6 + names.index(n) for n in GROUPS["trades"]]]).all()
    assert np.isnan(wide[:, 6 + names.index("rush_z")]).all()
    assert np.isfinite(wide[100:, 6 + names.index("volume_z")]).any()  # volume and buys need no sides


def test_the_clock_of_future_bars_is_known(real_token):
    ts = real_token.timestamps
    ahead = advance_calendar(calendar(ts[-1:]), 200, 60_000)[0]
    np.testing.assert_allclose(ahead, calendar(ts[-1] + 60_000 * np.arange(1, 201)), atol=1e-9)
    with pytest.raises(ConfigError, match="unknown channel group"):
        ModelConfig(inputs="trades,moon")


@pytest.fixture(scope="module")
def backtested(binance_dir, tmp_path_factory):
    """A 2-fold token backtest of a model with every channel and 2 cross-fitting sub-models per fold, with
    every training run's split and every set of out-of-fold tokens recorded."""
    work = tmp_path_factory.mktemp("channels")
    data = work / "data"
    paths = [str(binance_dir / f) for f in FILES]
    argv = ["-q", "ingest", "trades", *paths, "--events", str(binance_dir / "events.csv"), "--data-dir", str(data)]
    assert main(argv) == 0
    runs, calibrated = [], []
    train, calibrate = training.train, training.calibrate
    mp = pytest.MonkeyPatch()
    mp.setattr(training, "train", lambda cfg, split=None, **kw: runs.append(split) or train(cfg, split=split, **kw))

    def record(*args, **kw):
        calibrated.append(sorted(args[5] or {}))
        return calibrate(*args, **kw)

    mp.setattr(training, "calibrate", record)
    argv = ["backtest", "--data-dir", str(data), *TINY_MODEL, "--epochs", "1", "--window-stride", "8"]
    argv += ["--folds", "2", "--horizons", "1,4", "--every", "29", "--context", "100", "--bootstrap", "100"]
    argv += ["--inputs", ALL, "--cross-fit", "2", "--threads", "1", "--output-dir", str(work / "bt")]
    try:
        assert main(argv) == 0
    finally:
        mp.undo()
    return work, runs, calibrated


def test_cross_fitting_keeps_every_test_token_out(backtested):
    work, runs, calibrated = backtested
    report = json.loads((work / "bt" / "backtest.json").read_text())
    assert len(runs) == 2 * 3 and len(calibrated) == 2  # per fold: the model and its 2 sub-models
    for fold in range(2):
        main_split, *subs = runs[3 * fold : 3 * fold + 3]
        test = set(main_split.tokens("test"))
        fitted = set(main_split.tokens("train")) | set(main_split.tokens("val"))
        assert test and not test & fitted
        scored_out_of_fold = set()
        for sub in subs:
            seen = set(sub.tokens("train")) | set(sub.tokens("val"))
            assert not seen & test and not sub.tokens("test")
            assert not set(sub.tokens("train")) & set(sub.tokens("val"))  # a sub-model never trains on its group
            scored_out_of_fold |= set(sub.tokens("val"))
        assert set(calibrated[fold]) == scored_out_of_fold == fitted  # the stacker sees every fitted token, no other
    assert "detector" in report["events"] and "stacker" in report["events"]


def test_update_equals_score_for_the_stacker(backtested):
    work, _, _ = backtested
    store = TokenDataManager(work / "data")
    detector = PumpDetector.load(work / "bt" / "folds" / "fold0.pth")
    cal = detector.calibration
    assert cal.stacker is not None and cal.cross_fit == 2 and cal.val_events >= 1
    detector.calibration = dataclasses.replace(cal, detector="stacker")  # whichever won, check the stacker
    detector.detector = "stacker"
    tok = store.read(0)
    n = 700
    tok = dataclasses.replace(tok, features=tok.features[:n], extras=tok.extras[:n], timestamps=tok.timestamps[:n])
    whole = detector.score(tok)
    assert np.isfinite(whole[63:]).all()
    bars = zip(tok.features, tok.extras, tok.timestamps, strict=True)
    live = [detector.update(f, e, int(t)).probability for f, e, t in bars]
    np.testing.assert_array_equal(np.array(live), whole)


def test_a_channel_model_forecasts_with_the_clock_only_ahead(backtested):
    work, _, _ = backtested
    forecaster = Forecaster.load(work / "bt" / "folds" / "fold0.pth")
    tok = TokenDataManager(work / "data").read(1)
    wide = model_inputs(tok, forecaster.bundle.config.groups)
    window = wide[None, 100:164]
    future = forecaster._future_inputs(window, np.ones((1, 5, 6)))
    names = channel_names(forecaster.bundle.config.groups)
    clock = [6 + names.index(n) for n in GROUPS["calendar"]]
    np.testing.assert_allclose(future[0, :, clock].T, calendar(tok.timestamps[164:169]), atol=1e-9)
    others = [6 + i for i, n in enumerate(names) if n not in GROUPS["calendar"]]
    assert np.isnan(future[0][:, others]).all()  # no future covariate is ever read
    six = forecaster.quantiles(wide[None, 100:164, :6], 20)  # six features alone: the channels are absent
    assert six.shape == (1, 20, 6, len(forecaster.quantile_levels))


def test_few_validation_events_are_said_in_the_model_file(backtested):
    work, _, _ = backtested
    pump = PumpDetector.load(work / "bt" / "folds" / "fold1.pth").calibration
    assert pump.val_events < 5 and "fewer than 5" in pump.note and pump.detector in ("model", "stacker")


def test_predict_reads_the_channels_from_an_exported_frame(backtested, tmp_path):
    """A frame as `pumpcast export` writes it (extras columns included) gives predict's pump probability what
    the detector gives the stored token: the channels and the stacker's inputs come from the frame."""
    import pandas as pd

    work, _, _ = backtested
    store = TokenDataManager(work / "data")
    store.export_csv(2, tmp_path / "t.csv")
    frame = pd.read_csv(tmp_path / "t.csv")
    assert {"buy_volume", "rush_orders"} <= set(frame.columns)
    model = work / "bt" / "folds" / "fold0.pth"
    got = Forecaster.load(model).predict([frame], 3)[0]["pump_probability"].iloc[0]
    expected = PumpDetector.load(model).score(store.read(2))[-1]
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)
