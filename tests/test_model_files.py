"""A model is used only where it fits: bars of its interval, values in its file that make sense, and an ONNX
export that gives what its .pth gives, for every shape and loss."""

import numpy as np
import pandas as pd
import pytest
import torch

from pumpcast.cli import main
from pumpcast.detection import PumpDetector
from pumpcast.evaluation import evaluate_store
from pumpcast.forecasting import Forecaster
from pumpcast.model import ModelConfig, PumpcastTransformer
from pumpcast.modelfile import DataInfo, ModelBundle, load_model_file, save_model_file
from pumpcast.onnxfile import export_onnx
from pumpcast.pumps import PumpCalibration
from pumpcast.schema import DataError, ModelFileError
from pumpcast.simulator import generate_to_store
from pumpcast.splits import make_split
from pumpcast.store import TokenDataManager
from pumpcast.windows import Normalizer


def _bundle(interval_ms: int = 60_000, pump: bool = True, **config) -> ModelBundle:
    torch.manual_seed(0)
    shape = {"seq_len": 64, "horizon": 8, "patch_len": 8, "embed_size": 16, "nhead": 2, "dim_feedforward": 32}
    cfg = ModelConfig(**(shape | config), pump_head=pump)
    return ModelBundle(
        PumpcastTransformer(cfg).eval(),
        Normalizer(np.zeros(6), np.ones(6)),
        data=DataInfo(interval_ms=interval_ms),
        pump=PumpCalibration(horizon=10, threshold=0.5) if pump else None,
    )


def _history(tmp_path, interval: str, bars: int = 200):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "time": pd.date_range("2024-01-01", periods=bars, freq=interval, tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
            "price": np.exp(np.cumsum(rng.normal(0, 0.01, bars))),
            "volume": rng.exponential(1.0, bars),
            "liquidity": np.nan,
            "buys": rng.poisson(3, bars),
            "sells": rng.poisson(3, bars),
            "market_cap": np.nan,
        }
    )
    path = tmp_path / f"history_{interval}.csv"
    frame.to_csv(path, index=False)
    return path


def _one_line_error(capsys, argv, *needles) -> str:
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("interval", ["15s", "1h"])
def test_a_one_minute_model_refuses_other_bars(tmp_path, capsys, interval):
    model = save_model_file(_bundle(), tmp_path / "m.pth")
    history = _history(tmp_path, interval)
    seconds = "15 s" if interval == "15s" else "3600 s"
    for argv in (
        ["detect", "--load-model", str(model), "--input", str(history)],
        ["predict", "--load-model", str(model), "--input", str(history), "--steps", "5", "--output", "f.csv"],
    ):
        _one_line_error(capsys, argv, history.name, f"bars of {seconds}", "m.pth was trained on bars of 60 s")
    assert not (tmp_path / "cwd" / "f.csv").exists()
    ok = _history(tmp_path, "1min")  # the same model on its own bars works
    assert main(["-q", "detect", "--load-model", str(model), "--input", str(ok)]) == 0


def test_evaluate_test_and_backtest_refuse_a_store_of_other_bars(tmp_path, capsys):
    store_dir = tmp_path / "s15"
    generate_to_store(store_dir, num_tokens=6, timesteps=300, seed=0, interval="15s")
    model = save_model_file(_bundle(), tmp_path / "m.pth")
    store = TokenDataManager(store_dir)
    split = make_split(store.lengths(), "token", seed=0)
    with pytest.raises(DataError, match=r"s15: token \d+: bars of 15 s, but .*m.pth was trained on bars of 60 s"):
        evaluate_store(Forecaster.load(model), store, split, tmp_path / "r")
    args = ["--data-dir", str(store_dir), "--load-model", str(model)]
    _one_line_error(capsys, ["backtest", *args, "--output-dir", str(tmp_path / "bt"), "--threads", "1"], "bars of 15 s")
    assert not (tmp_path / "bt").exists()
    store.save_split(split.to_json())
    _one_line_error(capsys, ["test", *args, "--no-mlflow"], "bars of 15 s")
    assert not (tmp_path / "cwd" / "mlflow.db").exists()  # refused before a tracking run started


def _tampered(tmp_path, change) -> str:
    bundle = _bundle(loss="quantile")
    path = save_model_file(bundle, tmp_path / "m.pth")
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return str(path)


def _set(*keys, value):
    def change(payload):
        d = payload
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return change


def _calibrated(value):
    def change(payload):
        h = payload["model_config"]["horizon"]
        payload["forecast_calibration"] = {
            "weight": [value] * h,
            "edges": [0.0, 1.0],
            "shrink": [[1.0] * 3] * h,
            "blend": [[1.0, 0.0]] * h,
            "ridge": {"mean": [0.0], "scale": [1.0], "coef": [[0.0] * h], "intercept": [0.0] * h, "penalty": [1.0] * h},
        }

    return change


