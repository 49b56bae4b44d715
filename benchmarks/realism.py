"""Realism table: the statistics a quant checks first, synthetic tokens vs the real Binance pump data.

    python benchmarks/realism.py [--num-tokens 512 --timesteps 5800] [--real ../shared/data/binance-pumps]

Prints a Markdown table of (10th percentile, median, 90th percentile) per statistic; the README carries it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pumpcast import simulator
from pumpcast.ingest import attach_events, read_events, trades_to_bars
from pumpcast.realism import pump_shape, series_stats, summarize

LABELS = {
    "excess_kurtosis": "excess kurtosis of 1-step log returns",
    "acf_abs_r_1_10": "autocorrelation of abs(returns), mean of lags 1-10",
    "acf_r_1": "autocorrelation of returns, lag 1",
    "corr_abs_r_volume": "correlation of abs(return) and volume",
    "calm_buy_share": "buy share of trades away from events",
    "zero_return_share": "share of steps with no price change",
    "peak_gain": "pump peak gain",
    "minutes_to_peak": "pump minutes from start to peak",
    "retrace_60": "share of pump gain lost 60 min after the peak",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num-tokens", type=int, default=512)
    ap.add_argument("--timesteps", type=int, default=5800, help="as long as a real file's 1-minute bars")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared/data/binance-pumps"))
    args = ap.parse_args()

    syn_stats, syn_pumps = [], []
    for tok in simulator.generate(args.num_tokens, args.timesteps, args.seed):
        syn_stats.append(series_stats(tok.features, tok.events))
        syn_pumps += [
            s for e in tok.events if e.type == "pump_and_dump" for s in [pump_shape(tok.features[:, 0], e.start)] if s
        ]

    real = Path(args.real)
    events = read_events(real / "events.csv")
    real_stats, real_pumps = [], []
    for f in sorted(real.glob("*.csv.gz")):
        [bars] = trades_to_bars(f)
        bars = attach_events(bars, events)
        real_stats.append(series_stats(bars.features, bars.events))
        real_pumps += [s for e in bars.events for s in [pump_shape(bars.features[:, 0], e.start)] if s]

    def fmt(q: tuple[float, float, float]) -> str:
        return " / ".join(f"{v:.3g}" for v in q)

    syn, rl = summarize(syn_stats) | summarize(syn_pumps), summarize(real_stats) | summarize(real_pumps)
    print(
        f"| statistic (10th pct / median / 90th pct) | synthetic ({args.num_tokens} tokens, "
        f"{len(syn_pumps)} pumps) | real ({len(real_stats)} Binance files, {len(real_pumps)} pumps) |"
    )
    print("|---|---|---|")
    for key, label in LABELS.items():
        print(f"| {label} | {fmt(syn[key])} | {fmt(rl[key])} |")


if __name__ == "__main__":
    main()
