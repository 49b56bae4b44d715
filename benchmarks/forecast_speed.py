"""Inference speed on CPU, outside the training framework: one window's forecast, and long rollouts.

    python benchmarks/forecast_speed.py [--model model_v2.pth] [--threads 2]

Without --model a default-sized model (seq 500, embed 64, 2 layers, horizon 16) with random weights is
timed: speed does not depend on the weights. The same network is exported to ONNX and timed with
onnxruntime in the same run (both with --threads intra-op threads), so the two are compared as a ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pumpcast.forecasting import Forecaster
from pumpcast.model import ModelConfig, PumpcastTransformer
from pumpcast.modelfile import ModelBundle
from pumpcast.onnxfile import export_onnx
from pumpcast.windows import Normalizer


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        forecaster = Forecaster.load(args.model)
    else:
        torch.manual_seed(0)
        forecaster = Forecaster(ModelBundle(PumpcastTransformer(ModelConfig()).eval(), Normalizer.identity()))
    L = forecaster.seq_len
    rng = np.random.default_rng(0)
    hist = np.exp(np.cumsum(rng.normal(0, 0.01, (100, L, 6)), axis=1))
    one = hist[:1]
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Forecaster.load(export_onnx(forecaster.bundle, Path(tmp) / "m.onnx"))
        print(
            f"model: seq {L}, horizon {forecaster.horizon}, embedding {forecaster.bundle.config.embedding}, "
            f"{args.threads} thread(s)"
        )
        print(f"{'':24} {'torch':>9} {'onnxruntime':>12} {'ratio':>6}")
        for label, fn, repeat, unit in (
            ("one window, 1 step", lambda f: f.rollout(one, 1), 200, 1e3),
            (f"one window, {forecaster.horizon} steps", lambda f: f.rollout(one, forecaster.horizon), 200, 1e3),
            ("1 token, 3,000 steps", lambda f: f.rollout(one, 3000), 3, 1.0),
            ("100 tokens, 3,000 steps", lambda f: f.rollout(hist, 3000), 1, 1.0),
        ):
            a = timed(lambda fn=fn: fn(forecaster), repeat)
            b = timed(lambda fn=fn: fn(onnx), repeat)
            name = "ms" if unit > 1 else "s"
            print(f"{label:24} {a * unit:7.2f} {name:2} {b * unit:9.2f} {name:2} {a / b:5.2f}x")


if __name__ == "__main__":
    main()
