"""Realism: the statistics a quant checks first, synthetic markets against the real Binance pump events.

    python benchmarks/realism.py [--venues cex,dex] [--num-tokens 512 --timesteps 5800 --seed 0]
                                 [--real ../shared/data/binance-pumps] [--readme README.md]

For each statistic: the real 10th percentile / median / 90th percentile over the real files (calm statistics)
or pumps (pump statistics), and per venue the synthetic median over tokens or pumps, marked "in" when it lies
inside the real band; then "N of M inside" per venue. With --readme the table goes between the README's
`<!-- realism -->` markers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from readme_block import head_commit, write_block

from pumpcast import simulator
from pumpcast.ingest import attach_events, read_events, trades_to_bars
from pumpcast.realism import STATS, describe, inside_band

LABELS = {
    "excess_kurtosis": "excess kurtosis of calm 1-step returns",
    "hill_index": "Hill tail index of calm abs(returns), top 5%",
    "acf_r_1": "autocorrelation of calm returns, lag 1 (bounce)",
    **{f"acf_abs_r_{k}": f"autocorrelation of calm abs(returns), lag {k}" for k in (*range(1, 11), 60)},
    "corr_abs_r_log_volume": "correlation of calm abs(return) and log volume",
    "calm_log_volume_acf_1": "lag-1 autocorrelation of calm log volume",
    "pump_zero_return_share": "share of pump-window steps with no price change",
    "pump_zero_trade_share": "share of pump-window steps with no trade",
    "pump_buy_share": "buy share of pump-window trades",
    "pump_volume_ratio": "pump-window volume over calm volume",
    "pump_log_volume_acf_1": "lag-1 autocorrelation of pump-window log volume",
    "peak_gain": "pump peak gain",
    "minutes_to_peak": "pump steps from start to peak",
    "retrace_60": "share of pump gain lost 60 steps after the peak",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venues", default="cex,dex", help="comma-separated: cex, dex")
    ap.add_argument("--num-tokens", type=int, default=512)
    ap.add_argument("--timesteps", type=int, default=5800, help="as long as a real file's 1-minute bars")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared/data/binance-pumps"))
    ap.add_argument("--readme", type=Path)
    args = ap.parse_args()

    real_dir = Path(args.real)
    events = read_events(real_dir / "events.csv")
    bars = [attach_events(trades_to_bars(f)[0], events) for f in sorted(real_dir.glob("*.csv.gz"))]
    real, n_real, n_real_pumps = describe((b.features, b.events) for b in bars)

    venues = [v.strip() for v in args.venues.split(",") if v.strip()]
    syn, inside, counts = {}, {}, {}
    for venue in venues:
        started = time.perf_counter()
        tokens = simulator.generate(args.num_tokens, args.timesteps, args.seed, venue=venue)
        syn[venue], _, n_pumps = describe((t.features, t.events) for t in tokens)
        inside[venue] = inside_band(syn[venue], real)
        counts[venue] = (n_pumps, time.perf_counter() - started)

    head = " | ".join(f"{v.upper()} median ({args.num_tokens} tokens, {counts[v][0]} pumps)" for v in venues)
    lines = [
        f"| statistic | real 10% / median / 90% ({n_real} Binance files, {n_real_pumps} pumps) | {head} |",
        "|---|---|" + "---|" * len(venues),
    ]
    for key in STATS:
        cells = " | ".join(f"{syn[v][key][1]:.3g} {'in' if inside[v][key] else '**out**'}" for v in venues)
        lines.append(f"| {LABELS[key]} | {' / '.join(f'{q:.3g}' for q in real[key])} | {cells} |")
    lines.append("")
    commit = head_commit()
    for v in venues:
        lines.append(
            f"{v.upper()}: {sum(inside[v].values())} of {len(inside[v])} inside "
            f"(`python benchmarks/realism.py --num-tokens {args.num_tokens} --timesteps {args.timesteps} "
            f"--seed {args.seed}` at commit {commit}, {counts[v][1]:.0f} s).  "
        )
    text = "\n".join(lines)
    print(text)
    if args.readme:
        write_block(args.readme, "realism", text)


if __name__ == "__main__":
    main()
