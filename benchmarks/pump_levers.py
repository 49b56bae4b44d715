"""What each pump-detection lever does on the 19 shared real events: one `pumpcast backtest --preset real` per
lever (5 token folds, one torch thread), the detector `detect` uses and the best baseline side by side.

    python benchmarks/pump_levers.py --data-dir real-data --out lever-reports [--levers none,trades,...]
        [--data-15s real-15s] [--pretrained pretrained.pth] [--reuse] [--readme README.md]

Each lever's run writes OUT/<lever>/ (backtest.md/json) and OUT/<lever>/lever.json (the command, the commit it
ran at, threads, the machine's load average before it, wall seconds). --reuse keeps a lever whose report and
lever.json exist. The table goes to OUT/levers.md and, with --readme, between the README's
`<!-- pump-levers -->` markers. The 15s lever runs on a store of the same trades ingested at 15-second bars
(`pumpcast ingest trades ... --interval 15s`), with its per-bar settings scaled to keep their times (pump
horizon 40 bars = 10 minutes, every 8th origin, windows every 12th bar); the pretrained lever fine-tunes a model
pretrained on synthetic tokens (`--init-from`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from readme_block import head_commit, write_block

ALL = "trades,zscores,calendar"
#: lever -> the flags it adds to the recorded backtest command.
LEVERS: dict[str, list[str]] = {
    "none": ["--inputs", ""],
    "trades": ["--inputs", "trades"],
    "zscores": ["--inputs", "zscores"],
    "calendar": ["--inputs", "calendar"],
    "all": ["--inputs", ALL],
    "all+cross-fit": ["--inputs", ALL, "--cross-fit", "3"],
    "pretrained": ["--inputs", ALL],
    "15s": ["--inputs", ALL, "--cross-fit", "3", "--every", "8", "--window-stride", "12", "--pump-horizon", "40"],
}
LABELS = {
    "none": "six features (the previous release)",
    "trades": "+ trade-side extras",
    "zscores": "+ causal z-scores",
    "calendar": "+ clock",
    "all": "+ extras, z-scores and clock",
    "all+cross-fit": "+ all three, cross-fitted thresholds and stacker (3 sub-models)",
    "pretrained": "+ extras, z-scores and clock, pretrained on 2,048 synthetic tokens",
    "15s": "all three, cross-fit and stacker at 15-second bars",
}
BASE = ["backtest", "--preset", "real", "--folds", "5", "--by", "token", "--every", "2", "--threads", "1"]


def run(lever: str, data: Path, out: Path, pretrained: Path | None) -> None:
    argv = [*BASE, "--data-dir", str(data), "--output-dir", str(out), *LEVERS[lever]]
    if lever == "pretrained":
        if pretrained is None:
            sys.exit("the pretrained lever needs --pretrained MODEL (pumpcast train on synthetic tokens)")
        argv += ["--init-from", str(pretrained)]
    commit = head_commit()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pumpcast.cli", *argv], check=True)
    meta = {"argv": ["pumpcast", *argv], "commit": commit, "threads": 1, "load_before": load}
    meta["wall_s"] = round(time.perf_counter() - started)
    (out / "lever.json").write_text(json.dumps(meta, indent=1))


def cell(m: dict, key: str, digits: int) -> str:
    v, lo, hi = m[key]
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def row(label: str, name: str, m: dict) -> str:
    within = " / ".join(str(m.get(f"within_{s}s", "")) for s in (30, 60, 120))
    delay = cell(m, "median_delay_s", 0) if "median_delay_s" in m else ""
    return (
        f"| {label} | {name} | {m['detected']}/{m['events']} | {m['early']}/{m['events']} | {within} | "
        f"{cell(m, 'false_alarms_per_day', 2)} | {delay} | {cell(m, 'auprc', 3)} |"
    )


def table(out: Path, levers: list[str]) -> str:
    lines = [
        "| lever | detector | detected | early | within 30 / 60 / 120 s | false alarms / day | median delay (s) "
        "| AUPRC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for lever in levers:
        report = json.loads((out / lever / "backtest.json").read_text())
        meta = json.loads((out / lever / "lever.json").read_text())
        events = report["events"]
        used = "detector" if "detector" in events else "model"
        lines.append(row(LABELS[lever], f"{used} (`detect`)" if used == "detector" else "network", events[used]))
        if "stacker" in events and used == "detector":
            lines.append(row("", "stacker", events["stacker"]))
            lines.append(row("", "network", events["model"]))
        baselines = {k: v for k, v in events.items() if k not in ("detector", "model", "stacker", "ensemble")}
        best = max(baselines, key=lambda k: baselines[k]["auprc"][0])
        lines.append(row("", f"best baseline ({best})", baselines[best]))
        notes.append(
            f"- {lever}: `{' '.join(meta['argv'])}` at commit {meta['commit']}, {meta['threads']} thread, "
            f"{meta.get('beside', 'load ' + format(meta.get('load_before', float('nan')), '.1f') + ' before')}, "
            f"{meta['wall_s']} s"
        )
    return "\n".join([*lines, "", *notes])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--levers", default=",".join(LEVERS))
    ap.add_argument("--data-15s", type=Path, help="the same trades ingested at 15-second bars (the 15s lever)")
    ap.add_argument("--pretrained", type=Path, help="a model file pretrained on synthetic tokens")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--readme", type=Path)
    args = ap.parse_args()
    levers = args.levers.split(",")
    for lever in levers:
        done = (args.out / lever / "backtest.json").exists() and (args.out / lever / "lever.json").exists()
        if not (args.reuse and done):
            data = args.data_15s if lever == "15s" else args.data_dir
            if data is None:
                sys.exit("the 15s lever needs --data-15s STORE")
            run(lever, data, args.out / lever, args.pretrained)
    text = table(args.out, levers)
    (args.out / "levers.md").write_text(text + "\n")
    print(text)
    if args.readme:
        write_block(args.readme, "pump-levers", text)


if __name__ == "__main__":
    main()
