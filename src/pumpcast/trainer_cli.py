"""`python pump_trainer.py` / `pump-trainer` / `pumpcast train|test`: the seed script's command line.

Every flag of the seed keeps its meaning; defaults that were impractical (batch size 1, learning rate 2.2e-6)
are changed, as the README lists, and the seed's explicit values still work.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pumpcast.schema import PumpcastError


def add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--seq-length", type=int, default=500, help="input sequence length (default 500)")
    g.add_argument("--horizon", type=int, default=16, help="steps predicted per forward pass (default 16)")
    g.add_argument(
        "--embedding",
        choices=("conv", "linear"),
        default="conv",
        help="conv: patching Conv1D, kernel = stride = --patch-len (default); linear: per step",
    )
    g.add_argument("--patch-len", type=int, default=16, help="patch length of the conv embedding (default 16)")
    g.add_argument("--embed-size", type=int, default=64, help="embedding dimension (default 64)")
    g.add_argument("--nhead", type=int, default=4, help="attention heads (default 4)")
    g.add_argument("--num-layers", type=int, default=2, help="encoder layers (default 2)")
    g.add_argument("--dim-feedforward", type=int, default=256, help="feed-forward size (default 256)")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout rate (default 0.0)")


def add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default="training-data", help="token store (default training-data)")
    g.add_argument("--num-tokens", type=int, default=5, help="synthetic tokens made when the store is empty")
    g.add_argument("--timesteps", type=int, default=4000, help="steps per synthetic token (default 4000)")
    g.add_argument("--split-strategy", choices=("time", "token", "mixed"), default="time")
    g.add_argument("--train-token-ratio", type=float, default=0.6, help="share of tokens that train (token/mixed)")
    g.add_argument("--seed", type=int, default=0, help="seed for data, split, initialisation and shuffling")
    g.add_argument("--split-file", help="reuse this split_info.json instead of making a split")


def add_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=30, help="maximum epochs (default 30; early stopping may end sooner)")
    g.add_argument("--batch-size", type=int, default=64, help="batch size (default 64; the seed used 1)")
    g.add_argument("--learning-rate", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-steps", type=int, default=100)
    g.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (default 5)")
    g.add_argument("--pump-weight", type=float, default=1.0, help="weight of the pump head's loss (0: no pump head)")
    g.add_argument("--pump-horizon", type=int, default=10, help="K: the pump head predicts a start within K steps")
    g.add_argument(
        "--max-false-alarms-per-day",
        type=float,
        default=1.0,
        help="alarm budget; the threshold is chosen on validation data to meet it (default 1)",
    )
    g.add_argument("--window-stride", type=int, default=1, help="use every k-th training window (default 1)")
    g.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes (default 0)")
    g.add_argument("--checkpoint-dir", default="checkpoints", help="where last.ckpt and best.ckpt go")
    g.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.ckpt")
    g.add_argument("--save-model", default="model_v2.pth", help="model file to write (default model_v2.pth)")
    g.add_argument("--accelerator", default="auto", help="auto (CUDA with bf16 if present, else CPU), cpu, gpu")
    g.add_argument("--devices", default="auto", help="devices (processes) per node, or auto")
    g.add_argument(
        "--strategy",
        default="auto",
        help="auto, or ddp: one process per device, gradients averaged "
        "(gloo on CPU, NCCL on GPUs); --batch-size is per process",
    )
    g.add_argument("--num-nodes", type=int, default=1, help="machines in a ddp run (default 1)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_test_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("testing")
    g.add_argument("--load-model", help="model file to load")
    g.add_argument("--test-token-id", type=int, help="token to test (default: the first test token)")
    g.add_argument("--test-token-range", help="tokens to test, A-B inclusive")
    g.add_argument("--forecast", type=int, default=1000, help="short forecast steps (default 1000)")
    g.add_argument("--forecast-extended", type=int, default=3000, help="extended forecast steps (default 3000)")
    add_damping_flag(g)
    g.add_argument("--show-data-splits", action="store_true", help="draw img/data_splits.png and print the split")
    g.add_argument("--output-dir", default=".", help="where img/ and predictions/ go (default .)")


def build_trainer_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pump_trainer.py",
        description="Train and test the pumpcast forecaster (research tool, not financial advice).",
    )
    p.add_argument("--test-mode", action="store_true", help="test a saved model (--load-model) only")
    p.add_argument("-v", "--verbose", action="store_true")
    add_model_flags(p)
    add_data_flags(p)
    add_train_flags(p)
    add_test_flags(p)
    add_tracking_flags(p)
    from pumpcast.tuning import add_config_flag, add_tune_flags

    p.add_argument(
        "--optimize",
        action="store_true",
        help="tune hyperparameters with Optuna first, then train the final model with the best trial's",
    )
    add_tune_flags(p)
    add_config_flag(p)
    p.set_defaults(func=run_pump_trainer)
    return p


def train_config(args: argparse.Namespace):
    """Flags -> TrainConfig."""
    from pumpcast.model import ModelConfig
    from pumpcast.training import TrainConfig

    model = ModelConfig(
        seq_len=args.seq_length,
        horizon=args.horizon,
        embedding=args.embedding,
        patch_len=args.patch_len,
        embed_size=args.embed_size,
        nhead=args.nhead,
        num_layers=args.num_layers,
        dim_feedforward=args.dim_feedforward,
        dropout=args.dropout,
        pump_head=args.pump_weight > 0,
        pump_horizon=args.pump_horizon,
    )
    devices = args.devices if args.devices == "auto" else int(args.devices)
    return TrainConfig(
        model=model,
        data_dir=args.data_dir,
        num_tokens=args.num_tokens,
        timesteps=args.timesteps,
        split_strategy=args.split_strategy,
        train_token_ratio=args.train_token_ratio,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        patience=args.patience,
        window_stride=args.window_stride,
        seed=args.seed,
        num_workers=args.num_workers,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        save_model=args.save_model,
        accelerator=args.accelerator,
        devices=devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        pump_weight=args.pump_weight,
        max_false_alarms_per_day=args.max_false_alarms_per_day,
        split_file=args.split_file,
        progress_bar=not args.no_progress,
    )


def add_damping_flag(g) -> None:
    g.add_argument(
        "--rollout-damping",
        type=float,
        help="scale the c-th model pass's price moves by this**c "
        "(default: the value chosen on validation at training; 1 = the model's own rollout)",
    )


def add_tracking_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking (MLflow)")
    g.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder)",
    )
    g.add_argument("--experiment-name", default="pumpcast", help="MLflow experiment (default pumpcast)")
    g.add_argument("--no-mlflow", action="store_true", help="turn tracking off")
    g.add_argument("--register-model", metavar="NAME", help="register the trained model under NAME")


def is_global_rank_zero() -> bool:
    """False in the extra processes of a data-parallel run (Lightning's launcher and multi-node launches set
    these variables); they must not open tracking runs or write outputs."""
    env = os.environ
    if "RANK" in env:
        return env["RANK"] == "0"
    return env.get("NODE_RANK", "0") == "0" and env.get("LOCAL_RANK", "0") == "0"


def make_tracker(args: argparse.Namespace):
    from pumpcast.tracking import Tracker

    enabled = not getattr(args, "no_mlflow", False) and is_global_rank_zero()
    return Tracker(getattr(args, "tracking_uri", None), getattr(args, "experiment_name", "pumpcast"), enabled)


def run_pump_trainer(args: argparse.Namespace) -> None:
    """Train (unless --test-mode), then test on the selected tokens and write the plots; one MLflow run."""
    tracker = make_tracker(args)
    if getattr(args, "optimize", False) and not args.test_mode:
        from pumpcast.tuning import tune

        best = tune(args, tracker)
        for key, value in best.items():
            setattr(args, key, value)
        print(f"training the final model with the best trial's parameters: {best}")
    kind = "test" if args.test_mode else "train"
    with tracker.run(kind, tags={"pumpcast.command": kind}):
        tracker.log_params(
            {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "func" and v is not None}
        )
        trained = _test_mode_model(args) if args.test_mode else _train(args, tracker)
        if trained is None:  # a data-parallel process other than rank 0: rank 0 tests and writes
            return
        bundle, store, split, model_path = trained
        if model_path and args.register_model:
            version = tracker.register_model(model_path, args.register_model)
            if version:
                print(f"registered model {args.register_model} version {version}")
        if getattr(args, "skip_test", False):
            return
        from pumpcast.forecasting import Forecaster
        from pumpcast.tracking import flatten

        if args.rollout_damping is not None:
            bundle.rollout_damping = args.rollout_damping
        report = run_test(args, Forecaster(bundle), store, split)
        metrics = {
            k: v
            for k, v in flatten("test", {n: report[n]["metrics"] for n in ("short", "extended")}).items()
            if k.split(".")[-1] != "n"
        }
        tracker.log_metrics(metrics)
        out = Path(args.output_dir)
        for rel in (
            "predictions/metrics.json",
            "predictions/prediction_short.png",
            "predictions/prediction_extended.png",
            "img/data_splits.png",
        ):
            tracker.log_artifact(out / rel, str(Path(rel).parent))
        for t in report["tokens"]:
            tracker.log_artifact(out / "img" / f"token_{t}", f"img/token_{t}")
        tracker.log_artifact(store.split_path)


def _test_mode_model(args: argparse.Namespace):
    """--test-mode: the saved model, the store (generated if empty) and the split it was trained with."""
    from pumpcast.modelfile import load_model_file
    from pumpcast.simulator import generate_to_store
    from pumpcast.splits import Split, make_split
    from pumpcast.store import TokenDataManager

    if not args.load_model:
        raise PumpcastError("--test-mode needs --load-model MODEL.pth")
    bundle = load_model_file(args.load_model)
    store = TokenDataManager(args.data_dir)
    if len(store) == 0:
        generate_to_store(args.data_dir, args.num_tokens, args.timesteps, args.seed)
    stored = store.load_split()
    if stored and stored["strategy"] == args.split_strategy:
        split = Split.from_json(stored)
    else:
        split = make_split(
            store.lengths(), args.split_strategy, seed=args.seed, train_token_ratio=args.train_token_ratio
        )
    return bundle, store, split, None


def _train(args: argparse.Namespace, tracker):
    from pumpcast.tracking import MLflowEpochLogger
    from pumpcast.training import fit

    result = fit(train_config(args), extra_callbacks=[MLflowEpochLogger(tracker)])
    if result is None:
        return None
    where = f" -> {result.model_path}" if result.model_path else ""
    print(f"trained {result.epochs_run} epoch(s); best validation loss {result.best_val_loss:.4f}{where}")
    tracker.log_metrics({"best_val_loss": result.best_val_loss, "epochs_run": result.epochs_run})
    tracker.log_params(
        {"data.train_windows_rank0": len(result.data.train), "data.world_size": result.bundle.data_config["world_size"]}
    )
    if result.model_path:
        tracker.log_artifact(result.model_path)
    return result.bundle, result.data.store, result.data.split, result.model_path


def run_test(args: argparse.Namespace, forecaster, store, split) -> dict:
    """Short and extended forecasts from each selected token's test part, metrics beside persistence, plots."""
    from pumpcast.cli import parse_token_range
    from pumpcast.evaluation import forecast_metrics, forecast_test_tokens, format_metrics
    from pumpcast.plots import plot_correlations, plot_features, plot_forecasts, plot_splits
    from pumpcast.store import atomic_write_json

    out = Path(args.output_dir)
    if args.show_data_splits:
        path = plot_splits(split, store.lengths(), out / "img" / "data_splits.png")
        for name in ("train", "val", "test"):
            print(f"{name:>5}: tokens {split.tokens(name)}")
        print(f"wrote {path}")
    if args.test_token_range:
        tokens = parse_token_range(args.test_token_range)
    elif args.test_token_id is not None:
        tokens = [args.test_token_id]
    else:
        tokens = split.tokens("test")[:1]
    steps = max(args.forecast, args.forecast_extended)
    items = forecast_test_tokens(forecaster, store, split, tokens, steps)
    report = {
        "tokens": tokens,
        "split_strategy": split.strategy,
        "seq_length": forecaster.seq_len,
        "horizon": forecaster.horizon,
        "note": "research tool, not financial advice",
    }
    for name, n in (("short", args.forecast), ("extended", args.forecast_extended)):
        metrics = forecast_metrics([_cut(it, n) for it in items], n)
        report[name] = {"steps": n, "metrics": metrics}
        print(
            format_metrics(
                metrics,
                f"{name} forecast ({n} steps) from the start of the test part, tokens {tokens}: model vs persistence",
            )
        )
        panels = [_panel(it, n) for it in items]
        path = plot_forecasts(
            panels,
            out / "predictions" / f"prediction_{name}.png",
            f"{name} forecast: {n} steps, rolled out on the model's own predictions "
            f"(rollout damping {forecaster.bundle.rollout_damping:g})",
        )
        print(f"wrote {path}")
    atomic_write_json(out / "predictions" / "metrics.json", report)
    for t in tokens:
        tok = store.read(t)
        plot_features(tok, out / "img" / f"token_{t}" / "features.png")
        plot_correlations(tok, out / "img" / f"token_{t}" / "correlations.png")
    print(f"wrote {out / 'predictions' / 'metrics.json'} and img/token_X/ for tokens {tokens}")
    return report


def _cut(item, n: int):
    from dataclasses import replace

    return replace(item, forecast=item.forecast[:n], actual=item.actual[:n])


def _panel(item, n: int) -> dict:
    import numpy as np

    shown = min(item.history.shape[0], max(2 * n, 200))
    start = item.origin - shown
    return {
        "token_id": item.token_id,
        "history_t": np.arange(start, item.origin),
        "history": item.history[-shown:, 0],
        "forecast_t": np.arange(item.origin, item.origin + n),
        "forecast": item.forecast[:n, 0],
        "actual_t": np.arange(item.origin, item.origin + min(n, item.actual.shape[0])),
        "actual": item.actual[:n, 0],
    }
