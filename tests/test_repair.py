"""`pumpcast check --repair` never deletes data: on every kind of damaged store it rebuilds the metadata from
the token files or moves what it cannot place to quarantine/, every byte of every token file survives, and
`check` passes afterwards. A transaction journal never renames anything outside the store."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pumpcast.cli import main
from pumpcast.schema import DataError
from pumpcast.simulator import generate_to_store
from pumpcast.store import QUARANTINE, TokenDataManager


def _digests(root: Path) -> dict[str, str]:
    """Digest -> a path, of every file under root."""
    return {hashlib.sha256(p.read_bytes()).hexdigest(): str(p) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def store(tmp_path) -> Path:
    d = tmp_path / "store"
    generate_to_store(d, num_tokens=3, timesteps=200, seed=1)
    generate_to_store(tmp_path / "other", num_tokens=2, timesteps=150, seed=1)  # same keys, other data
    return d


def _meta(d: Path) -> dict:
    return json.loads((d / "token_metadata.json").read_text())


def _set_meta(d: Path, meta: dict) -> None:
    (d / "token_metadata.json").write_text(json.dumps(meta))


def _journal(d: Path, renames: dict, with_metadata: bool = True) -> None:
    body = {"txid": "abc", "renames": renames}
    if with_metadata:
        body["metadata"] = _meta(d)
    (d / ".transaction.json").write_text(json.dumps(body))


def _drop_token(d: Path) -> None:
    meta = _meta(d)
    del meta["tokens"]["1"]
    _set_meta(d, meta)


DAMAGE = {
    "metadata deleted": lambda d: (d / "token_metadata.json").unlink(),
    "metadata unreadable": lambda d: (d / "token_metadata.json").write_text("{not json"),
    "one token dropped from the metadata": _drop_token,
    "truncated token file": lambda d: (d / "sequences" / "token_1.h5").write_bytes(
        (d / "sequences" / "token_1.h5").read_bytes()[:3000]
    ),
    "orphan staged file": lambda d: shutil.copy(
        d / "sequences" / "token_2.h5", d / "sequences" / ".token_3.h5.0123456789ab.staged"
    ),
    "journal pointing outside": lambda d: _journal(d, {".token_1.h5.0123456789ab.staged": "../../outside/victim.txt"}),
    "damaged journal": lambda d: (d / ".transaction.json").write_text("\x00\x01garbage"),
    "journal without metadata": lambda d: _journal(d, {}, with_metadata=False),
    "sequences folder missing": lambda d: shutil.move(d / "sequences", d.parent / "moved-away"),
    "token file from another write": lambda d: shutil.copy(
        d.parent / "other" / "sequences" / "token_1.h5", d / "sequences" / "token_1.h5"
    ),
    "duplicate of a token under a new id": lambda d: shutil.copy(
        d / "sequences" / "token_0.h5", d / "sequences" / "token_5.h5"
    ),
    "garbage and temporary files": lambda d: [
        (d / "sequences" / "token_7.h5").write_bytes(b"left over"),
        (d / ".token_metadata.json.x1y2.tmp").write_text("{"),
        (d / "sequences" / "notes.txt").write_text("mine"),
    ],
    "split and normalisation that do not fit": lambda d: [
        (d / "split_info.json").write_text(json.dumps({"ranges": {"train": {"9": [0, 50]}}})),
        (d / "normalization_params.npy").write_bytes(b"not numpy"),
    ],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_repair_keeps_every_byte_and_leaves_a_consistent_store(store, tmp_path, capsys, damage):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("precious")
    DAMAGE[damage](store)
    damaged = _digests(store)
    assert main(["check", "--data-dir", str(store), "--repair"]) in (0, 1)
    out = capsys.readouterr().out
    assert "Traceback" not in out
    after = _digests(store)
    if (tmp_path / "moved-away").exists():  # where the damage put the sequences folder
        after.update(_digests(tmp_path / "moved-away"))
    lost = [p for h, p in damaged.items() if h not in after]  # every file of the damaged store, somewhere
    assert lost == [], f"{damage}: repair lost {lost}\n{out}"
    assert (outside / "victim.txt").read_text() == "precious" and len(list(outside.iterdir())) == 1
    assert main(["check", "--data-dir", str(store)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "consistent" in out
    reader = TokenDataManager(store)
    for t in reader.token_ids():  # every listed token reads whole
        assert reader.read(t).features.shape[0] == reader.lengths()[t]


def test_repair_rebuilds_a_lost_metadata_file_exactly(store, capsys):
    meta = _meta(store)
    (store / "token_metadata.json").unlink()
    assert TokenDataManager(store).token_ids() == []  # readers see an empty store ...
    with pytest.raises(DataError, match="does not list .*check --repair"):  # ... and a writer would overwrite
        generate_to_store(store, num_tokens=1, timesteps=100, seed=9)
    assert main(["check", "--data-dir", str(store)]) == 1
    assert "not in the metadata" in capsys.readouterr().out
    assert main(["check", "--data-dir", str(store), "--repair"]) == 0
    out = capsys.readouterr().out
    assert out.count("repaired: added the metadata entry") == 3
    assert _meta(store)["tokens"] == meta["tokens"] and _meta(store)["index"] == meta["index"]
    assert not (store / QUARANTINE).exists()  # nothing needed moving


def test_unreadable_token_is_quarantined_not_deleted(store, capsys):
    path = store / "sequences" / "token_1.h5"
    data = path.read_bytes()[:3000]
    path.write_bytes(data)
    assert main(["check", "--data-dir", str(store), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "moved" in out and "unreadable" in out and "quarantine" in out
    [kept] = (store / QUARANTINE).glob("*/sequences/token_1.h5")
    assert kept.read_bytes() == data
    assert TokenDataManager(store).token_ids() == [0, 2]
    assert main(["check", "--data-dir", str(store)]) == 0
    assert "2 file(s) in" in capsys.readouterr().out  # the file and the old metadata, said until the user looks


def test_a_journal_never_renames_outside_the_store(store, tmp_path):
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    staged = ".token_1.h5.0123456789ab.staged"
    shutil.copy(store / "sequences" / "token_1.h5", store / "sequences" / staged)
    for target in ("../../outside/victim.txt", str(victim), "token_1.h5/../../x", "token_2.h5"):
        _journal(store, {staged: target})
        reader = TokenDataManager(store)
        with pytest.raises(DataError, match="refused, nothing renamed"):
            reader.read(0)
        with pytest.raises(DataError, match="refused, nothing renamed"):  # a writer does not follow it either
            generate_to_store(store, num_tokens=1, timesteps=100, seed=1)
        assert victim.read_text() == "precious"
        assert (store / "sequences" / staged).exists() and (store / "sequences" / "token_1.h5").exists()
    assert reader.check().problems and "not a staged and a token file" in reader.check().problems[0]


def test_repair_of_a_stale_entry_reads_the_file(store, tmp_path):
    shutil.copy(tmp_path / "other" / "sequences" / "token_1.h5", store / "sequences" / "token_1.h5")
    reader = TokenDataManager(store)
    with pytest.raises(DataError, match="pumpcast check"):
        reader.read(1)
    report = reader.check(repair=True)
    assert report.problems == [] and any("rebuilt the metadata entry of token 1" in r for r in report.repairs)
    np.testing.assert_array_equal(reader.read(1).features, TokenDataManager(tmp_path / "other").read(1).features)
    [old] = (store / QUARANTINE).glob("*/token_metadata.json")  # the metadata before the repair is kept
    assert json.loads(old.read_text())["tokens"]["1"]["steps"] == 200
