"""Hyperparameter search with Optuna: the seed's search space plus patch length and depth, pruning from
validation curves (optuna-integration's Lightning callback), one nested MLflow run per trial, and several
worker processes (on one machine or many) sharing one study through its storage.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from pumpcast.schema import PumpcastError
from pumpcast.store import atomic_write_json

#: Search space: a list is a categorical choice; {"low", "high"[, "log"]} a range (int when both are ints).
#: Every embedding size is a multiple of 8, so every head count divides it.
DEFAULT_SPACE: dict[str, Any] = {
    "embed_size": [32, 64, 128],
    "nhead": [1, 2, 4, 8],
    "seq_length": [128, 256, 500],
    "dim_feedforward": [128, 256, 512],
    "dropout": {"low": 0.0, "high": 0.3},
    "learning_rate": {"low": 1e-4, "high": 3e-3, "log": True},
    "batch_size": [32, 64, 128],
    "patch_len": [8, 16, 32],
    "num_layers": {"low": 1, "high": 4},
}
DEFAULT_STORAGE = "sqlite:///optuna.db"


def load_space(path: str | None) -> dict[str, Any]:
    """The default space, with the entries of a JSON file (same form) replacing their defaults."""
    space = dict(DEFAULT_SPACE)
    if path:
        try:
            override = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PumpcastError(f"{path}: unreadable search space ({exc}); see DEFAULT_SPACE in tuning.py") from exc
        unknown = set(override) - set(DEFAULT_SPACE)
        if unknown:
            raise PumpcastError(
                f"{path}: unknown search-space entries {sorted(unknown)}; known: {sorted(DEFAULT_SPACE)}"
            )
        space.update(override)
    if any(e % h for e in _choices(space["embed_size"]) for h in _choices(space["nhead"])):
        raise PumpcastError("search space: every embed_size must be divisible by every nhead choice")
    return space


def _choices(entry: Any) -> list:
    return entry if isinstance(entry, list) else list(range(entry["low"], entry["high"] + 1))


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """Trial parameters from the space, keyed like the command-line flags' destinations."""
    params = {}
    for name, entry in space.items():
        if isinstance(entry, list):
            params[name] = trial.suggest_categorical(name, entry)
        elif isinstance(entry["low"], int) and isinstance(entry["high"], int):
            params[name] = trial.suggest_int(name, entry["low"], entry["high"], log=entry.get("log", False))
        else:
            params[name] = trial.suggest_float(name, entry["low"], entry["high"], log=entry.get("log", False))
    return params


def storage_for(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage; SQLite waits for its lock rather than failing when several workers write."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def _objective(args: argparse.Namespace, space: dict[str, Any], parent_run_id: str | None):
    from optuna_integration import PyTorchLightningPruningCallback

    from pumpcast.tracking import MLflowEpochLogger, Tracker
    from pumpcast.trainer_cli import train_config

    tracker = Tracker(args.tracking_uri, args.experiment_name, enabled=not args.no_mlflow)

    def objective(trial: optuna.Trial) -> float:
        from pumpcast.training import fit

        params = suggest(trial, space)
        trial_args = argparse.Namespace(**(vars(args) | params))
        cfg = replace(
            train_config(trial_args),
            save_model=None,
            resume=False,
            progress_bar=False,
            write_store_files=False,
            checkpoint_dir=str(Path(args.checkpoint_dir) / f"trial_{trial.number}"),
        )
        with tracker.run(
            f"trial {trial.number}",
            parent_run_id=parent_run_id,
            tags={"optuna.study": args.study_name, "optuna.trial": str(trial.number)},
        ):
            tracker.log_params(params)
            pruning = PyTorchLightningPruningCallback(trial, monitor="val_loss")
            try:
                result = fit(cfg, extra_callbacks=[pruning, MLflowEpochLogger(tracker)])
            except optuna.TrialPruned:
                tracker.set_tags({"optuna.state": "PRUNED"})
                raise
            tracker.log_metrics({"best_val_loss": result.best_val_loss})
            tracker.set_tags({"optuna.state": "COMPLETE"})
            return result.best_val_loss

    return objective


def _worker(
    args: argparse.Namespace, space: dict[str, Any], n_trials: int, parent_run_id: str | None, threads: int
) -> None:
    """One worker process: runs n_trials of the shared study."""
    import torch

    from pumpcast.training import quiet_lightning

    if not getattr(args, "verbose", False):
        quiet_lightning()
    torch.set_num_threads(threads)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study_name, storage=storage_for(args.storage))
    study.optimize(
        _objective(args, space, parent_run_id), n_trials=n_trials, timeout=args.timeout, catch=(PumpcastError,)
    )


