"""The pump head end to end: calibration and thresholds from validation data only, predict's
pump_probability column, detect's bar-by-bar alarms, and the evaluation report."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_MODEL

from pumpcast.calibration import calibrate_pump_head as calibrate
from pumpcast.cli import main
from pumpcast.detection import PumpDetector
from pumpcast.forecasting import Forecaster
from pumpcast.modelfile import load_model_file
from pumpcast.schema import FEATURES
from pumpcast.splits import Split
from pumpcast.store import TokenDataManager

TINY = [*TINY_MODEL, "--window-stride", "4", "--no-mlflow"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("pump")
    assert (
        main(
            [
                "train",
                *TINY,
                "--num-tokens",
                "6",
                "--timesteps",
                "2500",
                "--epochs",
                "2",
                "--data-dir",
                str(work / "data"),
                "--checkpoint-dir",
                str(work / "ck"),
                "--save-model",
                str(work / "m.pth"),
                "--split-strategy",
                "token",
                "--pump-horizon",
                "5",
                "--seed",
                "0",  # every one of the 6 tokens holds a pump, so the test token has events to score
            ]
        )
        == 0
    )
    return work


def test_model_file_carries_validation_calibration_and_thresholds(trained):
    pump = load_model_file(trained / "m.pth").pump
    assert pump.horizon == 5 and pump.max_false_alarms_per_day == 1.0
    baselines = pump.baselines
    assert len(pump.calibration) == 3
    # synthetic tokens carry taker sides (buy_volume_z); the regression and forests fitted on training tokens
    assert set(baselines.thresholds) == {
        "volume_z", "buys_z", "buy_volume_z", "buy_share_z", "logistic", "forest", "forest_clock"
    }
    assert all(np.isfinite(th) for th in baselines.thresholds.values())
    assert pump.ensemble.baseline in baselines.detectors and np.isfinite(pump.ensemble.threshold)
    assert pump.val_metrics["events"] > 0  # the validation tokens hold pumps
    assert pump.val_metrics["false_alarms_per_day"] <= 1.0


def test_thresholds_depend_on_validation_data_only(trained, tmp_path):
    bundle = load_model_file(trained / "m.pth")
    store = TokenDataManager(trained / "data")
    split = Split.from_json(store.load_split())
    base = calibrate(bundle, store, split.ranges["val"], 1.0)
    assert base.threshold == pytest.approx(bundle.pump.threshold)

    def wrecked(name: str) -> dict:
        copy = tmp_path / name
        shutil.copytree(trained / "data", copy)
        s = TokenDataManager(copy)
        toks = []
        for t, (a, b) in split.ranges[name].items():
            tok = s.read(t)
            tok.features[a:b, [1, 3, 4]] *= np.random.default_rng(t).uniform(0, 50, (b - a, 3))
            toks.append(tok)
        s.write(toks)
        return calibrate(bundle, s, split.ranges["val"], 1.0)

    same = wrecked("test")  # whatever happens in the test part, the choice is the same
    assert same.threshold == base.threshold and same.baselines == base.baselines
    other = wrecked("val")
    assert other.baselines != base.baselines


def test_predict_adds_pump_probability(trained, tmp_path):
    assert (
        main(["export", "--data-dir", str(trained / "data"), "--token-id", "0", "--output", str(tmp_path / "h.csv")])
        == 0
    )
    assert (
        main(
            [
                "predict",
                "--load-model",
                str(trained / "m.pth"),
                "--input",
                str(tmp_path / "h.csv"),
                "--steps",
                "4",
                "--output",
                str(tmp_path / "f.csv"),
            ]
        )
        == 0
    )
    f = pd.read_csv(tmp_path / "f.csv")
    assert "pump_probability" in f.columns and f["pump_probability"].between(0, 1).all()
    history = pd.read_csv(tmp_path / "h.csv")
    expected = PumpDetector.load(trained / "m.pth").score(history[list(FEATURES)].to_numpy(float))[-1]
    assert f["pump_probability"].iloc[0] == pytest.approx(expected, rel=1e-5)


def test_detect_walks_bar_by_bar(trained, tmp_path, capsys):
    assert (
        main(["export", "--data-dir", str(trained / "data"), "--token-id", "1", "--output", str(tmp_path / "h.csv")])
        == 0
    )
    history = pd.read_csv(tmp_path / "h.csv")
    feats = history[list(FEATURES)].to_numpy(float)
    detector = PumpDetector.load(trained / "m.pth")
    p = detector.score(feats)
    # causal: the probability at a step is the same when the history ends there
    for t in (63, 500, 1700):
        assert detector.score(feats[: t + 1])[t] == pytest.approx(p[t], rel=1e-5)
    assert np.isnan(p[:63]).all() and np.isfinite(p[63:]).all()
    threshold = float(np.quantile(p[63:], 0.99))
    assert (
        main(
            [
                "detect",
                "--load-model",
                str(trained / "m.pth"),
                "--input",
                str(tmp_path / "h.csv"),
                "--threshold",
                str(threshold),
                "--output",
                str(tmp_path / "alarms.csv"),
            ]
        )
        == 0
    )
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ALARM")]
    alarmed = np.nan_to_num(p) >= threshold
    onsets = np.flatnonzero(alarmed & ~np.r_[False, alarmed[:-1]])
    assert len(lines) == len(onsets) > 0
    close = pd.Timestamp(history["time"][onsets[0]]) + pd.Timedelta(minutes=1)  # raised when the bar closes
    assert lines[0].split()[1] == close.strftime("%Y-%m-%dT%H:%M:%SZ") and f"step {onsets[0]} " in lines[0]
    out = pd.read_csv(tmp_path / "alarms.csv")
    assert out["alarm"].sum() == len(onsets)


EVALUATE_SCORING = ["--horizons", "1,5", "--every", "7", "--context", "100", "--bootstrap", "200"]


def test_evaluate_writes_the_report(trained, tmp_path):
    out = tmp_path / "reports"
    args = ["--load-model", str(trained / "m.pth"), "--data-dir", str(trained / "data"), "--output-dir", str(out)]
    assert main(["evaluate", *args, "--no-mlflow", *EVALUATE_SCORING]) == 0
    report = json.loads((out / "report.json").read_text())
    pump = load_model_file(trained / "m.pth").pump
    assert report["thresholds"]["model"] == pytest.approx(pump.threshold)  # chosen on validation, not here
    overall = report["events"]["overall"]
    assert (
        set(overall) - {"stacker"}
        == {"detector", "model", "volume_z", "buys_z", "buy_volume_z", "buy_share_z", "logistic", "forest",
            "forest_clock", "ensemble"}
        and overall["model"]["events"] > 0
    )
    assert report["detector"] == pump.detector and overall["detector"] == overall[pump.detector]  # one detector
    assert overall["model"]["recall"] == report["events"]["intervals"]["model"]["recall"][0]
    rows = report["forecasts"]["all"]["5"]
    assert {"model", "persistence", "drift", "ridge", "empirical"} <= set(rows)
    assert rows["persistence"]["skill"] == [0.0, 0.0, 0.0]
    text = (out / "report.md").read_text()
    assert "| volume_z |" in text and "persistence (no change)" in text and "width 80%" in text
    assert report["pictures"] and all((out / p).is_file() for p in report["pictures"])


def test_evaluate_and_a_one_fold_backtest_of_the_model_agree_to_the_last_digit(trained, tmp_path):
    """One model on one split: report.json (evaluate) and the backtest's scoring of a fold with that model give
    the same numbers, since both are scoring.fold_token_scores."""
    from pumpcast.backtest import run_fold
    from pumpcast.config import BacktestConfig, DataConfig, TrainConfig
    from pumpcast.files import json_safe
    from pumpcast.scoring import per_token_sums, summarize, summarize_events
    from pumpcast.splits import load_split_file

    store = TokenDataManager(trained / "data")
    split = load_split_file(store.split_path, store.lengths())
    out = tmp_path / "reports"
    args = ["--load-model", str(trained / "m.pth"), "--data-dir", str(store.dir), "--output-dir", str(out)]
    assert main(["-q", "evaluate", *args, "--no-mlflow", *EVALUATE_SCORING]) == 0
    report = json.loads((out / "report.json").read_text())
    bt = BacktestConfig(
        horizons="1,5", every=7, context=100, bootstrap=200, load_model=str(trained / "m.pth"), output_dir=str(tmp_path)
    )
    fold = run_fold(0, split, TrainConfig(), bt, store, bt.horizon_steps())
    _, per_token = per_token_sums([fold])
    backtested = json_safe(summarize(per_token, bt.horizon_steps(), bt.bootstrap, seed=DataConfig().seed))
    assert report["forecasts"] == backtested  # skill, direction, pinball, coverage and the rest, every digit
    events = json_safe(summarize_events([fold], bt.bootstrap, seed=DataConfig().seed))
    assert report["events"]["intervals"] == events


def test_update_bar_by_bar_equals_score_on_the_whole_history(trained, tmp_path):
    assert (
        main(["export", "--data-dir", str(trained / "data"), "--token-id", "2", "--output", str(tmp_path / "h.csv")])
        == 0
    )
    feats = pd.read_csv(tmp_path / "h.csv")[list(FEATURES)].to_numpy(float)[:900]
    whole = PumpDetector.load(trained / "m.pth")
    p = whole.score(feats)
    threshold = float(np.quantile(p[np.isfinite(p)], 0.97))  # low enough that alarms happen
    live = PumpDetector.load(trained / "m.pth", threshold=threshold)
    results = [live.update(bar) for bar in feats]
    np.testing.assert_array_equal(np.array([r.probability for r in results]), p)
    onsets = np.flatnonzero([r.alarm for r in results])
    np.testing.assert_array_equal(onsets, PumpDetector(whole.bundle, threshold).alarms(p))
    assert onsets.size > 0
    live.reset()  # a new feed starts from nothing
    assert np.isnan(live.update(feats[0]).probability)


def test_onnx_export_matches_torch(trained, tmp_path, capsys):
    model, onnx_path = str(trained / "m.pth"), str(tmp_path / "m.onnx")
    assert main(["export-model", "--load-model", model, "--format", "onnx", "--output", onnx_path]) == 0
    feats = TokenDataManager(trained / "data").read_features(0)[:400]
    torch_f, onnx_f = Forecaster.load(model), Forecaster.load(onnx_path)
    z = torch.randn(16, torch_f.seq_len, 6)
    mask = torch.rand(16, torch_f.seq_len, 6) > 0.1
    with torch.no_grad():  # the network itself: within 1e-5 on the same windows
        for a, b in zip(onnx_f.model(z, mask), torch_f.model(z, mask), strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    one_pass = torch_f.horizon  # a forecast of one pass, in prices: within 1e-5 relative
    np.testing.assert_allclose(
        onnx_f.rollout(feats[None], one_pass)[..., 0], torch_f.rollout(feats[None], one_pass)[..., 0], rtol=1e-5
    )
    assert onnx_f.bundle.rollout_damping == torch_f.bundle.rollout_damping  # the metadata travels along
    np.testing.assert_allclose(
        PumpDetector.load(onnx_path).score(feats), PumpDetector.load(model).score(feats), rtol=1e-5, atol=1e-7
    )
    out = tmp_path / "f.csv"
    assert (
        main(["export", "--data-dir", str(trained / "data"), "--token-id", "0", "--output", str(tmp_path / "h.csv")])
        == 0
    )
    args = ["predict", "--input", str(tmp_path / "h.csv"), "--steps", "5", "--output", str(out)]
    assert main([*args, "--load-model", onnx_path]) == 0
    assert len(pd.read_csv(out)) == 5
    (tmp_path / "x.onnx").write_text("not onnx")
    assert main([*args, "--load-model", str(tmp_path / "x.onnx")]) == 2
    assert "not an ONNX file written by pumpcast" in capsys.readouterr().err


def test_thresholds_are_chosen_on_real_tokens_when_the_store_has_them(binance_dir, tmp_path):
    """A store that mixes synthetic and real tokens: validation takes the real tokens with events first, and
    the baselines are tuned, fitted and thresholded on the real tokens only (they will judge real markets)."""
    from pumpcast.detectors import fit_baselines
    from pumpcast.ingest import ingest_files
    from pumpcast.simulator import generate, to_series
    from pumpcast.splits import tokens_with_events

    store = TokenDataManager(tmp_path)
    synthetic = store.write([to_series(t, seed=0) for t in generate(3, 3000, seed=0)])
    files = sorted(binance_dir.glob("*.csv.gz"))[:4]
    real = ingest_files("trades", files, tmp_path, events=binance_dir / "events.csv")
    assert tokens_with_events(store) == set(real)
    tokens = [store.read(t) for t in synthetic + real]
    full = {t.token_id: (0, len(t.timestamps)) for t in tokens}
    train = {t: full[t] for t in synthetic[:2] + real[:2]}
    val = {t: full[t] for t in synthetic[2:] + real[2:]}
    mixed = fit_baselines(tokens, train, val, 10, 1.0)
    real_only = fit_baselines(tokens[3:], {t: full[t] for t in real[:2]}, {t: full[t] for t in real[2:]}, 10, 1.0)
    assert set(mixed.detectors) >= {"volume_z", "buys_z", "buy_volume_z", "logistic", "forest", "forest_clock"}
    assert mixed.to_dict() == real_only.to_dict()
    synthetic_only = fit_baselines(
        tokens[:3], {t: full[t] for t in synthetic[:2]}, {synthetic[2]: full[synthetic[2]]}, 10, 1.0
    )
    assert synthetic_only.thresholds != real_only.thresholds


def test_each_test_token_is_read_once_per_fold(trained, monkeypatch):
    from collections import Counter

    from pumpcast.scoring import fold_token_scores
    from pumpcast.splits import load_split_file

    store = TokenDataManager(trained / "data")
    split = load_split_file(store.split_path, store.lengths())
    reads: Counter[int] = Counter()
    original = TokenDataManager.read

    def counted(self, token_id):
        reads[token_id] += 1
        return original(self, token_id)

    monkeypatch.setattr(TokenDataManager, "read", counted)
    fold = fold_token_scores(load_model_file(trained / "m.pth"), store, split, (1, 5), every=7, context=100)
    assert fold.tokens == split.tokens("test") and fold.events["model"]
    assert {t: reads[t] for t in split.tokens("test")} == {t: 1 for t in split.tokens("test")}
