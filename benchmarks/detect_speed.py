"""Pump scoring speed on CPU: a whole 4-day file of 1-minute bars (`PumpDetector.score`), split into window
preparation and network, and one live bar (`PumpDetector.update`).

    python benchmarks/detect_speed.py [--model fold0.pth] [--threads 2] [--file NAS_2022-02-01_15.00.csv.gz]
        [--inputs trades,zscores,calendar]

Without --model the `--preset real` network (seq 500, quantile head, pump head, the --inputs channels) with
random weights is timed: speed does not depend on the weights. A model file's detector is timed as it is
(its channels, and its stacker when it names one). Times are the best of --repeat runs with --threads torch threads set
explicitly; on a shared box compare them within one run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from pumpcast.detection import PREP_ROWS, PumpDetector, window_logits
from pumpcast.ingest import trades_to_bars
from pumpcast.model import ModelConfig, PumpcastTransformer
from pumpcast.modelfile import DataInfo, ModelBundle
from pumpcast.onnxfile import load_bundle
from pumpcast.pumps import PumpCalibration
from pumpcast.windows import Normalizer, relative, to_base

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance-pumps"


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--file", default=str(DATA / "NAS_2022-02-01_15.00.csv.gz"))
    ap.add_argument("--inputs", default="trades,zscores,calendar", help="channels of the random-weight model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        bundle = load_bundle(args.model)
    else:
        torch.manual_seed(0)
        config = ModelConfig(
            seq_len=500, loss="quantile", horizon=60, dropout=0.1, pump_head=True, inputs=args.inputs
        )
        bundle = ModelBundle(
            PumpcastTransformer(config).eval(),
            Normalizer(np.zeros(6), np.ones(6)),
            data=DataInfo(interval_ms=60_000),
            pump=PumpCalibration(horizon=config.pump_horizon, threshold=0.5),
        )
    detector = PumpDetector(bundle)
    [tok] = trades_to_bars(args.file)
    features, L = tok.features, detector.seq_len
    n = features.shape[0] - L + 1
    whole = best(lambda: detector.score(tok), args.repeat)  # channels included
    wide = detector.inputs(tok)
    windows = to_base(wide)[np.arange(L - 1, features.shape[0])[:, None] - L + 1 + np.arange(L)]

    def prepare() -> None:  # as window_logits does it: PREP_ROWS windows at a time
        for i in range(0, n, PREP_ROWS):
            bundle.normalizer.normalize(relative(windows[i : i + PREP_ROWS], L)[0], L)

    prep = best(prepare, args.repeat)
    live = PumpDetector(bundle)
    bars = list(zip(features, tok.extras, tok.timestamps, strict=True))
    for bar, extras, start in bars[:L]:
        live.update(bar, extras, int(start))
    t0 = time.perf_counter()
    for bar, extras, start in bars[L : L + 50]:
        live.update(bar, extras, int(start))
    per_bar = (time.perf_counter() - t0) / 50
    one = best(lambda: window_logits(bundle, windows[:1][:, :, detector._model_cols]), args.repeat)
    print(f"{Path(args.file).name}: {features.shape[0]:,} bars, {n:,} windows of {L}, {args.threads} thread(s)")
    print(f"detector: {detector.detector}; channels: {bundle.config.inputs or 'none'}")
    print(f"score (whole file)      {whole:7.2f} s")
    print(f"  window preparation    {prep:7.2f} s (relative + normalize, all windows)")
    print(f"update (one live bar)   {per_bar * 1e3:7.1f} ms; network alone {one * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
