import json

import h5py
import numpy as np
import pytest

from pumpcast.schema import SCHEMA_VERSION, Event, TokenSeries
from pumpcast.splits import SPLITS, Split, make_split
from pumpcast.store import TokenDataManager
from pumpcast.windows import Normalizer, WindowDataset, relative, to_base


def _series(key, n=50, seed=0):
    rng = np.random.default_rng(seed)
    f = np.abs(rng.normal(1, 0.1, (n, 6))) + 0.1
    f[:, 2] = np.nan  # liquidity absent
    return TokenSeries(
        key, key, "test", 60_000, 1_700_000_000_000 + 60_000 * np.arange(n), f, [Event("news", 3, 3, 9, 0.5)]
    )


def test_store_round_trip_layout_and_attributes(tmp_path):
    store = TokenDataManager(tmp_path)
    ids = store.write([_series("a"), _series("b", 70, 1)])
    assert ids == [0, 1]
    assert (tmp_path / "sequences" / "token_0.h5").is_file()
    assert (tmp_path / "token_metadata.json").is_file()
    back = store.read(1)
    orig = _series("b", 70, 1)
    np.testing.assert_array_equal(back.features, orig.features)
    np.testing.assert_array_equal(back.timestamps, orig.timestamps)
    assert back.events == orig.events and back.key == "b"
    with h5py.File(tmp_path / "sequences" / "token_1.h5") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert f["features"].chunks is not None and f["features"].compression == "gzip"
        assert not f["mask"][:, 2].any() and f["mask"][:, 0].all()
        assert np.isnan(f["features"][:, 2]).all()  # absent is NaN + mask, not zero
    meta = json.loads((tmp_path / "token_metadata.json").read_text())
    assert meta["index"] == {"a": 0, "b": 1}
    assert meta["tokens"]["1"]["available"]["liquidity"] is False
    assert meta["tokens"]["1"]["first_time"].startswith("2023-11-14")


def test_normalization_and_split_files_load_without_pickle(tmp_path):
    store = TokenDataManager(tmp_path)
    norm = Normalizer(np.arange(6.0), np.ones(6) * 2)
    store.save_normalization(norm.to_array())
    back = Normalizer.from_array(np.load(tmp_path / "normalization_params.npy", allow_pickle=False))
    np.testing.assert_array_equal(back.center, norm.center)
    split = make_split({0: 100, 1: 80}, "time", seed=3)
    store.save_split(split.to_json())
    assert Split.from_json(store.load_split()) == split


def test_export_writes_empty_cells_for_absent_features(tmp_path):
    store = TokenDataManager(tmp_path)
    store.write([_series("a")])
    store.export_csv(0, tmp_path / "a.csv", tmp_path / "ev.csv")
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert lines[0] == "time,price,volume,liquidity,buys,sells,market_cap"
    assert lines[1].split(",")[3] == "" and lines[1].split(",")[1] != ""
    assert "news,3,3,9" in (tmp_path / "ev.csv").read_text()


def _targets(split: Split, lengths, seq_len=20, horizon=5):
    """(token, step) of every target of every window in each split."""
    series = {t: np.ones((n, 6)) for t, n in lengths.items()}
    out = {}
    for name in SPLITS:
        ds = WindowDataset(series, split.ranges[name], seq_len, horizon)
        cells = set()
        if len(ds):
            k, start = ds.locate(np.arange(len(ds)))
            for tok, s in zip(ds.token_ids[k], start, strict=True):
                cells.update((int(tok), int(s) + seq_len + h) for h in range(horizon))
        out[name] = cells
    return out


@pytest.mark.parametrize("strategy", ["time", "token", "mixed"])
def test_no_target_step_serves_two_splits(strategy):
    lengths = {t: 200 + 10 * t for t in range(10)}
    split = make_split(lengths, strategy, seed=4)
    cells = _targets(split, lengths)
    assert all(cells[s] for s in SPLITS), "every split gets windows"
    assert not cells["train"] & cells["val"]
    assert not cells["train"] & cells["test"]
    assert not cells["val"] & cells["test"]
    if strategy == "token":
        assert not set(split.tokens("train")) & set(split.tokens("test"))
        assert not set(split.tokens("train")) & set(split.tokens("val"))
    if strategy == "mixed":
        assert not set(split.tokens("train")) & set(split.tokens("val"))
        for t in lengths:  # test comes after everything else in time
            assert split.ranges["test"][t][0] >= max(split.ranges[s].get(t, (0, 0))[1] for s in ("train", "val"))
    if strategy == "time":
        r = split.ranges
        assert r["train"][0] == (0, 80) and r["val"][0] == (80, 120) and r["test"][0] == (120, 200)


