"""The forecaster end to end: the seed's command lines, resume after kill -9, safe model files, predict."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_MODEL

from pumpcast.calibration import fit_damping
from pumpcast.cli import main, pump_trainer_main
from pumpcast.detection import PumpDetector
from pumpcast.detectors import ZScoreDetector
from pumpcast.evaluation import forecast_test_tokens
from pumpcast.forecasting import Forecaster, long_format
from pumpcast.modelfile import load_model_file
from pumpcast.schema import PumpcastError
from pumpcast.splits import Split
from pumpcast.store import TokenDataManager

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
TINY = [*TINY_MODEL, "--window-stride", "8"]


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    """The seed's 'training with custom parameters' line with sizes lowered, then its two test-mode lines
    verbatim, all in one working folder as a user would run them."""
    work = tmp_path_factory.mktemp("seed")
    old = os.getcwd()
    os.chdir(work)
    try:
        assert (
            pump_trainer_main(
                [
                    "--seq-length",
                    "64",
                    "--embed-size",
                    "16",
                    "--nhead",
                    "4",
                    "--dim-feedforward",
                    "32",
                    "--num-tokens",
                    "6",
                    "--timesteps",
                    "900",
                    "--epochs",
                    "2",
                    "--save-model",
                    "model_v2.pth",
                    "--horizon",
                    "8",
                    "--patch-len",
                    "8",
                    "--window-stride",
                    "8",
                    "--no-progress",
                    "--forecast",
                    "50",
                    "--forecast-extended",
                    "120",
                ]
            )
            == 0
        )
        train_metrics = json.loads((work / "predictions" / "metrics.json").read_text())
        assert (
            pump_trainer_main(
                "--test-mode --load-model model_v2.pth --test-token-id 0 --forecast 1000 "
                "--forecast-extended 3000".split()
            )
            == 0
        )
        single = json.loads((work / "predictions" / "metrics.json").read_text())
        assert (
            pump_trainer_main("--test-mode --load-model model_v2.pth --test-token-range 0-5 --show-data-splits".split())
            == 0
        )
        multi = json.loads((work / "predictions" / "metrics.json").read_text())
    finally:
        os.chdir(old)
    return work, train_metrics, single, multi


def test_seed_outputs_exist(seed_run):
    work, _, _, _ = seed_run
    for rel in [
        "model_v2.pth",
        "training-data/token_metadata.json",
        "training-data/normalization_params.npy",
        "training-data/split_info.json",
        "training-data/sequences/token_5.h5",
        "img/token_0/features.png",
        "img/token_0/correlations.png",
        "img/token_5/features.png",
        "img/data_splits.png",
        "predictions/prediction_short.png",
        "predictions/prediction_extended.png",
        "checkpoints/last.ckpt",
    ]:
        assert (work / rel).is_file(), rel
    assert len(TokenDataManager(work / "training-data")) == 6


def test_seed_test_mode_metrics_are_right(seed_run):
    work, _, single, multi = seed_run
    assert single["tokens"] == [0] and multi["tokens"] == [0, 1, 2, 3, 4, 5]
    assert single["short"]["steps"] == 1000 and single["extended"]["steps"] == 3000
    store = TokenDataManager(work / "training-data")
    split = Split.from_json(store.load_split())
    # persistence beside the model, recomputed independently from the stored prices
    price = store.read_features(0)[:, 0]
    origin = max(split.ranges["test"][0][0], 64)
    actual = np.log(price[origin : origin + 10])
    expected = np.abs(actual - np.log(price[origin - 1])).mean()
    m = single["short"]["metrics"]["1-10"]
    assert m["mae_log_persistence"] == pytest.approx(expected, rel=1e-9)
    assert m["n"] == 10
    # the test part of a 900-step token holds 360 steps: the 1001-3000 bucket has no actual data
    assert "1001-3000" not in single["extended"]["metrics"]
    assert multi["short"]["metrics"]["1-10"]["n"] == 60


def test_seed_basic_training_line_runs_verbatim_as_a_script(tmp_path):
    """`python pump_trainer.py --epochs 30 --batch-size 4 --learning-rate 2.2e-6`, epochs and sizes lowered."""
    cmd = [
        sys.executable,
        str(ROOT / "pump_trainer.py"),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--learning-rate",
        "2.2e-6",
        "--num-tokens",
        "2",
        "--timesteps",
        "700",
        "--forecast",
        "30",
        "--forecast-extended",
        "60",
        *TINY,
        "--window-stride",
        "40",
    ]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "model vs persistence" in res.stdout
    assert (tmp_path / "model_v2.pth").is_file() and (tmp_path / "predictions" / "prediction_short.png").is_file()


def _train_flags(work: Path) -> list[str]:
    """A tiny training run whose store, checkpoints, model and outputs all live under work/."""
    return [
        "--data-dir",
        str(work / "data"),
        "--checkpoint-dir",
        str(work / "ckpt"),
        "--save-model",
        str(work / "m.pth"),
        "--output-dir",
        str(work),
        "--num-tokens",
        "2",
        "--timesteps",
        "700",
        "--forecast",
        "20",
        "--forecast-extended",
        "40",
        *TINY,
    ]


def _train(work: Path, *extra: str) -> int:
    return pump_trainer_main([*_train_flags(work), *extra])


def test_same_seed_same_model_and_metrics(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(a, "--epochs", "2") == 0 and _train(b, "--epochs", "2") == 0
    sa, sb = load_model_file(a / "m.pth"), load_model_file(b / "m.pth")
    for (k, va), vb in zip(sa.model.state_dict().items(), sb.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert (a / "predictions" / "metrics.json").read_text() == (b / "predictions" / "metrics.json").read_text()


def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path):
    epochs = ["--epochs", "6", "--patience", "100"]
    straight = tmp_path / "straight"
    assert _train(straight, *epochs) == 0

    killed = tmp_path / "killed"
    (killed / "data").parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(ROOT / "pump_trainer.py"), *_train_flags(killed), *epochs]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "ckpt" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "m.pth").exists(), "the run must have been killed before it finished"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # the last good checkpoint is whole
    assert ckpt["epoch"] < 5

    assert _train(killed, *epochs, "--resume") == 0
    a, b = load_model_file(straight / "m.pth"), load_model_file(killed / "m.pth")
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert _train(tmp_path, "--epochs", "1", "--resume") == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [b"", b"not a checkpoint", "truncated"])
def test_damaged_last_checkpoint_is_a_one_line_error(tmp_path, capsys, damage):
    assert _train(tmp_path, "--epochs", "1") == 0
    last = tmp_path / "ckpt" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000] if damage == "truncated" else damage)
    assert _train(tmp_path, "--epochs", "2", "--resume") == 2
    [line] = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert "last.ckpt is damaged" in line and "best.ckpt" in line


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_stop_with_a_checkpoint_and_a_nonzero_exit(tmp_path, sig, code):
    epochs = ["--epochs", "40", "--patience", "100"]
    args = [sys.executable, str(ROOT / "pump_trainer.py"), *_train_flags(tmp_path), *epochs]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "ckpt" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the next epoch
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "training stopped in epoch" in err and "--resume" in err and str(last) in err
    assert not (tmp_path / "m.pth").exists()
    assert torch.load(last, map_location="cpu", weights_only=True)["state_dict"]  # loadable
    assert _train(tmp_path, *epochs, "--resume") == 0  # and it continues
    assert (tmp_path / "m.pth").is_file()


def test_interrupt_during_validation_resumes_that_epoch(tmp_path):
    """Ctrl-C while an epoch validates: the resume replays that epoch (its validation included) from the previous
    epoch's checkpoint, instead of starting past the validation and failing on a missing val_loss."""
    from lightning.pytorch.callbacks import Callback

    from pumpcast.config import DataConfig, ModelConfig, OptimConfig, RuntimeConfig, TrainConfig, replace_train
    from pumpcast.training import Interrupted, fit

    class CtrlCInSecondValidation(Callback):
        def on_validation_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    cfg = TrainConfig(
        data=DataConfig(data_dir=str(tmp_path / "data"), num_tokens=2, timesteps=700, window_stride=8),
        model=ModelConfig(seq_len=64, horizon=8, patch_len=8, embed_size=16, nhead=4),
        optim=OptimConfig(epochs=3, patience=100),
        runtime=RuntimeConfig(checkpoint_dir=str(tmp_path / "ck"), progress_bar=False, save_model=None),
    )
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores Ctrl-C while it shuts down
    try:
        with pytest.raises(Interrupted):
            fit(cfg, callbacks=[CtrlCInSecondValidation()])
    finally:
        signal.signal(signal.SIGINT, handler)
    assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)["epoch"] == 0  # the first epoch's end
    result = fit(replace_train(cfg, {"runtime.resume": True}))
    assert result.trained.epochs_run == 3 and np.isfinite(result.trained.best_val_loss)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_model_file_with_foreign_pickles_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    _Evil.marker = marker
    payload = torch.load(DATA / "model_v1.pth", weights_only=True)
    payload["data_config"] = {"x": evil}
    torch.save(payload, tmp_path / "evil.pth")
    with pytest.raises(PumpcastError, match="refused"):
        load_model_file(tmp_path / "evil.pth")
    assert not marker.exists()
    with open(tmp_path / "plain.pth", "wb") as fh:  # a bare pickle, not even a torch file
        pickle.dump(evil, fh)
    with pytest.raises(PumpcastError):
        load_model_file(tmp_path / "plain.pth")
    assert not marker.exists()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_old_model_files_load_and_forecast_as_they_did(version):
    """A change that breaks old model files fails here (tests/data/make_model_files.py made them)."""
    sys.path.insert(0, str(DATA))
    try:
        from make_model_files import history
    finally:
        sys.path.pop(0)
    path = DATA / f"model_v{version}.pth"
    assert torch.load(path, weights_only=True)["format_version"] == version
    steps = 80 if version >= 3 else 40  # format 3's file is a calibrated quantile model reading 64 steps
    # their baselines were thresholds of volume_z and buys_z: read as the z-scores those names meant then
    baselines = PumpDetector.load(path).calibration.baselines
    assert baselines.thresholds == {"volume_z": 3.0, "buys_z": 3.0}
    assert all(d == ZScoreDetector(name, 60, 0.5, 3.0) for name, d in baselines.detectors.items())
    np.testing.assert_allclose(
        PumpDetector.load(path).score(history(steps)[0]),
        np.load(DATA / f"model_v{version}_pump.npy"),
        rtol=1e-5,
        equal_nan=True,
    )
    np.testing.assert_allclose(
        Forecaster.load(path).rollout(history(steps), 10),
        np.load(DATA / f"model_v{version}_forecast.npy"),
        rtol=1e-5,
        equal_nan=True,
    )


