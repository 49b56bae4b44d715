"""Synthetic generator speed: token-steps per second and peak memory.

    python benchmarks/generate_speed.py --num-tokens 10000 --timesteps 4000 [--store DIR]

Without --store it measures the simulation alone; with it, simulation plus writing the HDF5 store.
"""

from __future__ import annotations

import argparse
import resource
import time

from pumpcast import simulator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num-tokens", type=int, default=10_000)
    ap.add_argument("--timesteps", type=int, default=4_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", help="also write the tokens to this store directory")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.store:
        simulator.generate_to_store(args.store, args.num_tokens, args.timesteps, args.seed)
    else:
        for _ in simulator.generate(args.num_tokens, args.timesteps, args.seed):
            pass
    dt = time.perf_counter() - t0
    steps = args.num_tokens * args.timesteps
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    what = "simulate + write store" if args.store else "simulate"
    print(
        f"{what}: {args.num_tokens} tokens x {args.timesteps} steps = {steps / 1e6:.1f} M token-steps "
        f"in {dt:.1f} s -> {steps / dt / 1e6:.2f} M token-steps/s; peak RSS {peak_mb:.0f} MB "
        f"(block of {simulator.BLOCK} tokens)"
    )


if __name__ == "__main__":
    main()
