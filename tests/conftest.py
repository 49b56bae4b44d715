"""Shared fixtures: real shared data, small synthetic stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from pumpcast.simulator import generate_to_store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "binance-pumps"


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
