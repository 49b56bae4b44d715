"""Every bad input gets a one-line error naming the file and problem, a non-zero exit, and an untouched store."""

import gzip
import hashlib
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest

from pumpcast.cli import main
from pumpcast.ingest import candles_to_bars, ingest_files, trades_to_bars
from pumpcast.schema import PumpcastError
from pumpcast.simulator import generate_to_store
from pumpcast.store import TokenDataManager


def _trades(tmp_path, name="t.csv", **overrides):
    df = pd.DataFrame(
        {
            "timestamp": [1_700_000_000_000, 1_700_000_030_000, 1_700_000_090_000],
            "side": ["buy", "sell", "buy"],
            "price": [1.0, 1.1, 1.2],
            "amount": [1.0, 2.0, 3.0],
        }
    )
    for k, v in overrides.items():
        df[k] = v
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def _snapshot(d):
    return {p.relative_to(d): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def store_dir(tmp_path):
    d = tmp_path / "store"
    generate_to_store(d, num_tokens=2, timesteps=300, seed=1)
    return d


def _fails_cleanly(capsys, store_dir, argv, *needles):
    before = _snapshot(store_dir)
    assert main(["-q", *argv]) == 2  # no status lines: stderr holds the refusal alone
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    for n in needles:
        assert n in err, err
    assert _snapshot(store_dir) == before  # nothing stored was lost or half-written
    return err


def test_missing_file(capsys, store_dir, tmp_path):
    _fails_cleanly(
        capsys,
        store_dir,
        ["ingest", "trades", str(tmp_path / "nope.csv"), "--data-dir", str(store_dir)],
        "nope.csv",
        "no such file",
    )


def test_unreadable_file(capsys, store_dir, tmp_path):
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(b"\x00\x01not gzip at all")
    _fails_cleanly(
        capsys, store_dir, ["ingest", "trades", str(bad), "--data-dir", str(store_dir)], "bad.csv.gz", "cannot be read"
    )


def test_missing_and_misnamed_columns(capsys, store_dir, tmp_path):
    path = tmp_path / "x.csv"
    pd.DataFrame({"when": [1_700_000_000_000], "px": [1.0], "amount": [1.0]}).to_csv(path, index=False)
    _fails_cleanly(
        capsys,
        store_dir,
        ["ingest", "trades", str(path), "--data-dir", str(store_dir)],
        "x.csv",
        "missing column",
        "--timestamp-col",
    )
    _fails_cleanly(
        capsys,
        store_dir,
        [
            "ingest",
            "trades",
            str(path),
            "--timestamp-col",
            "when",
            "--price-col",
            "price_usd",
            "--data-dir",
            str(store_dir),
        ],
        "'price_usd'",
        "not found",
    )
    # mapped correctly, the same file ingests
    assert (
        main(
            [
                "ingest",
                "trades",
                str(path),
                "--timestamp-col",
                "when",
                "--price-col",
                "px",
                "--data-dir",
                str(tmp_path / "other"),
            ]
        )
        == 0
    )


@pytest.mark.parametrize("bad", ["abc", -1.0, 0.0, float("nan")])
def test_bad_prices(capsys, store_dir, tmp_path, bad):
    path = _trades(tmp_path, price=[1.0, bad, 1.2])
    _fails_cleanly(
        capsys,
        store_dir,
        ["ingest", "trades", str(path), "--data-dir", str(store_dir)],
        "t.csv",
        "'price' row 3",
        "positive",
    )


def test_bad_file_among_good_ones_stores_nothing(capsys, store_dir, tmp_path, binance_dir):
    bad = _trades(tmp_path, price=[1.0, -2.0, 1.0])
    _fails_cleanly(
        capsys,
        store_dir,
        ["ingest", "trades", str(binance_dir / "MTH_2021-07-27_17.00.csv.gz"), str(bad), "--data-dir", str(store_dir)],
        "t.csv",
    )


def test_unsorted_trades_are_sorted_and_said(tmp_path, caplog):
    path = _trades(tmp_path, timestamp=[1_700_000_090_000, 1_700_000_000_000, 1_700_000_030_000])
    [bars] = trades_to_bars(path)
    assert "sorted" in caplog.text
    sorted_path = _trades(
        tmp_path,
        "s.csv",
        timestamp=[1_700_000_000_000, 1_700_000_030_000, 1_700_000_090_000],
        price=[1.1, 1.2, 1.0],
        side=["sell", "buy", "buy"],
        amount=[2.0, 3.0, 1.0],
    )
    [ref] = trades_to_bars(sorted_path)
    np.testing.assert_array_equal(bars.features, ref.features)


def test_duplicated_candles(tmp_path, caplog):
    rows = {
        "timestamp": [1_700_000_040_000 + d for d in (0, 60_000, 60_000, 120_000)],
        "close": [1.0, 2.0, 2.0, 3.0],
        "volume": [1, 2, 2, 3],
    }
    path = tmp_path / "c.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    [bars] = candles_to_bars(path)  # identical duplicates: dropped, and said
    assert "duplicated" in caplog.text
    np.testing.assert_allclose(bars.features[:, 1], [1, 2, 3])
    rows["close"][2] = 2.5
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(PumpcastError, match="two different candles share"):
        candles_to_bars(path)


def test_too_few_steps_for_a_window(tmp_path, capsys):
    generate_to_store(tmp_path / "data", num_tokens=2, timesteps=200, seed=0)
    argv = [
        "train",
        "--data-dir",
        str(tmp_path / "data"),
        "--seq-length",
        "90",
        "--horizon",
        "16",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--save-model",
        str(tmp_path / "m.pth"),
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "train split has no window of 90 input + 16 target steps" in err and "--seq-length" in err
    assert not (tmp_path / "m.pth").exists()


def test_corrupt_or_truncated_h5(capsys, store_dir):
    path = store_dir / "sequences" / "token_1.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    err = _fails_cleanly(
        capsys,
        store_dir,
        ["export", "--token-id", "1", "--output", str(store_dir.parent / "o.csv"), "--data-dir", str(store_dir)],
        "token_1.h5",
        "corrupt or truncated",
    )
    assert "Traceback" not in err


def test_newer_schema_is_refused(store_dir):
    with h5py.File(store_dir / "sequences" / "token_0.h5", "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(PumpcastError, match="newer pumpcast"):
        TokenDataManager(store_dir).read(0)
    meta = store_dir / "token_metadata.json"
    meta.write_text(meta.read_text().replace('"schema_version": 1', '"schema_version": 99'))
    with pytest.raises(PumpcastError, match="newer pumpcast"):
        TokenDataManager(store_dir).token_ids()


def test_two_writers_are_refused(store_dir, tmp_path, binance_dir):
    ready = tmp_path / "locked"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import filelock, pathlib, time, sys\n"
                f"l = filelock.FileLock({str(store_dir / '.lock')!r}); l.acquire()\n"
                f"pathlib.Path({str(ready)!r}).touch(); time.sleep(30)\n"
            ),
        ]
    )
    try:
        for _ in range(200):
            if ready.exists():
                break
            time.sleep(0.05)
        before = _snapshot(store_dir)
        with pytest.raises(PumpcastError, match="another process is writing"):
            ingest_files("trades", [binance_dir / "MTH_2021-07-27_17.00.csv.gz"], store_dir)
        assert _snapshot(store_dir) == before
    finally:
        holder.kill()
        holder.wait()
    assert ingest_files("trades", [binance_dir / "MTH_2021-07-27_17.00.csv.gz"], store_dir) == [2]


