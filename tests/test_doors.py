"""Every door refuses bad input the same way: one line on stderr that names the flag, file or field, the problem
and the fix, a non-zero exit, and nothing written. Each case below was a traceback, a silent wrong result or
an exit 0 before (issue 11)."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_MODEL

from pumpcast.cli import main
from pumpcast.ingest import candles_to_bars, trades_to_bars
from pumpcast.store import TokenDataManager


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny trained model with a pump head, its store, and one exported history."""
    w = tmp_path_factory.mktemp("doors")
    flags = [*TINY_MODEL, "--num-tokens", "4", "--timesteps", "900", "--window-stride", "8", "--epochs", "1"]
    where = ["--data-dir", str(w / "data"), "--checkpoint-dir", str(w / "ck"), "--save-model", str(w / "m.pth")]
    assert main(["train", *flags, *where, "--no-mlflow", "--split-strategy", "token"]) == 0
    assert main(["export", "--data-dir", str(w / "data"), "--token-id", "0", "--output", str(w / "h.csv")]) == 0
    return w


def _refused(capsys, argv: list[str], *expected: str) -> str:
    code = main(["-q", *argv])  # no status lines: stderr holds the refusal alone
    err = capsys.readouterr().err
    assert code != 0, f"accepted: {argv}"
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one line: {err!r}"
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    return err


