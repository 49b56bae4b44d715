"""Lazy training windows: windows per second and peak memory over a large synthetic store.

    python benchmarks/windows_throughput.py --num-tokens 1000 --timesteps 4000 --seq-length 500

Builds (or reuses) a store, loads the training split into a WindowDataset and iterates one pass of batches
through a DataLoader, as training does.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from pumpcast.simulator import generate_to_store
from pumpcast.splits import make_split
from pumpcast.store import TokenDataManager
from pumpcast.windows import Normalizer, WindowDataset, collate_batch


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num-tokens", type=int, default=1000)
    ap.add_argument("--timesteps", type=int, default=4000)
    ap.add_argument("--seq-length", type=int, default=500)
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=2000, help="batches to time (random windows)")
    ap.add_argument("--store", default="/tmp/pumpcast-bench-windows")
    args = ap.parse_args()
    store = TokenDataManager(args.store)
    if len(store) != args.num_tokens if Path(args.store).exists() else True:
        generate_to_store(args.store, args.num_tokens, args.timesteps, seed=0)
    before = rss_mb()
    t0 = time.perf_counter()
    series = {t: store.read_features(t) for t in store.token_ids()}
    split = make_split({t: s.shape[0] for t, s in series.items()}, "time")
    ds = WindowDataset(series, split.ranges["train"], args.seq_length, args.horizon)
    del series
    ds.normalizer = Normalizer.fit(ds)
    load_s = time.perf_counter() - t0
    loader = DataLoader(
        ds, batch_size=args.batch_size, sampler=RandomSampler(ds, generator=torch.Generator()), collate_fn=collate_batch
    )
    t0 = time.perf_counter()
    n = 0
    for i, batch in enumerate(loader):
        n += batch["x"].shape[0]
        if i + 1 >= args.batches:
            break
    dt = time.perf_counter() - t0
    window_mb = len(ds) * (args.seq_length + args.horizon) * 6 * 4 / 2**20
    print(
        f"{args.num_tokens} tokens x {args.timesteps} steps, seq {args.seq_length} + horizon {args.horizon}: "
        f"{len(ds):,} training windows; load + fit {load_s:.1f} s"
    )
    print(f"random batches of {args.batch_size}: {n / dt:,.0f} windows/s over {n:,} windows")
    print(
        f"dataset arrays {ds.flat.nbytes / 2**20:.0f} MB; peak RSS {rss_mb():.0f} MB "
        f"(before loading {before:.0f} MB); materialising every window would take {window_mb:,.0f} MB"
    )
    assert np.isfinite(batch["x"].numpy()).all()


if __name__ == "__main__":
    main()
