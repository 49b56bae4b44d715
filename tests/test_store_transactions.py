"""Store writes are all-or-nothing: kill -9 at random moments during generate and re-ingest, then the store is
consistent (`pumpcast check`) and equals either the old or the new store, and no worker keeps writing."""

import gzip
import hashlib
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pumpcast.cli import main
from pumpcast.ingest import ingest_files
from pumpcast.simulator import generate_to_store
from pumpcast.store import STAGED, TokenDataManager


def _content(store_dir: Path) -> dict[int, str]:
    """Token id -> digest of its steps, features and timestamps, as a reader sees them."""
    store = TokenDataManager(store_dir)
    out = {}
    for t in store.token_ids():
        tok = store.read(t)
        out[t] = hashlib.sha1(tok.features.tobytes() + tok.timestamps.tobytes()).hexdigest()
    return out


def _kill_loop(tries: int, cmd: list[str], store_dir: Path, old: dict, new: dict, restore, seconds: float) -> dict:
    """Run cmd, kill -9 it after a random delay, check the store; returns how often it was old / new."""
    rng = random.Random(0)
    seen = {"old": 0, "new": 0}
    for _ in range(tries):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, seconds))
        proc.kill()  # SIGKILL to the writer only: its workers must die with it
        proc.wait()
        time.sleep(0.3)
        problems, _ = TokenDataManager(store_dir).check()
        assert problems == [], problems
        content = _content(store_dir)
        assert content in (old, new), "the store is neither the old nor the new one"
        state = "old" if content == old else "new"
        seen[state] += 1
        time.sleep(0.7)  # a surviving worker would stage files after the check removed the last ones
        assert not list((store_dir / "sequences").glob(f".*{STAGED}")), "a worker kept writing after its parent died"
        if state == "new":
            restore()
    return seen


def test_kill_9_during_generate_leaves_the_old_or_the_new_store(tmp_path, capsys):
    store_dir, ref = tmp_path / "s", tmp_path / "ref"
    generate_to_store(ref, 520, 50, seed=0, workers=2)  # two blocks: two worker processes
    new = _content(ref)
    generate_to_store(store_dir, 520, 30, seed=0, workers=2)
    old = _content(store_dir)
    cmd = [sys.executable, "-m", "pumpcast.cli", "generate", "--num-tokens", "520", "--timesteps", "50"]
    seen = _kill_loop(
        10,
        [*cmd, "--data-dir", str(store_dir)],
        store_dir,
        old,
        new,
        lambda: generate_to_store(store_dir, 520, 30, seed=0, workers=2),
        seconds=5.0,
    )
    assert seen["old"] >= 1  # some kills landed before the commit
    print(f"generate, 10 kills: old {seen['old']}, new {seen['new']}")
    assert main(["check", "--data-dir", str(store_dir)]) == 0
    assert "consistent" in capsys.readouterr().out


def test_kill_9_during_reingest_leaves_the_old_or_the_new_store(tmp_path, binance_dir):
    files = sorted(binance_dir.glob("*.csv.gz"))[:4]
    halves = tmp_path / "halves"
    halves.mkdir()
    for f in files:  # the first half of each trade file: same pair and start, so the same store keys
        lines = gzip.open(f, "rt").read().splitlines()
        (halves / f.name).write_bytes(gzip.compress("\n".join(lines[: len(lines) // 2]).encode()))
    store_dir, ref = tmp_path / "s", tmp_path / "ref"
    ingest_files("trades", files, ref)
    new = _content(ref)
    ingest_files("trades", sorted(halves.iterdir()), store_dir)
    old = _content(store_dir)
    assert old.keys() == new.keys() and old != new
    cmd = [sys.executable, "-m", "pumpcast.cli", "ingest", "trades", *map(str, files), "--data-dir", str(store_dir)]
    seen = _kill_loop(
        10,
        cmd,
        store_dir,
        old,
        new,
        lambda: ingest_files("trades", sorted(halves.iterdir()), store_dir),
        seconds=3.5,
    )
    assert seen["old"] >= 1
    print(f"re-ingest, 10 kills: old {seen['old']}, new {seen['new']}")


def test_check_finds_disagreements_and_repair_removes_orphans(tmp_path, capsys):
    d = tmp_path / "s"
    generate_to_store(d, 3, 200, seed=1)
    store = TokenDataManager(d)
    (d / "sequences" / "token_7.h5").write_bytes(b"left over")
    assert main(["check", "--data-dir", str(d)]) == 0  # orphans are not inconsistencies
    assert "orphan:" in capsys.readouterr().out
    assert main(["check", "--data-dir", str(d), "--repair"]) == 0
    assert not (d / "sequences" / "token_7.h5").exists()
    generate_to_store(tmp_path / "other", 3, 150, seed=1)  # a file from another store, of another length
    shutil.copy(tmp_path / "other" / "sequences" / "token_1.h5", d / "sequences" / "token_1.h5")
    assert main(["check", "--data-dir", str(d)]) == 1
    out = capsys.readouterr().out
    assert "problem:" in out and "token_1.h5" in out
    with pytest.raises(Exception, match="pumpcast check"):
        store.read(1)