BAD_VALUES = {
    "pump.threshold NaN": (_set("pump", "threshold", value=float("nan")), "pump.threshold"),
    "pump.threshold -1": (_set("pump", "threshold", value=-1.0), "pump.threshold"),
    "rollout damping 5": (_set("rollout_damping", value=5.0), "rollout_damping"),
    "negative interval": (_set("data_config", "interval_ms", value=-60_000), "data_config.interval_ms"),
    "pump horizon 0": (_set("pump", "horizon", value=0), "pump.horizon"),
    "baseline threshold NaN": (
        _set("pump", "baselines", value={"volume_z": {"kind": "ZScoreDetector", "signal": "volume", "window": 60,
                                                      "floor": 0.5, "threshold": float("nan")}}),
        "baseline",
    ),
    "forecast calibration NaN": (_calibrated(float("nan")), "forecast_calibration.weight"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_values_in_a_model_file_are_checked_on_load(tmp_path, capsys, case):
    change, field = BAD_VALUES[case]
    path = _tampered(tmp_path, change)
    with pytest.raises(ModelFileError, match=field):
        load_model_file(path)
    history = _history(tmp_path, "1min")
    err = _one_line_error(
        capsys, ["predict", "--load-model", path, "--input", str(history), "--steps", "5", "--output", "f.csv"], "m.pth"
    )
    assert "--" not in err  # names the file's field, not a flag the user never passed


def test_a_sane_forecast_calibration_still_loads(tmp_path):
    assert load_model_file(_tampered(tmp_path, _calibrated(0.5))).forecast_calibration is not None


SHAPES = [
    {"seq_len": 64, "horizon": 16},
    {"seq_len": 64, "horizon": 16, "loss": "quantile"},
    {"seq_len": 96, "horizon": 4, "loss": "quantile", "embedding": "linear"},
    {"seq_len": 64, "horizon": 1, "nhead": 4, "embed_size": 32, "pump": False},
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_every_onnx_export_gives_what_its_pth_gives(tmp_path, capsys, shape):
    shape = dict(shape)
    bundle = _bundle(pump=shape.pop("pump", True), **shape)
    pth = save_model_file(bundle, tmp_path / "m.pth")
    onnx_path = export_onnx(load_model_file(pth), tmp_path / "m.onnx")
    history = _history(tmp_path, "1min", bars=300)
    for model in (pth, onnx_path):
        argv = ["predict", "--load-model", str(model), "--input", str(history), "--steps", "40"]
        assert main(["-q", *argv, "--output", str(tmp_path / f"{model.suffix[1:]}.csv")]) == 0
    a, b = pd.read_csv(tmp_path / "pth.csv"), pd.read_csv(tmp_path / "onnx.csv")
    assert list(a.columns) == list(b.columns)
    numeric = [c for c in a.columns if c != "time"]
    np.testing.assert_allclose(b[numeric].to_numpy(float), a[numeric].to_numpy(float), rtol=1e-4, atol=1e-7)
    if bundle.has_pump_head:
        feats = pd.read_csv(history).drop(columns="time").to_numpy(float)
        np.testing.assert_allclose(
            PumpDetector.load(onnx_path).score(feats), PumpDetector.load(pth).score(feats), rtol=1e-4, atol=1e-6
        )
        live = PumpDetector.load(onnx_path)
        got = [live.update(bar).probability for bar in feats]
        np.testing.assert_allclose(got, PumpDetector.load(onnx_path).score(feats), rtol=1e-6, atol=1e-7)


def test_a_detector_never_moves_the_network_it_shares_with_a_forecaster(tmp_path, monkeypatch):
    """A Forecaster on a GPU shares its network with the PumpDetector that predict builds for the pump
    probability; the detector moving it to the CPU in place broke the forecaster's next call. Tested without a
    GPU: any move of the shared network fails the test."""
    forecaster = Forecaster(_bundle())

    def moved(*args, **kwargs):
        raise AssertionError(f"the shared network was moved: to{args}")

    monkeypatch.setattr(forecaster.bundle.model, "to", moved)
    monkeypatch.setattr(forecaster.bundle.model, "cpu", moved)
    history = pd.read_csv(_history(tmp_path, "1min"))
    [frame] = forecaster.predict([history], steps=5)
    assert "pump_probability" in frame and np.isfinite(frame["pump_probability"]).all()
    [again] = forecaster.predict([history], steps=5)
    pd.testing.assert_frame_equal(frame, again)
