"""Pump detection, measured: held-out synthetic tokens, and real Binance events (train on synthetic plus some
real tokens, test on the other real tokens, never mixing).

    python benchmarks/pump_detection.py synthetic [--tokens 60 --epochs 8]
    python benchmarks/pump_detection.py real [--folds 3 --epochs 8]

Each run trains with `pumpcast train`, then writes `pumpcast evaluate`'s report (thresholds chosen on
validation data at training time) under --out, and prints the event table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pumpcast.cli import main as pumpcast
from pumpcast.ingest import ingest_files
from pumpcast.simulator import generate_to_store
from pumpcast.splits import Split
from pumpcast.store import TokenDataManager

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance-pumps"


def train_and_evaluate(data: Path, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    model = out / "model.pth"
    common = ["--data-dir", str(data), "--no-mlflow"]
    assert (
        pumpcast(
            [
                "train",
                *common,
                "--epochs",
                str(args.epochs),
                "--window-stride",
                str(args.stride),
                "--seq-length",
                str(args.seq_length),
                "--save-model",
                str(model),
                "--checkpoint-dir",
                str(out / "ckpt"),
                "--no-progress",
                "--seed",
                str(args.seed),
                *extra,
            ]
        )
        == 0
    )
    split_file = extra[extra.index("--split-file") + 1] if "--split-file" in extra else None
    assert (
        pumpcast(
            [
                "evaluate",
                *common,
                "--load-model",
                str(model),
                "--output-dir",
                str(out / "report"),
                "--every",
                "10",  # the forecast part of the report; the events are scored on every bar
                *(["--split-file", split_file] if split_file else []),
            ]
        )
        == 0
    )
    return json.loads((out / "report" / "report.json").read_text())


def synthetic(args: argparse.Namespace) -> None:
    out = Path(args.out) / "synthetic"
    data = out / "data"
    if not data.exists():
        generate_to_store(data, args.tokens, 4000, seed=args.seed)
    report = train_and_evaluate(data, out, args, ["--split-strategy", "token"])
    print(json.dumps(report["events"]["overall"], indent=1))


def real(args: argparse.Namespace) -> None:
    out = Path(args.out) / "real"
    data = out / "data"
    if not data.exists():
        generate_to_store(data, args.tokens, 4000, seed=args.seed)
        ingest_files("trades", sorted(REAL.glob("*.csv.gz")), data, events=REAL / "events.csv")
    store = TokenDataManager(data)
    entries = store.entries()
    lengths = store.lengths()
    synthetic_ids = [t for t, e in entries.items() if e.source.startswith("synthetic")]
    real_ids = sorted(t for t, e in entries.items() if not e.source.startswith("synthetic"))
    results = []
    for fold in range(args.folds):
        test = real_ids[fold :: args.folds]
        rest = [t for t in real_ids if t not in test]
        val = rest[::3]  # a third of the remaining real tokens choose the threshold
        train = [t for t in rest if t not in val]
        n_syn_val = max(1, len(synthetic_ids) // 10)
        ranges = {
            "train": {t: (0, lengths[t]) for t in synthetic_ids[n_syn_val:] + train},
            "val": {t: (0, lengths[t]) for t in synthetic_ids[:n_syn_val] + val},
            "test": {t: (0, lengths[t]) for t in test},
        }
        split = Split("token", 0.0, 0.0, 0.0, args.seed, ranges)
        split_file = out / f"split_fold{fold}.json"
        split_file.write_text(json.dumps(split.to_json()))
        report = train_and_evaluate(data, out / f"fold{fold}", args, ["--split-file", str(split_file)])
        results.append(report["events"]["overall"])
        print(f"fold {fold}: test tokens {test}")
        print(json.dumps(report["events"]["overall"], indent=1))
    for name in results[0]:
        events = sum(r[name]["events"] for r in results)
        hits = sum(r[name]["recall"] * r[name]["events"] for r in results)
        days = sum(r[name]["days"] for r in results)
        fa = sum(r[name]["false_alarms_per_day"] * r[name]["days"] for r in results)
        early = sum(r[name]["early_warning_rate"] * r[name]["events"] for r in results)
        print(
            f"all folds, {name}: recall {hits / events:.3f} ({hits:.0f}/{events}), early warnings "
            f"{early / events:.3f}, false alarms/day {fa / days:.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("which", choices=("synthetic", "real"))
    ap.add_argument("--tokens", type=int, default=60, help="synthetic tokens")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--seq-length", type=int, default=256)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/pumpcast-pump-benchmark")
    args = ap.parse_args()
    synthetic(args) if args.which == "synthetic" else real(args)


if __name__ == "__main__":
    main()