def test_model_trained_on_other_features_is_refused(tmp_path):
    payload = torch.load(DATA / "model_v1.pth", weights_only=True)
    payload["features"] = ["price", "volume", "spread", "buys", "sells", "market_cap"]
    torch.save(payload, tmp_path / "other.pth")
    with pytest.raises(PumpcastError, match="trained on features"):
        load_model_file(tmp_path / "other.pth")
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "newer.pth")
    with pytest.raises(PumpcastError, match="newer"):
        load_model_file(tmp_path / "newer.pth")


def test_rollout_damping_is_chosen_on_validation_and_bounds_price_moves(seed_run):
    work, _, _, _ = seed_run
    bundle = load_model_file(work / "model_v2.pth")
    assert bundle.rollout_damping in (1.0, 0.95, 0.9, 0.8, 0.6, 0.4, 0.2, 0.0)
    store = TokenDataManager(work / "training-data")
    split = Split.from_json(store.load_split())
    forecaster = Forecaster(bundle)
    assert fit_damping(forecaster, store, split.ranges["val"]) == bundle.rollout_damping
    history = store.read_features(0)[:300][None]
    flat = forecaster.rollout(history, 40, damping=0.0)[0, :, 0]
    assert np.all(flat[8:] == flat[7])  # after the first pass of 8 steps the price holds
    free = forecaster.rollout(history, 40, damping=1.0)[0, :, 0]
    np.testing.assert_array_equal(free[:8], flat[:8])  # the first pass is never damped


