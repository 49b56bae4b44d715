"""Data-parallel training on this machine's CPU cores: one process vs --devices 2 --strategy ddp.

    python benchmarks/ddp_speed.py [--epochs 3]

Both train the same data for the same epochs (each DDP process takes half of every epoch's windows; the
batch size is per process, so DDP's global batch is twice as large). Prints wall time and windows/s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        common = [
            "--num-tokens",
            "5",
            "--timesteps",
            "4000",
            "--seq-length",
            "500",
            "--epochs",
            str(args.epochs),
            "--patience",
            "100",
            "--window-stride",
            "2",
            "--data-dir",
            f"{tmp}/data",
            "--no-mlflow",
            "--no-progress",
            "--forecast",
            "16",
            "--forecast-extended",
            "16",
            "--output-dir",
            tmp,
        ]
        subprocess.run(
            [sys.executable, "-m", "pumpcast.cli", "generate", "--num-tokens", "5", "--data-dir", f"{tmp}/data"],
            check=True,
            capture_output=True,
        )
        for name, extra in (
            ("1 process", ["--accelerator", "cpu", "--devices", "1"]),
            ("ddp, 2 processes", ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]),
        ):
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "pump_trainer.py"),
                    *common,
                    *extra,
                    "--checkpoint-dir",
                    f"{tmp}/ck-{len(extra)}",
                    "--save-model",
                    f"{tmp}/m-{len(extra)}.pth",
                ],
                check=True,
                capture_output=True,
            )
            print(f"{name}: {args.epochs} epochs in {time.perf_counter() - t0:.1f} s (wall, with start-up)")


if __name__ == "__main__":
    main()
