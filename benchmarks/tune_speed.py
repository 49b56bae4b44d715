"""Tuning throughput on this machine: trials per hour for a small search space, with 1 and 2 workers.

python benchmarks/tune_speed.py [--trials 8 --epochs 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = {
    "embed_size": [16, 32],
    "nhead": [2, 4],
    "seq_length": [64, 128],
    "dim_feedforward": [64, 128],
    "batch_size": [64],
    "patch_len": [8, 16],
    "num_layers": {"low": 1, "high": 2},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "space.json"
        space.write_text(json.dumps(SPACE))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pumpcast.cli",
                "generate",
                "--num-tokens",
                "5",
                "--timesteps",
                "2000",
                "--data-dir",
                f"{tmp}/data",
            ],
            check=True,
            capture_output=True,
        )
        for workers in (1, 2):
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pumpcast.cli",
                    "tune",
                    "--n-trials",
                    str(args.trials),
                    "--workers",
                    str(workers),
                    "--space",
                    str(space),
                    "--storage",
                    f"sqlite:///{tmp}/optuna-{workers}.db",
                    "--epochs",
                    str(args.epochs),
                    "--horizon",
                    "16",
                    "--window-stride",
                    "2",
                    "--data-dir",
                    f"{tmp}/data",
                    "--checkpoint-dir",
                    f"{tmp}/ck{workers}",
                    "--best-config",
                    f"{tmp}/best.json",
                    "--no-mlflow",
                    "--no-progress",
                ],
                check=True,
                capture_output=True,
            )
            dt = time.perf_counter() - t0
            print(
                f"{workers} worker(s): {args.trials} trials of {args.epochs} epochs in {dt:.0f} s -> "
                f"{args.trials / dt * 3600:.0f} trials/hour"
            )


if __name__ == "__main__":
    main()