def test_split_is_reproducible_and_seed_dependent():
    lengths = {t: 100 for t in range(20)}
    assert make_split(lengths, "token", seed=1) == make_split(lengths, "token", seed=1)
    assert make_split(lengths, "token", seed=1).tokens("train") != make_split(lengths, "token", seed=2).tokens("train")


def test_windows_are_lazy_and_correct():
    rng = np.random.default_rng(0)
    n_tokens, T, L, H = 20, 3000, 500, 16
    series = {t: np.abs(rng.normal(1, 0.2, (T, 6))) + 0.01 for t in range(n_tokens)}
    ds = WindowDataset(series, {t: (0, T) for t in series}, L, H)
    assert len(ds) == n_tokens * (T - L - H + 1)
    # the dataset holds the data once, not one copy per window
    assert ds.flat.nbytes == n_tokens * T * 6 * 4
    assert ds.flat.nbytes < len(ds) * (L + H) * 6 * 4 / 100
    i = 3 * (T - L - H + 1) + 123  # token 3, window starting at step 123
    batch = ds.__getitems__([i])
    window = series[3][123 : 123 + L + H][None]
    rel, ref = relative(to_base(window), L)
    assert np.array_equal(ds.normalizer.center, np.zeros((2, 6)))  # identity until fitted
    np.testing.assert_allclose(batch["x"][0].numpy(), rel[0, :L], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batch["y"][0].numpy(), rel[0, L:], rtol=1e-4, atol=1e-5)
    assert int(batch["token"][0]) == 3 and int(batch["start"][0]) == 123
    # inverting the normalisation gives back the raw future
    back = ds.normalizer.denormalize(batch["y"].numpy(), batch["ref"].numpy())
    np.testing.assert_allclose(back[0], window[0, L:], rtol=1e-4)


def test_targets_get_their_own_scale_and_prices_stay_centred_on_no_change():
    rng = np.random.default_rng(2)
    f = np.exp(np.cumsum(rng.normal(0, 0.01, (2000, 6)), axis=0))
    norm = Normalizer.fit(WindowDataset({0: f}, {0: (0, 2000)}, 200, 8))
    assert norm.center[0, 0] == norm.center[1, 0] == 0.0
    assert norm.scale[1, 0] < norm.scale[0, 0] / 3  # 8 steps ahead vary far less than 200 steps back
    back = Normalizer.from_array(norm.to_array())
    np.testing.assert_array_equal(back.scale, norm.scale)


def test_normalization_is_fitted_on_training_windows_only():
    rng = np.random.default_rng(0)
    series = {0: np.abs(rng.normal(1, 0.01, (400, 6))) + 0.01}
    series[0][200:] *= np.exp(rng.normal(0, 0.5, (200, 6)))  # wild test period
    train = WindowDataset(series, {0: (0, 200)}, 50, 5)
    both = WindowDataset(series, {0: (0, 400)}, 50, 5)
    assert Normalizer.fit(train).scale[0, 0] < Normalizer.fit(both).scale[0, 0] / 5


def test_scale_free_across_price_levels():
    rng = np.random.default_rng(1)
    f = np.abs(rng.normal(1, 0.05, (300, 6))) + 0.01
    a = WindowDataset({0: f}, {0: (0, 300)}, 50, 5).__getitems__([10])
    g = f.copy()
    g[:, [0, 2, 5]] *= 1e-9
    g[:, 1] *= 1e6
    b = WindowDataset({0: g}, {0: (0, 300)}, 50, 5).__getitems__([10])
    np.testing.assert_allclose(a["x"].numpy(), b["x"].numpy(), atol=2e-5)
