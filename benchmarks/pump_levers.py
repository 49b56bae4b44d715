"""What each pump-detection lever does on the 19 shared real events: one `pumpcast backtest --preset real` per
lever (5 token folds, one torch thread), the detector `detect` uses and the best baseline side by side.

    python benchmarks/pump_levers.py --data-dir real-data --out lever-reports [--levers none,trades,...]
        [--reuse] [--readme README.md]

Each lever's run writes OUT/<lever>/ (backtest.md/json) and OUT/<lever>/lever.json (the command, the commit it
ran at, threads, the machine's load average before it, wall seconds). --reuse keeps a lever whose report and
lever.json exist. The table goes to OUT/levers.md and, with --readme, between the README's
`<!-- pump-levers -->` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ALL = "trades,zscores,calendar"
#: lever -> the flags it adds to the recorded backtest command.
LEVERS: dict[str, list[str]] = {
    "none": ["--inputs", ""],
    "trades": ["--inputs", "trades"],
    "zscores": ["--inputs", "zscores"],
    "calendar": ["--inputs", "calendar"],
    "all": ["--inputs", ALL],
    "all+cross-fit": ["--inputs", ALL, "--cross-fit", "3"],
}
LABELS = {
    "none": "six features (the previous release)",
    "trades": "+ trade-side extras",
    "zscores": "+ causal z-scores",
    "calendar": "+ clock",
    "all": "+ extras, z-scores and clock",
    "all+cross-fit": "+ all three, cross-fitted thresholds and stacker (3 sub-models)",
}
BASE = ["backtest", "--preset", "real", "--folds", "5", "--by", "token", "--every", "2", "--threads", "1"]
START, END = "<!-- pump-levers -->", "<!-- /pump-levers -->"


def run(lever: str, data: Path, out: Path) -> None:
    argv = [*BASE, "--data-dir", str(data), "--output-dir", str(out), *LEVERS[lever]]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
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
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--readme", type=Path)
    args = ap.parse_args()
    levers = args.levers.split(",")
    for lever in levers:
        done = (args.out / lever / "backtest.json").exists() and (args.out / lever / "lever.json").exists()
        if not (args.reuse and done):
            run(lever, args.data_dir, args.out / lever)
    text = table(args.out, levers)
    (args.out / "levers.md").write_text(text + "\n")
    print(text)
    if args.readme:
        readme = args.readme.read_text()
        head, rest = readme.split(START, 1)
        _, tail = rest.split(END, 1)
        args.readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