def test_rollout_never_reads_the_future(seed_run):
    work, _, _, _ = seed_run
    store = TokenDataManager(work / "training-data")
    split = Split.from_json(store.load_split())
    forecaster = Forecaster.load(work / "model_v2.pth")
    before = forecast_test_tokens(forecaster, store, split, [0, 1], 200)
    # wreck everything after each forecast origin: the forecasts must not change
    import shutil

    copy = work / "wrecked"
    shutil.copytree(work / "training-data", copy)
    wrecked = TokenDataManager(copy)
    toks = []
    for item in before:
        tok = wrecked.read(item.token_id)
        tok.features[item.origin :] *= 1000.0
        toks.append(tok)
    wrecked.write(toks)
    after = forecast_test_tokens(forecaster, wrecked, split, [0, 1], 200)
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x.forecast, y.forecast)
        assert not np.allclose(x.actual, y.actual)
    assert np.isfinite(before[0].forecast[:, 0]).all()


def _predict(model: str, source, steps: int, output) -> int:
    return main(
        ["predict", "--load-model", model, "--input", str(source), "--steps", str(steps), "--output", str(output)]
    )


def test_predict_file_folder_and_api(seed_run, tmp_path):
    work, _, _, _ = seed_run
    model = str(work / "model_v2.pth")
    data = str(work / "training-data")
    hist = tmp_path / "hist"
    hist.mkdir()
    for t in (0, 1):
        assert main(["export", "--data-dir", data, "--token-id", str(t), "--output", str(hist / f"t{t}.csv")]) == 0
    assert _predict(model, str(hist / "t0.csv"), 25, str(tmp_path / "f0.csv")) == 0
    f0 = pd.read_csv(tmp_path / "f0.csv")
    assert len(f0) == 25 and list(f0.columns)[:3] == ["time", "step", "price"]
    assert f0["time"][0] > pd.read_csv(hist / "t0.csv")["time"].iloc[-1]
    assert _predict(model, str(hist), 7, str(tmp_path / "out")) == 0
    folder = pd.read_csv(tmp_path / "out" / "t0_forecast.csv")
    assert len(folder) == 7 and (tmp_path / "out" / "t1_forecast.csv").is_file()
    np.testing.assert_allclose(folder["price"], f0["price"][:7], rtol=1e-6)  # batched == alone
    # the Python API gives the same numbers
    api = Forecaster.load(model).predict([pd.read_csv(hist / "t0.csv")], steps=7)[0]
    np.testing.assert_allclose(api["price"], folder["price"], rtol=1e-6)
    # and a long frame: a row per token, step and feature
    frames = [api, api.assign(price=api["price"] * 2)]
    long = long_format(frames, ["t0", "t0x2"])
    assert list(long.columns) == ["token", "time", "step", "feature", "value"] and len(long) == 2 * 7 * 6
    price = long[(long.feature == "price") & (long.token == "t0x2")]["value"].to_numpy()
    np.testing.assert_allclose(price, 2 * api["price"].to_numpy())