def test_gzip_csv_with_iso_time_and_seconds(tmp_path):
    path = tmp_path / "iso.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("datetime,side,price,quote_volume\n2024-01-01T00:00:05Z,buy,2,4\n2024-01-01T00:01:30Z,sell,3,6\n")
    [bars] = trades_to_bars(path, symbol="XYZ/USD")
    np.testing.assert_allclose(bars.features[:, :2], [[2, 4], [3, 6]])
    assert bars.symbol == "XYZ/USD"


def test_predict_over_a_folder_checks_every_history_before_writing(tmp_path, capsys, store_dir):
    from pumpcast.model import ModelConfig, PumpcastTransformer
    from pumpcast.modelfile import ModelBundle, save_model_file
    from pumpcast.windows import Normalizer

    config = ModelConfig(seq_len=64, horizon=4, patch_len=8, embed_size=16, nhead=2, dim_feedforward=32)
    model = save_model_file(ModelBundle(PumpcastTransformer(config).eval(), Normalizer.identity()), tmp_path / "m.pth")
    folder = tmp_path / "histories"
    folder.mkdir()
    for t in (0, 1):
        TokenDataManager(store_dir).export_csv(t, folder / f"a{t}.csv")
    bad = pd.read_csv(folder / "a1.csv")
    bad.loc[100, "price"] = -1.0
    bad.to_csv(folder / "b_bad.csv", index=False)
    out = tmp_path / "forecasts"
    argv = ["predict", "--load-model", str(model), "--input", str(folder), "--steps", "5", "--output", str(out)]
    _fails_cleanly(capsys, store_dir, argv, "b_bad.csv", "row 102")
    assert not out.exists()  # nothing written: the bad history was found before any forecast
    (folder / "b_bad.csv").unlink()
    assert main(argv) == 0 and len(list(out.iterdir())) == 2


def test_config_files_that_are_not_text_or_nested_too_deep(capsys, store_dir, tmp_path):
    binary = tmp_path / "c.json"
    binary.write_bytes(b'{"data": {"seed": 1}}\xff\xfe')
    _fails_cleanly(capsys, store_dir, ["train", "--config", str(binary)], "c.json", "not UTF-8")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 10_000 + "]" * 10_000)
    _fails_cleanly(capsys, store_dir, ["train", "--config", str(deep)], "deep.json", "nested too deep")


@pytest.mark.parametrize("kind", ["Pump", "pnd", ""])
def test_events_of_an_unknown_type_are_refused(capsys, store_dir, tmp_path, binance_dir, kind):
    events = tmp_path / "events.csv"
    events.write_text(f"symbol,time,type\nMTH,2021-07-27T17:00:00Z,{kind}\n")
    argv = ["ingest", "trades", str(binance_dir / "MTH_2021-07-27_17.00.csv.gz"), "--events", str(events)]
    _fails_cleanly(capsys, store_dir, [*argv, "--data-dir", str(store_dir)], "events.csv", "row 2", "pump_and_dump")


def test_check_of_a_store_without_sequences_or_with_a_journal_without_metadata(capsys, store_dir):
    import shutil

    shutil.move(store_dir / "sequences", store_dir.parent / "elsewhere")
    assert main(["check", "--data-dir", str(store_dir)]) == 1
    out = capsys.readouterr()
    assert "token 0's file is missing" in out.out and "Traceback" not in out.err
    shutil.move(store_dir.parent / "elsewhere", store_dir / "sequences")
    (store_dir / ".transaction.json").write_text('{"txid": "x", "renames": {}}')
    assert main(["check", "--data-dir", str(store_dir)]) == 1
    assert "holds no metadata" in capsys.readouterr().out
