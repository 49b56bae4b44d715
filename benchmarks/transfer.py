"""Transfer: does pretraining on synthetic markets improve the real backtest?

    python benchmarks/transfer.py --real-store real-data [--venue cex --synthetic-tokens 96 --pretrain-epochs 4]
                                  [--every 2 --threads 2 --output-dir transfer]

1. `pumpcast generate --venue V` makes the synthetic markets (as long as a real file: 5,800 one-minute steps);
2. `pumpcast train --preset real` pretrains on them (pretrained.pth);
3. `pumpcast backtest --preset real` runs twice on the real store with the same token folds: trained on real
   only, and warm-started from pretrained.pth (`--init-from`), then trained on real the same way;
4. prints both arms and their paired difference with a 95% bootstrap interval over the test tokens (the same
   resample for both arms): mean pinball loss over the quantile levels (the quantile form of CRPS; lower is
   better) per horizon, for the calibrated forecast and the network alone, and pump AUPRC per detector.

Either backtest resumes fold by fold when interrupted (same output directory).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pumpcast.cli import main as pumpcast
from pumpcast.metrics import average_precision, scored_steps
from pumpcast.scoring import METHODS, SUBSETS, FoldScores, method_metrics, per_token_sums
from pumpcast.store import TokenDataManager


def folds(out: Path, horizons: list[int]) -> list[FoldScores]:
    files = sorted((out / "folds").glob("fold*.json"))
    return [FoldScores.from_json(json.loads(p.read_text()), tuple(horizons)) for p in files]


def interval(values: np.ndarray, digits: int) -> str:
    """'point [low, high]' of a bootstrap column whose first row is the point value."""
    lo, hi = np.nanpercentile(values[1:], [2.5, 97.5])
    return f"{values[0]:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def compare(real_only: Path, pretrained: Path, horizons: list[int], n_boot: int, seed: int) -> str:
    """Markdown tables of both arms and their paired bootstrap differences."""
    fa, fb = folds(real_only, horizons), folds(pretrained, horizons)
    ta, a = per_token_sums(fa)
    tb, b = per_token_sums(fb)
    assert ta == tb, "the two backtests tested other tokens: rerun with the same store, folds and seed"
    rng = np.random.default_rng(seed)
    draws = [np.arange(len(ta))] + [rng.integers(0, len(ta), len(ta)) for _ in range(n_boot)]
    pa = np.stack([method_metrics(a[d].sum(0))["pinball"] for d in draws])  # (draws, methods, H, subsets)
    pb = np.stack([method_metrics(b[d].sum(0))["pinball"] for d in draws])
    lines = [
        f"Mean pinball loss (x 1e4; lower is better) over {len(ta)} test tokens; difference = pretrained - real "
        "only, relative, with its 95% paired bootstrap interval:",
        "",
        "| forecast | subset | h | real only | pretrained | difference |",
        "|---|---|---|---|---|---|",
    ]
    for method in ("model", "model_raw"):
        m = METHODS.index(method)
        for s, subset in enumerate(SUBSETS):
            for j, h in enumerate(horizons):
                rel = (pb[:, m, j, s] - pa[:, m, j, s]) / pa[:, m, j, s]
                lines.append(
                    f"| {method} | {subset} | {h} | {pa[0, m, j, s] * 1e4:.2f} | {pb[0, m, j, s] * 1e4:.2f} | "
                    f"{interval(rel * 100, 2)} % |"
                )
    lines += [
        "",
        "Pump AUPRC (each token's scores from its own fold's model), difference = pretrained - real only:",
        "",
        "| detector | real only | pretrained | difference |",
        "|---|---|---|---|",
    ]
    rows_a = {name: {r.token: r for f in fa for r in (f.events or {}).get(name, [])} for name in _names(fa)}
    rows_b = {name: {r.token: r for f in fb for r in (f.events or {}).get(name, [])} for name in _names(fb)}
    for name in rows_a:
        if name not in rows_b:
            continue
        tokens = sorted(set(rows_a[name]) & set(rows_b[name]))
        boot = [np.arange(len(tokens))] + [rng.integers(0, len(tokens), len(tokens)) for _ in range(n_boot)]
        auc_a, auc_b = (
            np.array([_auprc(*steps, d) for d in boot])
            for steps in (scored_steps([rows[t] for t in tokens]) for rows in (rows_a[name], rows_b[name]))
        )
        lines.append(f"| {name} | {auc_a[0]:.3f} | {auc_b[0]:.3f} | {interval(auc_b - auc_a, 3)} |")
    return "\n".join(lines)


def _names(fs: list[FoldScores]) -> list[str]:
    return sorted({name for f in fs for name in (f.events or {})})


def _auprc(labels: list[np.ndarray], scores: list[np.ndarray], draw: np.ndarray) -> float:
    return average_precision(np.concatenate([labels[i] for i in draw]), np.concatenate([scores[i] for i in draw]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-store", required=True, help="store of the real events (pumpcast ingest trades ...)")
    ap.add_argument("--venue", default="cex", choices=("cex", "dex"))
    ap.add_argument("--synthetic-tokens", type=int, default=96)
    ap.add_argument("--pretrain-epochs", type=int, default=4)
    ap.add_argument("--pretrain-stride", type=int, default=12, help="window stride while pretraining")
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--output-dir", default="transfer")
    args = ap.parse_args()
    out = Path(args.output_dir)
    common = ["--no-progress", "--threads", str(args.threads), "--seed", str(args.seed)]
    synthetic, pretrained = out / "synthetic", out / "pretrained.pth"
    if not pretrained.exists():
        if len(TokenDataManager(synthetic)) == 0:
            gen = ["--data-dir", str(synthetic), "--num-tokens", str(args.synthetic_tokens), "--timesteps", "5800"]
            assert pumpcast(["generate", *gen, "--venue", args.venue, "--seed", str(args.seed)]) == 0
        train = ["--preset", "real", "--data-dir", str(synthetic), "--epochs", str(args.pretrain_epochs)]
        train += ["--window-stride", str(args.pretrain_stride), "--checkpoint-dir", str(out / "pretrain-ckpt")]
        assert pumpcast(["train", *train, "--save-model", str(pretrained), "--no-mlflow", *common]) == 0
    arms = {"real-only": [], "pretrained": ["--init-from", str(pretrained)]}
    for name, extra in arms.items():
        bt = ["--preset", "real", "--data-dir", args.real_store, "--every", str(args.every)]
        assert pumpcast(["backtest", *bt, "--output-dir", str(out / name), *extra, *common]) == 0
    horizons = json.loads((out / "real-only" / "backtest.json").read_text())["horizons"]
    table = compare(out / "real-only", out / "pretrained", horizons, args.bootstrap, args.seed)
    (out / "transfer.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
