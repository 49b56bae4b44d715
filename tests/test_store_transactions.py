"""Store writes are all-or-nothing: kill -9 during generate and re-ingest, at each point of the transaction
(made to land there by the writer's pause points, so on any machine, fast or slow) and at random moments; then
the store is consistent (`pumpcast check`) and equals the old store (killed before the commit) or the new one
(after it), and no worker outlives its writer."""

import gzip
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pumpcast.cli import main
from pumpcast.ingest import ingest_files
from pumpcast.simulator import generate_to_store
from pumpcast.store import TokenDataManager

#: The writer's pause points in transaction order, and which store a kill there must leave.
POINTS = {"staged": "old", "before-commit": "old", "committed": "new", "applying": "new"}


def _content(store_dir: Path) -> dict[int, str]:
    """Token id -> digest of its steps, features and timestamps, as a reader sees them."""
    store = TokenDataManager(store_dir)
    out = {}
    for t in store.token_ids():
        tok = store.read(t)
        out[t] = hashlib.sha1(tok.features.tobytes() + tok.timestamps.tobytes()).hexdigest()
    return out


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL to the writer only; its workers must die with it (they get SIGKILL when their parent dies)."""
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait()
    _gone, alive = psutil.wait_procs(children, timeout=30)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"workers {[p.pid for p in alive]} outlived their writer"


def _after_kill(store_dir: Path, old: dict, new: dict, expected: str | None, restore) -> str:
    problems = TokenDataManager(store_dir).check().problems
    assert problems == [], problems
    content = _content(store_dir)
    assert content in (old, new), "the store is neither the old nor the new one"
    state = "old" if content == old else "new"
    assert expected in (None, state), f"killed where the store must be {expected}, found the {state} one"
    if state == "new":
        restore()
    return state


def _kill_everywhere(cmd: list[str], store_dir: Path, old: dict, new: dict, restore, tmp: Path, seconds: float):
    """Kill cmd at each pause point, then at a few random moments."""
    for point, expected in POINTS.items():
        flag = tmp / f"paused-{point}"
        env = {**os.environ, "PUMPCAST_PAUSE_AT": point, "PUMPCAST_PAUSE_FILE": str(flag)}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not flag.exists():  # no clock: the writer says when it is there
            assert proc.poll() is None, f"the writer ended without reaching {point}"
            time.sleep(0.05)
        _kill(proc)
        _after_kill(store_dir, old, new, expected, restore)
    rng = random.Random(0)
    for _ in range(3):  # and anywhere: nothing in between may break the store either
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, seconds))
        _kill(proc)
        _after_kill(store_dir, old, new, None, restore)


def test_kill_9_during_generate_leaves_the_old_or_the_new_store(tmp_path, capsys):
    store_dir, ref = tmp_path / "s", tmp_path / "ref"
    generate_to_store(ref, 520, 50, seed=0, workers=2)  # two blocks: two worker processes
    new = _content(ref)
    generate_to_store(store_dir, 520, 30, seed=0, workers=2)
    old = _content(store_dir)
    cmd = [sys.executable, "-m", "pumpcast.cli", "generate", "--num-tokens", "520", "--timesteps", "50"]
    _kill_everywhere(
        [*cmd, "--data-dir", str(store_dir)],
        store_dir,
        old,
        new,
        lambda: generate_to_store(store_dir, 520, 30, seed=0, workers=2),
        tmp_path,
        seconds=5.0,
    )
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
    _kill_everywhere(
        cmd,
        store_dir,
        old,
        new,
        lambda: ingest_files("trades", sorted(halves.iterdir()), store_dir),
        tmp_path,
        seconds=3.5,
    )


def test_check_finds_disagreements_and_repair_quarantines_leftovers(tmp_path, capsys):
    d = tmp_path / "s"
    generate_to_store(d, 3, 200, seed=1)
    store = TokenDataManager(d)
    (d / "sequences" / ".token_3.h5.0123456789ab.staged").write_bytes(b"staged by a write that never committed")
    assert main(["check", "--data-dir", str(d)]) == 0  # leftovers are not inconsistencies
    assert "orphan:" in capsys.readouterr().out
    (d / "sequences" / "token_7.h5").write_bytes(b"left over")  # an unlisted token file is: it blocks writers
    assert main(["check", "--data-dir", str(d)]) == 1
    assert "token 7 is not in the metadata" in capsys.readouterr().out
    assert main(["check", "--data-dir", str(d), "--repair"]) == 0
    assert not (d / "sequences" / "token_7.h5").exists()
    assert len(list((d / "quarantine").rglob("*.*"))) == 2
    generate_to_store(tmp_path / "other", 3, 150, seed=1)  # a file from another store, of another length
    shutil.copy(tmp_path / "other" / "sequences" / "token_1.h5", d / "sequences" / "token_1.h5")
    assert main(["check", "--data-dir", str(d)]) == 1
    out = capsys.readouterr().out
    assert "problem:" in out and "token_1.h5" in out
    with pytest.raises(Exception, match="pumpcast check"):
        store.read(1)
