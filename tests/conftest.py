"""Shared fixtures: real shared data, small synthetic stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from pumpcast.simulator import generate_to_store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "binance-pumps"


#: What a pumpcast run writes into its working folder; none of it may appear in the checkout during the suite.
OUTPUTS = (
    "mlflow.db",
    "mlruns",
    "training-data",
    "checkpoints",
    "img",
    "predictions",
    "reports",
    "model_v2.pth",
    "optuna.db",
    "best_params.json",
)


@pytest.fixture(scope="session", autouse=True)
def _checkout_untouched():
    before = {n for n in OUTPUTS if (ROOT / n).exists()}
    yield
    after = {n for n in OUTPUTS if (ROOT / n).exists()}
    assert after <= before, f"the tests wrote {sorted(after - before)} into {ROOT}"


@pytest.fixture(autouse=True)
def _nothing_outside_tmp(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder with tracking pointed there too, so the suite never writes
    into the working folder's mlflow.db, mlruns/, training-data/ or checkpoints/ (child processes inherit)."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")


@pytest.fixture(scope="session")
def binance_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared real data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory) -> Path:
    """6 synthetic tokens x 1,200 steps (read-only for tests)."""
    d = tmp_path_factory.mktemp("syn") / "store"
    generate_to_store(d, num_tokens=6, timesteps=1200, seed=7)
    return d
