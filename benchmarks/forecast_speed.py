"""Inference speed on CPU, outside the training framework: one window's forecast, and long rollouts.

    python benchmarks/forecast_speed.py [--model model_v2.pth]

Without --model a default-sized model (seq 500, embed 64, 2 layers, horizon 16) with random weights is
timed: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pumpcast.forecasting import Forecaster
from pumpcast.model import ModelConfig, PumpcastTransformer
from pumpcast.modelfile import ModelBundle
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
    print(f"model: seq {L}, horizon {forecaster.horizon}, embedding {forecaster.bundle.config.embedding}")
    print(f"one window, 1 step:      {timed(lambda: forecaster.rollout(one, 1), 200) * 1e3:7.2f} ms")
    chunk = timed(lambda: forecaster.rollout(one, forecaster.horizon), 200)
    print(f"one window, {forecaster.horizon} steps:     {chunk * 1e3:7.2f} ms")
    print(f"1 token, 3,000 steps:    {timed(lambda: forecaster.rollout(one, 3000), 3):7.2f} s")
    print(f"100 tokens, 3,000 steps: {timed(lambda: forecaster.rollout(hist, 3000), 1):7.2f} s (batched)")


if __name__ == "__main__":
    main()