def test_predict_errors(seed_run, tmp_path, capsys):
    work, _, _, _ = seed_run
    model = str(work / "model_v2.pth")
    frame = pd.DataFrame(
        {
            "time": pd.date_range("2024-01-01", periods=80, freq="1min").strftime("%Y-%m-%dT%H:%MZ"),
            "price": 1.0,
            "volume": 1.0,
            "liquidity": None,
            "buys": 1,
            "sells": 1,
            "market_cap": None,
        }
    )
    frame.iloc[:20].to_csv(tmp_path / "short.csv", index=False)
    assert _predict(model, str(tmp_path / "short.csv"), 5, str(tmp_path / "o.csv")) == 2
    err = capsys.readouterr().err
    assert "short.csv" in err and "seq_length=64" in err
    frame.drop(columns=["buys"]).to_csv(tmp_path / "cols.csv", index=False)
    assert _predict(model, str(tmp_path / "cols.csv"), 5, str(tmp_path / "o.csv")) == 2
    err = capsys.readouterr().err
    assert "cols.csv" in err and "missing column" in err and "buys" in err
    frame.to_csv(tmp_path / "ok.csv", index=False)  # absent liquidity/market cap stay absent in the forecast
    assert _predict(model, str(tmp_path / "ok.csv"), 5, str(tmp_path / "o.csv")) == 0
    out = pd.read_csv(tmp_path / "o.csv")
    assert out["liquidity"].isna().all() and out["price"].notna().all()
    assert not (tmp_path / "missing.pth").exists()
    assert _predict(str(tmp_path / "missing.pth"), tmp_path / "ok.csv", 5, tmp_path / "o.csv") == 2