# ------------------------------------------------------------------------------------------------ flags
FLAG_CASES = [
    (["train", "--epochs", "-2"], "--epochs must be in [1, inf)"),
    (["train", "--epochs", "0"], "--epochs must be in [1, inf)"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--dropout", "2"], "--dropout must be in [0, 1)"),
    (["train", "--learning-rate", "nan"], "--learning-rate must be a finite number"),
    (["train", "--devices", "0"], "--devices must be auto or a count"),
    (["train", "--strategy", "bogus"], "--strategy"),
    (["train", "--accelerator", "tpu"], "--accelerator"),
    (["train", "--max-false-alarms-per-day", "-1"], "--max-false-alarms-per-day"),
    (["train", "--window-stride", "0"], "--window-stride"),
    (["train", "--num-tokens", "0"], "--num-tokens"),
    (["train", "--train-token-ratio", "0"], "--train-token-ratio"),
    (["train", "--embed-size", "30", "--nhead", "4"], "--embed-size 30 must be divisible by --nhead 4"),
    (["train", "--epoch", "1"], "unrecognized arguments: --epoch"),
    (["train", "--resume", "--init-from", "m.pth"], "--resume and --init-from"),
    (["generate", "--seed", "-1"], "--seed must be in [0, inf)"),
    (["generate", "--interval", "soon"], "--interval 'soon': not a duration"),
    (["test", "--rollout-damping", "nan"], "--rollout-damping"),
    (["test", "--rollout-damping", "-1"], "--rollout-damping must be in [0, 1]"),
    (["test", "--rollout-damping", "5"], "--rollout-damping must be in [0, 1]"),
    (["test", "--forecast", "2000000000"], "--forecast must be in [1, 100000]"),
    (["test", "--test-token-range", "5-1"], "--test-token-range"),
    (["predict", "--load-model", "m", "--input", "h", "--output", "o", "--steps", "0"], "--steps: 0 is outside"),
    (["predict", "--load-model", "m", "--input", "h", "--output", "o", "--steps", "2000000000"], "outside [1, 100000]"),
    (["detect", "--load-model", "m", "--input", "h", "--threshold", "nan"], "not a probability"),
    (["evaluate", "--load-model", "m", "--every", "0"], "--every"),
    (["tune", "--n-trials", "0"], "--n-trials"),
    (["tune", "--workers", "0"], "--workers"),
]


@pytest.mark.parametrize("argv,expected", FLAG_CASES, ids=[" ".join(a) for a, _ in FLAG_CASES])
def test_bad_flags(capsys, argv, expected):
    _refused(capsys, [*argv, "--no-mlflow"] if argv[0] in ("train", "test") else argv, expected)
    assert not list(Path.cwd().iterdir())  # nothing was written (the test runs in an empty folder)


@pytest.mark.parametrize(
    "content,expected",
    [
        ("[1, 2]", "one object of settings"),
        ('{"epochs": null}', "epochs must be int, got None"),
        ('{"epochs": 3, "bogus": 1}', "unknown key 'bogus'"),
        ('{"model": {"dropout": "high"}}', "dropout must be float"),
        ('{"model": 3}', "unknown key 'model'"),
    ],
)
def test_bad_config_files(capsys, tmp_path, content, expected):
    (tmp_path / "c.json").write_text(content)
    _refused(capsys, ["train", "--config", str(tmp_path / "c.json"), "--data-dir", str(tmp_path / "d")], expected)
    assert not (tmp_path / "d").exists()


def test_data_dir_that_is_a_file_and_bad_storage(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    _refused(capsys, ["generate", "--data-dir", str(tmp_path / "f")], "is a file, not a store directory")
    _refused(capsys, ["tune", "--storage", "bogus://nowhere", "--data-dir", str(tmp_path / "d")], "storage bogus://")


# ------------------------------------------------------------------------------------------------ input files
def _candles(ts) -> pd.DataFrame:
    n = len(ts)
    return pd.DataFrame({"timestamp": ts, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": np.ones(n)})


def test_bad_timestamps_are_refused_before_anything_is_allocated(capsys, tmp_path):
    ms = 1_700_000_000_000 + 60_000 * np.arange(10)
    mixed = np.concatenate([ms[:5] // 1000, ms[5:]])  # part seconds, part milliseconds
    _candles(mixed).to_csv(tmp_path / "mixed.csv", index=False)
    d = ["--data-dir", str(tmp_path / "s")]
    _refused(capsys, ["ingest", "candles", str(tmp_path / "mixed.csv"), *d], "mixes time units", "seconds")
    far = ms.copy()
    far[-1] = 4_200_000_000_000  # one timestamp in 2103
    _candles(far).to_csv(tmp_path / "far.csv", index=False)
    _refused(capsys, ["ingest", "candles", str(tmp_path / "far.csv"), *d], "row 11", "outside 2000-2099")
    wide = ms.copy()
    wide[-1] = 4_000_000_000_000  # 2096: 38 million one-minute bars
    _candles(wide).to_csv(tmp_path / "wide.csv", index=False)
    _refused(capsys, ["ingest", "candles", str(tmp_path / "wide.csv"), *d], "split the file")
    text = _candles(ms).astype({"timestamp": str})
    text.loc[3, "timestamp"] = "yesterday"
    text.to_csv(tmp_path / "text.csv", index=False)
    _refused(capsys, ["ingest", "candles", str(tmp_path / "text.csv"), *d], "neither Unix time nor ISO-8601")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("unit,scale", [("s", 1e-3), ("us", 1e3), ("ns", 1e6)])
def test_every_time_unit_gives_the_same_bars(tmp_path, unit, scale):
    ms = 1_700_000_000_000 + 60_000 * np.arange(30)
    _candles(ms).to_csv(tmp_path / "ms.csv", index=False)
    _candles((ms * scale).astype(np.int64)).to_csv(tmp_path / f"{unit}.csv", index=False)
    [a], [b] = candles_to_bars(tmp_path / "ms.csv"), candles_to_bars(tmp_path / f"{unit}.csv")
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    np.testing.assert_array_equal(a.features, b.features)


def test_overflowing_trade_is_refused_with_its_row(capsys, tmp_path):
    trades = pd.DataFrame(
        {
            "timestamp": 1_700_000_000_000 + 1000 * np.arange(4),
            "side": "buy",
            "price": [1.0, 1e308, 1.0, 1.0],
            "amount": [1.0, 10.0, 1.0, 1.0],
        }
    )
    trades.to_csv(tmp_path / "t.csv", index=False)
    _refused(capsys, ["ingest", "trades", str(tmp_path / "t.csv"), "--data-dir", str(tmp_path / "s")], "row 3")
    with pytest.raises(Exception, match="overflows"):
        trades_to_bars(tmp_path / "t.csv")


# ------------------------------------------------------------------------------------------------ histories
def _history_case(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    f = frame.copy()
    if name == "shuffled":
        return f.sample(frac=1.0, random_state=0)
    if name == "duplicated":
        return pd.concat([f.iloc[:100], f.iloc[99:]])
    if name == "gap":
        return f.drop(index=range(200, 205))
    if name == "negative volume":
        f.loc[150, "volume"] = -3.0
    if name == "text in buys":
        f["buys"] = f["buys"].astype(object)
        f.loc[120, "buys"] = "many"
    if name == "zero price":
        f.loc[10, "price"] = 0.0
    return f


HISTORY_CASES = {
    "shuffled": "earlier than the row before it",
    "duplicated": "repeats the time before it",
    "gap": "not evenly spaced",
    "negative volume": "'volume' row 152 is negative",
    "text in buys": "'buys' row 122 is 'many', not a number",
    "zero price": "'price' row 12 is not a positive number",
}


@pytest.mark.parametrize("case", HISTORY_CASES)
@pytest.mark.parametrize("command", ["predict", "detect"])
def test_bad_histories(capsys, work, tmp_path, case, command):
    bad = tmp_path / "bad.csv"
    _history_case(pd.read_csv(work / "h.csv"), case).to_csv(bad, index=False)
    argv = [command, "--load-model", str(work / "m.pth"), "--input", str(bad), "--output", str(tmp_path / "o.csv")]
    _refused(capsys, argv + (["--steps", "5"] if command == "predict" else []), "bad.csv", HISTORY_CASES[case])
    assert not (tmp_path / "o.csv").exists()


def test_short_history_and_output_that_is_a_folder(capsys, work, tmp_path):
    pd.read_csv(work / "h.csv").iloc[:20].to_csv(tmp_path / "short.csv", index=False)
    model = ["--load-model", str(work / "m.pth")]
    _refused(capsys, ["detect", *model, "--input", str(tmp_path / "short.csv")], "has 20 bars", "seq_length=64")
    (tmp_path / "folder").mkdir()
    argv = ["predict", *model, "--input", str(work / "h.csv"), "--steps", "3", "--output", str(tmp_path / "folder")]
    _refused(capsys, argv, "is a directory")


# ------------------------------------------------------------------------------------------------ model files
def _bad_model(work, tmp_path, case: str):
    payload = torch.load(work / "m.pth", weights_only=True)
    if case == "text file":
        (tmp_path / "bad.pth").write_text("this is not a model\n")
        return tmp_path / "bad.pth"
    if case == "NaN weights":
        key = next(iter(payload["state_dict"]))
        payload["state_dict"][key][...] = float("nan")
    elif case == "zero scale":
        payload["normalization"]["scale"][0][0] = 0.0
    elif case == "no config":
        del payload["model_config"]
    elif case == "weights do not fit":
        payload["model_config"]["embed_size"] = 32
    elif case == "config of the wrong type":
        payload["model_config"]["seq_len"] = "long"
    elif case == "damaged calibration":
        payload["pump"]["calibration"] = "x"
    torch.save(payload, tmp_path / "bad.pth")
    return tmp_path / "bad.pth"


MODEL_CASES = {
    "text file": "unreadable model file",
    "NaN weights": "NaN or infinite",
    "zero scale": "positive scales",
    "no config": "damaged model file",
    "weights do not fit": "damaged model file",
    "config of the wrong type": "seq_len must be int",
    "damaged calibration": "damaged pump calibration",
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_bad_model_files(capsys, work, tmp_path, case):
    path = _bad_model(work, tmp_path, case)
    argv = ["predict", "--load-model", str(path), "--input", str(work / "h.csv"), "--steps", "3"]
    _refused(capsys, [*argv, "--output", str(tmp_path / "o.csv")], "bad.pth", MODEL_CASES[case])


# ------------------------------------------------------------------------------------------------ stores
STORE_CASES = {
    "newer schema": "newer pumpcast",
    "metadata is a list": "must be a JSON object",
    "steps is text": "steps 'abc' is not a positive integer",
    "token file shorter than the metadata says": "the metadata says 900",
}


def _bad_store(work, tmp_path, case: str):
    d = tmp_path / "store"
    shutil.copytree(work / "data", d)
    meta_path = d / "token_metadata.json"
    meta = json.loads(meta_path.read_text())
    if case == "newer schema":
        meta["schema_version"] = 99
    elif case == "metadata is a list":
        meta = [meta]
    elif case == "steps is text":
        meta["tokens"]["0"]["steps"] = "abc"
    meta_path.write_text(json.dumps(meta))
    if case == "token file shorter than the metadata says":
        for path in (d / "sequences").glob("token_*.h5"):
            with h5py.File(path, "a") as f:
                for name in ("features", "mask", "timestamps", "extras", "extras_mask"):
                    data = f[name][:500]
                    del f[name]
                    f.create_dataset(name, data=data)
    return d


@pytest.mark.parametrize("case", STORE_CASES)
@pytest.mark.parametrize("command", ["export", "evaluate", "train"])
def test_bad_stores_on_every_read_path(capsys, work, tmp_path, case, command):
    d = _bad_store(work, tmp_path, case)
    argv = {
        "export": ["export", "--token-id", "0", "--output", str(tmp_path / "o.csv")],
        "evaluate": [
            "evaluate",
            "--load-model",
            str(work / "m.pth"),
            "--output-dir",
            str(tmp_path / "r"),
            "--no-mlflow",
        ],
        "train": ["train", *TINY_MODEL, "--epochs", "1", "--no-mlflow", "--checkpoint-dir", str(tmp_path / "ck")],
    }[command]
    _refused(
        capsys,
        [*argv, "--data-dir", str(d), *(["--save-model", str(tmp_path / "m.pth")] if command == "train" else [])],
        STORE_CASES[case],
    )
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "m.pth").exists()


def test_split_past_a_token_and_empty_test_split(capsys, work, tmp_path):
    split = json.loads((work / "data" / "split_info.json").read_text())
    split["ranges"]["test"] = {"0": [0, 5000]}
    (tmp_path / "past.json").write_text(json.dumps(split))
    base = ["evaluate", "--load-model", str(work / "m.pth"), "--data-dir", str(work / "data"), "--no-mlflow"]
    _refused(capsys, [*base, "--split-file", str(tmp_path / "past.json")], "range 0-5000 of token 0 does not fit")
    split["ranges"]["test"] = {}
    (tmp_path / "empty.json").write_text(json.dumps(split))
    _refused(capsys, [*base, "--split-file", str(tmp_path / "empty.json")], "has no test tokens")


def test_reads_of_a_consistent_store_still_work(work):
    store = TokenDataManager(work / "data")
    assert store.read(0).features.shape == (900, 6)  # the checks cost nothing to a good store


def test_a_missing_test_token_is_refused_before_a_tracking_run_starts(capsys, work, tmp_path, monkeypatch):
    """Test mode on a token the store lacks: one line naming the ids it holds, and no MLflow store or run."""
    monkeypatch.chdir(tmp_path)  # the default tracking store would be ./mlflow.db
    data = tmp_path / "data"
    shutil.copytree(work / "data", data)
    argv = ["test", "--load-model", str(work / "m.pth"), "--data-dir", str(data), "--test-token-range", "0-5"]
    _refused(capsys, argv, "token(s) [4, 5] not in the store", "it holds ids [0, 1, 2, 3]")
    assert not list(tmp_path.glob("mlflow*")) and not (tmp_path / "mlruns").exists()


def test_more_tokens_asked_of_a_synthetic_store_adds_the_missing_ones(tmp_path):
    """--num-tokens 10 after a 5-token store (the seed's second line after the quickstart): tokens 5-9 are added,
    tokens 0-4 kept bit for bit; the default size asks nothing of a store that has data."""
    from pumpcast.config import DataConfig
    from pumpcast.simulator import ensure_store

    store = ensure_store(DataConfig(data_dir=str(tmp_path / "d"), num_tokens=5, timesteps=300))
    before = {t: store.read(t).features for t in store.token_ids()}
    store = ensure_store(DataConfig(data_dir=str(tmp_path / "d"), num_tokens=10, timesteps=400))
    assert store.lengths() == {**{t: 300 for t in range(5)}, **{t: 400 for t in range(5, 10)}}
    for t, feats in before.items():
        np.testing.assert_array_equal(store.read(t).features, feats)
    assert len(ensure_store(DataConfig(data_dir=str(tmp_path / "d")))) == 10
