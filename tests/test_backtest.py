"""Probabilistic forecasts, the baselines, the forecast calibration and `pumpcast backtest` (real folds)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_MODEL

from pumpcast import baselines
from pumpcast.backtest import time_folds, token_folds
from pumpcast.cli import main
from pumpcast.config import PRESETS, BacktestConfig, DataConfig, ModelConfig, OptimConfig, RuntimeConfig, TrainConfig
from pumpcast.evaluation import _panel, forecast_test_tokens
from pumpcast.forecast_calibration import ForecastCalibration, context_stats, fit_calibration
from pumpcast.forecasting import Forecaster, long_format
from pumpcast.losses import QuantileLoss, mean_weights
from pumpcast.metrics import FORECAST_STATS, forecast_sums
from pumpcast.model import PumpcastTransformer
from pumpcast.modelfile import ModelBundle, load_model_file, save_model_file
from pumpcast.plots import plot_forecasts
from pumpcast.scoring import METHODS, method_metrics
from pumpcast.simulator import generate_to_store
from pumpcast.splits import make_split
from pumpcast.store import TokenDataManager
from pumpcast.windows import Normalizer

LEVELS = QuantileLoss.levels


def _quantile_bundle(seq_len: int = 64, horizon: int = 8) -> ModelBundle:
    torch.manual_seed(0)
    cfg = ModelConfig(seq_len=seq_len, horizon=horizon, patch_len=8, embed_size=16, nhead=4, loss="quantile")
    return ModelBundle(model=PumpcastTransformer(cfg).eval(), normalizer=Normalizer.identity())


def _history(n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    price = np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    activity = rng.poisson(3.0, (n, 3)).astype(float)
    return np.column_stack([price, activity[:, 0] * price, np.full(n, np.nan), activity[:, 1:], np.full(n, np.nan)])


# ------------------------------------------------------------------------------------------ quantiles


def test_pinball_loss_and_decoding_never_cross():
    loss = QuantileLoss()
    pred = torch.randn(5, 4, 6, len(LEVELS))  # raw head outputs in any order
    q = loss.quantiles(pred)
    assert (q.diff(dim=-1) >= 0).all()
    assert torch.equal(loss.point(pred), q[..., LEVELS.index(0.5)])
    # pinball loss by hand at one value
    target, mask = torch.zeros(1, 1, 6), torch.zeros(1, 1, 6, dtype=torch.bool)
    mask[0, 0, 0] = True
    one = torch.zeros(1, 1, 6, len(LEVELS))
    one[0, 0, 0] = torch.tensor(LEVELS)  # quantile k predicted at tau_k; target 0 -> loss (1 - tau) * tau
    expected = np.mean([(1 - t) * t for t in LEVELS])
    assert loss(one, target, mask, 0.5).item() == pytest.approx(expected)
    w = mean_weights(LEVELS)
    assert w.sum() == pytest.approx(1.0) and np.allclose(w, w[::-1])  # symmetric levels -> symmetric weights


def test_forecaster_quantiles_are_ordered_and_the_rollout_is_their_median():
    f = Forecaster(_quantile_bundle())
    hist = np.stack([_history(seed=s) for s in range(3)])
    q = f.quantiles(hist, 20)  # 20 steps = 3 passes of 8: propagated bands
    assert q.shape == (3, 20, 6, len(LEVELS)) and f.quantile_levels == LEVELS
    assert (np.diff(q[:, :, [0, 1, 3, 4]], axis=-1) >= -1e-12).all()
    np.testing.assert_array_equal(f.rollout(hist, 20), q[..., LEVELS.index(0.5)])
    assert np.isnan(q[:, :, 2]).all()  # absent liquidity stays absent in every quantile
    # later passes: price bands never narrower than the band at the end of the first pass
    width = np.log(q[:, :, 0, -1]) - np.log(q[:, :, 0, 0])
    assert (width[:, 8:] >= width[:, 7:8] - 1e-9).all()
    # leak-free: the forecast is the same whatever comes after the history
    longer = np.concatenate([hist, hist[:, :50] * 3.0], axis=1)
    np.testing.assert_array_equal(f.quantiles(longer[:, :200], 20), q)


def test_predict_writes_quantile_columns_and_long_format_keeps_them():
    f = Forecaster(_quantile_bundle())
    frame = f.predict([_history()], steps=5)[0]
    for name in ("price_q05", "price_q50", "price_q95", "volume_q25", "price_mean"):
        assert name in frame.columns
    np.testing.assert_allclose(frame["price"], frame["price_q50"])
    assert (frame["price_q05"] <= frame["price_q95"]).all()
    long = long_format([frame], ["tok"])
    assert {"q05", "q95"} <= set(long.columns) and len(long) == 5 * 6
    row = long[(long.feature == "volume") & (long.step == 3)].iloc[0]
    assert row["q25"] == frame.loc[2, "volume_q25"]


# ------------------------------------------------------------------------------------------ baselines


def test_baselines_match_a_direct_computation():
    feats = _history(400, seed=3)
    lp = np.log(feats[:, 0])
    origins = np.array([100, 250, 399])
    np.testing.assert_allclose(baselines.changes(feats, origins, (1, 5))[0], [lp[100] - lp[99], lp[104] - lp[99]])
    assert np.isnan(baselines.changes(feats, origins, (5,))[2, 0])  # past the end: unknown, not guessed
    slope = (lp[249] - lp[249 - 60]) / 60
    np.testing.assert_allclose(baselines.drift(feats, origins, (1, 15))[1], [slope, 15 * slope])
    x = baselines.ridge_features(feats, origins)
    assert x[1, 0] == pytest.approx(lp[249] - lp[248]) and x[1, 1] == pytest.approx(lp[248] - lp[247])
    assert np.isfinite(x).all()
    q, mean = baselines.empirical_quantiles(baselines.context_windows(feats, origins[:2], 100), (1, 5), LEVELS)
    seen = lp[150 + 5 : 250] - lp[150:245]  # the 5-step changes that end inside the 100 steps before origin 250
    np.testing.assert_allclose(q[1, 1], np.quantile(seen, LEVELS))
    assert mean[1, 1] == pytest.approx(seen.mean())


def test_ridge_is_the_closed_form_solution_with_the_validation_choice():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 4))
    y = np.stack([x @ [1.0, -2.0, 0.0, 0.5] + rng.normal(0, 0.1, 500), rng.normal(size=500)], axis=1)
    fit = baselines.fit_ridge(x, y, x[:100], y[:100], penalties=(1.0,))
    xs = (x - x.mean(0)) / x.std(0)
    w = np.linalg.solve(xs.T @ xs + np.eye(4), xs.T @ (y[:, 0] - y[:, 0].mean()))
    np.testing.assert_allclose(fit.coef[:, 0], w)
    assert fit.predict(x[:1])[0, 0] == pytest.approx((xs[:1] @ w + y[:, 0].mean())[0])
    # the second target is noise: the validation choice shrinks it to (nearly) nothing
    chosen = baselines.fit_ridge(x, y, x[:100], y[:100])
    assert chosen.penalty[1] > chosen.penalty[0]


def test_forecast_stats_count_direction_and_coverage_as_documented():
    actual = np.array([0.0, 0.01, -0.02, 0.03, np.nan])
    mean = np.array([0.5, 0.02, 0.01, 0.0, 1.0])
    q = np.tile(np.array(LEVELS) - 0.5, (5, 1)) * 0.05  # central 80%: +-0.02
    s = dict(zip(FORECAST_STATS, forecast_sums(actual, np.zeros(5), mean, q, LEVELS), strict=True))
    assert s["n"] == 4  # the unknown outcome is left out
    assert s["dir"] == 0.5 + 1 + 0 + 0.5  # no move (either side) counts one half
    assert s["cov80"] == 3 and s["abs"] == pytest.approx(0.06)
    assert s["width80"] == pytest.approx(4 * 0.04)  # the 0.1-0.9 interval of each known outcome


# ------------------------------------------------------------------------------------------ calibration


def _ridge(d: int, steps: int, coef: float = 0.0) -> baselines.Ridge:
    return baselines.Ridge(np.zeros(d), np.ones(d), np.full((d, steps), coef), np.zeros(steps), np.ones(steps))


def test_context_stats_are_the_windows_own_quantiles_and_regime():
    windows = np.stack([_history(100, seed=s) for s in range(2)])
    emp, score = context_stats(windows, 3, LEVELS)
    lp = np.log(windows[1, :, 0])
    np.testing.assert_allclose(emp[1, 2], np.quantile(lp[3:] - lp[:-3], LEVELS))
    moves = np.abs(np.diff(lp))
    assert score[1] == pytest.approx(np.log((moves[-30:].mean() + 1e-6) / (moves.mean() + 1e-6)))


def test_calibration_pulls_a_noisy_median_to_zero_and_averages_with_the_context():
    rng = np.random.default_rng(0)
    n = 3000
    windows = np.stack([_history(100, seed=s % 50) for s in range(n)])
    emp, score = context_stats(windows, 2, LEVELS)
    actual = np.where(rng.random((n, 2)) < 0.6, 0.0, rng.normal(0, 0.01, (n, 2)))
    noise = rng.normal(0, 0.01, (n, 2, 1))
    q = noise + (np.array(LEVELS) - 0.5) * 0.002  # a noisy median with bands far too narrow
    d = baselines.ridge_features(_history(), np.array([100])).shape[1]
    cal = fit_calibration(q, emp, score, np.zeros((n, 2)), actual, LEVELS, _ridge(d, 2))
    assert (cal.shrink <= 0.1).all()  # noise is pulled to "no change" in every regime
    assert (cal.weight < 1).all()  # the context's own quantiles carry the spread
    calibrated, _ = cal.apply(q, windows, LEVELS, seq_len=100)
    assert (np.diff(calibrated, axis=-1) >= 0).all()
    mix = cal.weight[None, :, None] * q + (1 - cal.weight[None, :, None]) * emp
    np.testing.assert_allclose(calibrated[..., 0] - calibrated[..., 3], mix[..., 0] - mix[..., 3], atol=1e-12)


def test_model_file_keeps_the_calibration(tmp_path):
    bundle = _quantile_bundle(seq_len=64)
    d = baselines.ridge_features(_history(), np.array([100])).shape[1]
    cal = ForecastCalibration(
        np.full(8, 0.5), np.array([-0.1, 0.3]), np.full((8, 3), 0.5), np.tile([0.5, 1.0], (8, 1)), _ridge(d, 8, 1e-3)
    )
    path = save_model_file(replace(bundle, forecast_calibration=cal), tmp_path / "m.pth")
    back = load_model_file(path).forecast_calibration
    np.testing.assert_array_equal(back.shrink, cal.shrink)
    np.testing.assert_array_equal(back.ridge.coef, cal.ridge.coef)
    hist = _history()[None]
    expected = Forecaster(replace(bundle, forecast_calibration=cal)).forecast(hist, 12)
    got = Forecaster(load_model_file(path)).forecast(hist, 12)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert not np.array_equal(expected[0], Forecaster(bundle).quantiles(hist, 12))  # it does change the forecast


# ------------------------------------------------------------------------------------------ splits and folds


def test_token_folds_hold_every_token_out_once_and_never_elsewhere():
    lengths = {t: 1000 for t in range(19)}
    folds = token_folds(lengths, {1, 2, 3}, 5, 0.2, seed=0)
    tested = [t for f in folds for t in f.tokens("test")]
    assert sorted(tested) == list(range(19))
    for f in folds:
        train, val, test = (set(f.tokens(n)) for n in ("train", "val", "test"))
        assert not (train & test) and not (val & test) and not (train & val)
        assert train | val | test == set(range(19))
        assert val & {1, 2, 3} or {1, 2, 3} <= test  # tokens with events validate first
    for k, f in enumerate(time_folds({0: 600}, 3, 0.25)):
        (a, b), (c, d), (e, g) = (f.ranges[n][0] for n in ("train", "val", "test"))
        assert a == 0 and b == c and d == e and g == round(600 * (k + 2) / 4)


def test_split_none_has_no_test_part_and_validates_tokens_with_events():
    split = make_split({t: 100 for t in range(10)}, "none", 0.0, 0.2, 0.6, 0, with_events={7, 8})
    assert split.tokens("test") == [] and split.tokens("val") == [7, 8]
    assert split.tokens("train") == [0, 1, 2, 3, 4, 5, 6, 9]


def test_preset_real_under_flags(tmp_path):
    from pumpcast.cli import build_parser
    from pumpcast.cli.flags import to_config

    args = build_parser().parse_args(["train", "--preset", "real", "--seq-length", "128"])
    conf = to_config(args, args.sections)
    assert conf["model"].loss == "quantile" and conf["model"].seq_len == 128  # the flag wins over the preset
    assert conf["model"].horizon == PRESETS["real"]["model"]["horizon"]
    assert conf["data"].split_strategy == "none"


# ------------------------------------------------------------------------------------------ the backtest


def test_backtest_end_to_end_isolated_and_resumable(synthetic_store, tmp_path, capsys):
    out = tmp_path / "bt"
    argv = [
        "-q",
        "backtest",
        "--data-dir",
        str(synthetic_store),
        *TINY_MODEL,
        "--loss",
        "quantile",
        "--epochs",
        "1",
        "--window-stride",
        "16",
        "--folds",
        "2",
        "--horizons",
        "1,5",
        "--every",
        "7",
        "--context",
        "100",
        "--bootstrap",
        "200",
        "--output-dir",
        str(out),
        "--save-forecasts",
    ]
    assert main(argv) == 0
    report = json.loads((out / "backtest.json").read_text())
    frame = pd.read_parquet(out / "forecasts.parquet")  # every scored forecast, long format
    assert set(frame["method"]) == set(METHODS) and set(frame["horizon"]) == {1, 5}
    assert {"token", "cutoff", "time", "actual", "median", "mean", "q05", "q95", "fold"} <= set(frame.columns)
    assert (frame.loc[frame.method == "persistence", "median"] == 0).all()
    row = frame[(frame.method == "model") & (frame.horizon == 5)].iloc[3]
    store = TokenDataManager(synthetic_store)
    tid = next(int(t) for t, m in store.metadata()["tokens"].items() if m["key"] == row["token"])
    times = pd.to_datetime(store.read(tid).timestamps, unit="ms", utc=True)
    last = int(np.flatnonzero(times == row["cutoff"])[0])
    lp = np.log(store.read_features(tid)[:, 0])
    assert row["actual"] == pytest.approx(lp[last + 5] - lp[last]) and row["time"] == times[last + 5]
    assert row["q05"] <= row["median"] <= row["q95"]
    assert report["tokens"] == list(range(6))
    rows = report["metrics"]["all"]["5"]
    assert set(rows) == set(METHODS)
    assert rows["persistence"]["skill"] == [0.0, 0.0, 0.0]
    assert rows["model"]["cov80"][1] <= rows["model"]["cov80"][0] <= rows["model"]["cov80"][2]
    assert "pinball" not in rows["ridge"] and "pinball" in rows["empirical"]
    for k in range(2):  # no held-out token trained, validated or chose anything in its fold
        fold = json.loads((out / "folds" / f"fold{k}.json").read_text())
        assert not set(fold["test_tokens"]) & (set(fold["train_tokens"]) | set(fold["val_tokens"]))
        assert load_model_file(out / "folds" / f"fold{k}.pth").forecast_calibration is not None
    assert (out / "img" / "backtest_skill.png").stat().st_size > 0
    # pump events of the model and both baselines, thresholds from each fold's validation tokens
    events = report["events"]
    names = {"detector", "model", "volume_z", "buys_z", "buy_volume_z", "buy_share_z", "logistic", "forest"}
    names |= {"forest_clock", "ensemble"}
    assert set(events) - {"stacker"} == names
    assert events["model"]["events"] == events["buys_z"]["events"] > 0
    for m in events.values():
        assert 0 <= m["detected"] <= m["events"] and m["recall"][0] == pytest.approx(m["detected"] / m["events"])
        assert 0 <= m["recall"][1] <= m["recall"][0] <= m["recall"][2] <= 1
        assert 0 <= m["auprc"][0] <= 1
    assert "## Pump events" in (out / "backtest.md").read_text()
    assert "### h = 5 steps" in (out / "backtest.md").read_text()
    # a second run reads the finished folds instead of training again
    stamp = (out / "folds" / "fold0.pth").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "folds" / "fold0.pth").stat().st_mtime_ns == stamp
    assert json.loads((out / "backtest.json").read_text())["metrics"] == report["metrics"]
    # a damaged or inconsistent fold file is scored again, said in one line, never a traceback
    (out / "folds" / "fold1.json").write_text('{"fingerprint": "')
    stamp1 = (out / "folds" / "fold1.pth").stat().st_mtime_ns
    assert main(argv[1:]) == 0
    assert "fold1.json: damaged or of another format (JSONDecodeError); scoring" in capsys.readouterr().err
    assert (out / "folds" / "fold0.pth").stat().st_mtime_ns == stamp
    assert (out / "folds" / "fold1.pth").stat().st_mtime_ns != stamp1
    assert json.loads((out / "backtest.json").read_text())["metrics"] == report["metrics"]  # deterministic
    (tmp_path / "a-file").write_text("x")
    assert main([*argv, "--output-dir", str(tmp_path / "a-file")]) == 2
    assert "a-file: is a file" in capsys.readouterr().err


def test_a_resumed_backtest_notices_that_the_store_changed(tmp_path):
    from pumpcast.backtest import _fingerprint

    generate_to_store(tmp_path / "s", num_tokens=4, timesteps=200, seed=0)
    store = TokenDataManager(tmp_path / "s")
    cfg, bt = TrainConfig(data=DataConfig(data_dir=str(store.dir))), BacktestConfig()
    before = _fingerprint(cfg, bt, store)
    assert _fingerprint(cfg, bt, store) == before
    generate_to_store(tmp_path / "s", num_tokens=1, timesteps=200, seed=0)  # token 0 rewritten, same data
    assert _fingerprint(cfg, bt, store) != before  # a new write: the folds are scored again


def test_metrics_from_sums():
    sums = np.zeros((len(METHODS), 1, 2, len(FORECAST_STATS)))
    sums[..., 0] = 10
    sums[..., 1] = 2.0
    sums[METHODS.index("model"), ..., 1] = 1.5
    m = method_metrics(sums)
    assert m["skill"][METHODS.index("model"), 0, 0] == pytest.approx(0.25)
    assert m["mae"][METHODS.index("model"), 0, 0] == pytest.approx(0.15)


def test_backtest_config_refuses_bad_horizons():
    with pytest.raises(ValueError, match="horizons"):
        BacktestConfig(horizons="1,x")
    with pytest.raises(ValueError, match="context"):
        BacktestConfig(horizons="600", context=500)


def test_fit_trains_a_calibrated_quantile_model(tmp_path):
    cfg = TrainConfig(
        data=DataConfig(data_dir=str(tmp_path / "data"), num_tokens=4, timesteps=700, window_stride=8),
        model=ModelConfig(seq_len=64, horizon=8, patch_len=8, embed_size=16, nhead=4, loss="quantile"),
        optim=OptimConfig(epochs=1),
        runtime=RuntimeConfig(checkpoint_dir=str(tmp_path / "ck"), progress_bar=False, save_model=None),
    )
    from pumpcast.training import fit

    bundle = fit(cfg).bundle
    cal = bundle.forecast_calibration
    assert cal is not None and cal.shrink.shape == (8, 3) and cal.weight.shape == (8,)
    frame = Forecaster(bundle).predict([pd.DataFrame(_history(), columns=list(bundle.features))], steps=3)[0]
    assert frame["price_mean"].notna().all()
    # test mode draws the forecast's 50% and 80% intervals
    store = TokenDataManager(cfg.data.data_dir)
    split = make_split(store.lengths(), "time")
    item = forecast_test_tokens(Forecaster(bundle), store, split, [0], 40)[0]
    panel = _panel(item, 40, store.read(0))
    low, high = panel.bands[0.8]
    assert (low <= panel.forecast).all() and (panel.forecast <= high).all() and (low < high).any()
    assert plot_forecasts([panel], tmp_path / "f.png", "bands").stat().st_size > 0


def test_baselines_and_pump_baselines_are_causal(binance_dir):
    """Appending future bars never changes a past score or feature: every pump baseline (each z-score at every
    window and floor tried, the La Morgia features, the logistic regression, the forests) and every forecast
    baseline."""
    from dataclasses import replace

    from sklearn.ensemble import RandomForestClassifier

    from pumpcast.detectors import (
        SIGNALS,
        WINDOWS,
        ForestDetector,
        LogisticDetector,
        ZScoreDetector,
        forest_features,
        morgia_features,
    )
    from pumpcast.ingest import trades_to_bars

    [tok] = trades_to_bars(binance_dir / "NAS_2022-02-01_15.00.csv.gz")
    n = 3000  # the pump is at bar ~2900: the future holds it
    past = replace(tok, timestamps=tok.timestamps[:n], features=tok.features[:n], extras=tok.extras[:n])
    wild = tok.features.copy()
    wild[n:, 1:] *= 100.0
    later = replace(tok, features=wild, extras=tok.extras * np.r_[np.ones(n), np.full(len(wild) - n, 7.0)][:, None])
    for signal, (_, floors) in SIGNALS.items():
        for window in WINDOWS:
            for floor in floors:
                det = ZScoreDetector(signal, window, floor)
                a, b = det.score(past), det.score(later)[:n]
                assert np.isfinite(a[-1000:]).any(), signal
                np.testing.assert_array_equal(a, b, err_msg=f"{det}")
    np.testing.assert_array_equal(morgia_features(past), morgia_features(later)[:n])
    k = morgia_features(past).shape[1]
    logistic = LogisticDetector((0.0,) * k, (1.0,) * k, tuple(np.linspace(-1, 1, k)), 0.5, 1.0)
    np.testing.assert_array_equal(logistic.score(past), logistic.score(later)[:n])
    labels = np.zeros(len(tok.timestamps), dtype=int)
    labels[2850:2950] = 1
    for clock in (False, True):
        x = forest_features(tok, clock)
        forest = RandomForestClassifier(5, max_depth=4, random_state=0).fit(x.astype(np.float32), labels)
        det = ForestDetector.of(forest, 4, clock)
        np.testing.assert_array_equal(det.score(past), det.score(later)[:n])

    feats = _history(600, seed=5)
    more = np.concatenate([feats, _history(200, seed=6) * 50.0])
    origins = np.arange(100, 600, 7)
    np.testing.assert_array_equal(baselines.ridge_features(feats, origins), baselines.ridge_features(more, origins))
    np.testing.assert_array_equal(baselines.drift(feats, origins, (1, 5)), baselines.drift(more, origins, (1, 5)))
    np.testing.assert_array_equal(
        baselines.context_windows(feats, origins, 100), baselines.context_windows(more, origins, 100)
    )
