"""Training throughput on CPU: the default patching Conv1D embedding vs the per-step Linear embedding.

    python benchmarks/train_speed.py [--epochs 2 --window-stride 4]

Both train the same data, split and number of samples (seq 500, embed 64, 2 layers, batch 64, pump head on);
the script prints samples/s (mean over the epochs after the first, which pays for warm-up) and the best
validation loss of each, and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pumpcast.config import DataConfig, ModelConfig, OptimConfig, RuntimeConfig, TrainConfig
from pumpcast.simulator import generate_to_store
from pumpcast.training import quiet_lightning, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num-tokens", type=int, default=5)
    ap.add_argument("--timesteps", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--window-stride", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quiet_lightning()
    with tempfile.TemporaryDirectory() as tmp:
        generate_to_store(f"{tmp}/data", args.num_tokens, args.timesteps, seed=0)
        rows = {}
        for embedding in ("conv", "linear"):
            cfg = TrainConfig(
                data=DataConfig(data_dir=f"{tmp}/data", window_stride=args.window_stride),
                model=ModelConfig(seq_len=500, embedding=embedding, embed_size=64, num_layers=2),
                optim=OptimConfig(epochs=args.epochs, batch_size=64, patience=100),
                runtime=RuntimeConfig(
                    checkpoint_dir=f"{tmp}/ckpt-{embedding}", save_model=None, progress_bar=False, threads=args.threads
                ),
            )
            t0 = time.perf_counter()
            result = train(cfg)
            wall = time.perf_counter() - t0
            rates = [h["epoch_samples_per_s"] for h in result.history if "epoch_samples_per_s" in h]
            # the first epoch pays for warm-up; with one epoch, the wall time is all there is
            steady = rates[1:] or rates or [result.train_windows * args.epochs / wall]
            rows[embedding] = (sum(steady) / len(steady), result.best_val_loss, wall, result.train_windows)
    for name, (rate, loss, wall, n) in rows.items():
        print(
            f"{name:>6}: {rate:8.1f} samples/s, best val loss {loss:.4f}, {wall:.0f} s for {args.epochs} "
            f"epochs of {n} windows"
        )
    print(
        f"conv / linear throughput: {rows['conv'][0] / rows['linear'][0]:.1f}x; "
        f"val loss conv {rows['conv'][1]:.4f} vs linear {rows['linear'][1]:.4f}"
    )


if __name__ == "__main__":
    main()
