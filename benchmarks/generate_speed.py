"""Synthetic generator speed: token-steps per second and peak memory.

    python benchmarks/generate_speed.py --num-tokens 10000 --timesteps 4000 [--venue cex] [--workers 2] [--store DIR]

Without --store it measures the simulation alone (in one process, or blocks spread over --workers processes);
with it, simulation plus writing the HDF5 store (one process per core, as `pumpcast generate` does).
"""

from __future__ import annotations

import argparse
import resource
import time
from concurrent.futures import ProcessPoolExecutor

from pumpcast import simulator


def simulate(task: tuple[int, int, int, int, str]) -> int:
    """Worker: simulate one block's tokens and drop them; returns how many."""
    n, timesteps, seed, first, venue = task
    return sum(1 for _ in simulator.generate(n, timesteps, seed, first_token=first, venue=venue))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num-tokens", type=int, default=10_000)
    ap.add_argument("--timesteps", type=int, default=4_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--venue", default="dex", choices=("dex", "cex"))
    ap.add_argument("--workers", type=int, default=1, help="processes simulating blocks (without --store)")
    ap.add_argument("--store", help="also write the tokens to this store directory")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.store:
        simulator.generate_to_store(args.store, args.num_tokens, args.timesteps, args.seed, venue=args.venue)
    else:
        blocks = [
            (min(simulator.BLOCK, args.num_tokens - first), args.timesteps, args.seed, first, args.venue)
            for first in range(0, args.num_tokens, simulator.BLOCK)
        ]
        with ProcessPoolExecutor(args.workers) as pool:
            sum(pool.map(simulate, blocks))
    dt = time.perf_counter() - t0
    steps = args.num_tokens * args.timesteps
    peak_mb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    what = "simulate + write store" if args.store else f"simulate ({args.workers} process(es))"
    print(
        f"{what}: {args.num_tokens} tokens x {args.timesteps} steps = {steps / 1e6:.1f} M token-steps "
        f"in {dt:.1f} s -> {steps / dt / 1e6:.2f} M token-steps/s; peak RSS {peak_mb:.0f} MB "
        f"per process (block of {simulator.BLOCK} tokens), {args.venue.upper()}"
    )


if __name__ == "__main__":
    main()