def tune(args: argparse.Namespace, tracker) -> dict[str, Any]:
    """Run args.n_trials trials of the study over args.workers processes; write and return the best params.

    Each worker runs its share of n_trials, so the study gains exactly n_trials trials (pruned and failed
    ones included). On several machines, run the same command on each with a shared --storage: each adds
    its own --n-trials.
    """
    space = load_space(args.space)
    if args.strategy == "ddp":
        raise PumpcastError("tuning trials run in one process each: drop --strategy ddp (use --workers)")
    # The store is prepared once, before the workers start, so no two trials generate data at once.
    from pumpcast.simulator import generate_to_store
    from pumpcast.store import TokenDataManager

    if len(TokenDataManager(args.data_dir)) == 0:
        generate_to_store(args.data_dir, args.num_tokens, args.timesteps, args.seed)
    sampler = optuna.samplers.TPESampler(seed=args.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    optuna.create_study(
        study_name=args.study_name,
        storage=storage_for(args.storage),
        direction="minimize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    workers = max(1, args.workers)
    shares = [args.n_trials // workers + (i < args.n_trials % workers) for i in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    with tracker.run(f"tune {args.study_name}", tags={"pumpcast.command": "tune"}) as parent:
        tracker.log_params(
            {
                "n_trials": args.n_trials,
                "workers": workers,
                "storage": args.storage,
                "study_name": args.study_name,
                "space": json.dumps(space),
            }
        )
        if workers == 1:
            _worker(args, space, shares[0], parent.run_id, threads)
        else:
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker, args=(args, space, n, parent.run_id, threads)) for n in shares if n]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            failed = [p.exitcode for p in procs if p.exitcode != 0]
            if failed:
                raise PumpcastError(f"{len(failed)} tuning worker(s) failed (exit codes {failed}); see their output")
        study = optuna.load_study(study_name=args.study_name, storage=storage_for(args.storage))
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise PumpcastError(f"study {args.study_name!r} has no completed trial yet; run more trials")
        best = study.best_trial
        tracker.log_metrics({"best_val_loss": best.value, "trials": len(study.trials)})
        tracker.log_params({f"best.{k}": v for k, v in best.params.items()})
        atomic_write_json(Path(args.best_config), best.params)
        tracker.log_artifact(args.best_config)
    print(
        f"study {args.study_name!r}: {len(study.trials)} trials, best #{best.number} val_loss {best.value:.4f}; "
        f"params written to {args.best_config} (use: pumpcast train --config {args.best_config})"
    )
    return dict(best.params)


def show(args: argparse.Namespace, top: int = 10) -> str:
    """The best trials of a study as a text table."""
    try:
        study = optuna.load_study(study_name=args.study_name, storage=storage_for(args.storage))
    except KeyError as exc:
        raise PumpcastError(f"no study {args.study_name!r} in {args.storage}") from exc
    done = [t for t in study.trials if t.value is not None and math.isfinite(t.value)]
    done.sort(key=lambda t: t.value)
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    lines = [f"study {args.study_name!r} in {args.storage}: {len(study.trials)} trials {states}"]
    for t in done[:top]:
        lines.append(f"  #{t.number:<4d} val_loss {t.value:.4f}  {json.dumps(t.params)}")
    return "\n".join(lines)


def add_tune_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tuning (Optuna)")
    g.add_argument("--n-trials", type=int, default=20, help="trials this command adds to the study (default 20)")
    g.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    g.add_argument("--study-name", default="pumpcast")
    g.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help="Optuna storage URL (default sqlite:///optuna.db; "
        "any RDB URL, e.g. postgresql://..., shares one study across machines)",
    )
    g.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    g.add_argument("--space", help="JSON file replacing entries of the default search space")
    g.add_argument(
        "--best-config",
        default="best_params.json",
        help="where the best params go (default best_params.json; `pumpcast train --config FILE` reads it)",
    )


def add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="JSON of flag values (e.g. the best_params.json of `pumpcast tune`); flags given on the command line win",
    )
    p.set_defaults(_parser=p)
