"""Hyperparameter search with Optuna: the seed's search space plus patch length and depth, pruning from
validation curves (optuna-integration's Lightning callback), one nested MLflow run per trial, and several
worker processes (on one machine or many) sharing one study through its storage.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from pumpcast.config import TrackingConfig, TrainConfig, TuneConfig, replace_train, to_dict
from pumpcast.files import atomic_write_json
from pumpcast.schema import ConfigError, PumpcastError
from pumpcast.simulator import ensure_store
from pumpcast.threads import available_cores
from pumpcast.tracking import MLflowEpochLogger, Tracker

#: Search space: a list is a categorical choice; {"low", "high"[, "log"]} a range (int when both are ints).
#: Keys are settings' flat names (as flags, with _ for -) or section.field paths.
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
log = logging.getLogger(__name__)


def load_space(path: str | None) -> dict[str, Any]:
    """The default space, with the entries of a JSON file (same form) replacing their defaults."""
    space = dict(DEFAULT_SPACE)
    if path:
        try:
            override = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"{path}: unreadable search space ({exc}); see DEFAULT_SPACE in tuning.py", "space"
            ) from exc
        if not isinstance(override, dict):
            raise ConfigError(f"{path}: a search space is one JSON object; see DEFAULT_SPACE in tuning.py", "space")
        space.update(override)
    for name, entry in space.items():
        if not (isinstance(entry, list) and entry) and not (isinstance(entry, dict) and {"low", "high"} <= set(entry)):
            raise ConfigError(f"search space entry {name!r}: a list of choices or {{low, high[, log]}}", "space")
    embed, heads = space.get("embed_size", [64]), space.get("nhead", [4])
    if any(e % h for e in _choices(embed) for h in _choices(heads)):
        raise ConfigError("search space: every embed_size must be divisible by every nhead choice", "space")
    return space


def _choices(entry: Any) -> list:
    return entry if isinstance(entry, list) else list(range(entry["low"], entry["high"] + 1))


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """Trial parameters from the space, keyed as the space is."""
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
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"storage {url}: its database driver is missing ({exc.name}); install it", "storage") from exc
    except Exception as exc:  # SQLAlchemy raises many types for a bad URL or an unreachable database
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "; for PostgreSQL: pip install 'pumpcast[postgres]'" if url.startswith("postgres") else ""
        raise ConfigError(f"storage {url}: cannot open it ({first}){hint}", "storage") from exc


def _objective(
    base: TrainConfig, space: dict[str, Any], study: TuneConfig, tracking: TrackingConfig, parent: str | None
):
    from optuna_integration import PyTorchLightningPruningCallback

    from pumpcast.training import fit

    tracker = Tracker(tracking)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        cfg = trial_config(base, params, trial.number)
        with tracker.run(
            f"trial {trial.number}",
            parent_run_id=parent,
            tags={"optuna.study": study.study_name, "optuna.trial": str(trial.number)},
        ):
            tracker.log_params(params)
            pruning = PyTorchLightningPruningCallback(trial, monitor="val_loss")
            try:
                result = fit(cfg, callbacks=[pruning, MLflowEpochLogger(tracker)])
            except optuna.TrialPruned:
                tracker.set_tags({"optuna.state": "PRUNED"})
                raise
            assert result is not None  # trials run in one process each
            tracker.log_metrics({"best_val_loss": result.trained.best_val_loss})
            tracker.set_tags({"optuna.state": "COMPLETE"})
            return result.trained.best_val_loss

    return objective


def trial_config(base: TrainConfig, params: dict[str, Any], number: int) -> TrainConfig:
    """A trial's training config: the base with the trial's parameters, writing no model file, no store
    files and checkpoints of its own (base.runtime.threads is the worker's share of the cores)."""
    cfg = replace_train(base, params, "search space")
    runtime = replace(
        cfg.runtime,
        save_model=None,
        resume=False,
        progress_bar=False,
        write_store_files=False,
        checkpoint_dir=str(Path(base.runtime.checkpoint_dir) / f"trial_{number}"),
    )
    return replace(cfg, runtime=runtime)


def _worker(
    base: TrainConfig,
    space: dict[str, Any],
    study: TuneConfig,
    tracking: TrackingConfig,
    n_trials: int,
    parent: str | None,
    verbose: bool,
) -> None:
    """One worker process: runs n_trials of the shared study."""
    from pumpcast.training import quiet_lightning

    if not verbose:
        quiet_lightning()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shared = optuna.load_study(study_name=study.study_name, storage=storage_for(study.storage))
    shared.optimize(
        _objective(base, space, study, tracking, parent),
        n_trials=n_trials,
        timeout=study.timeout,
        catch=(PumpcastError,),
        callbacks=[_log_trial],
    )


def _log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    value = f"val_loss {trial.value:.4f}" if trial.value is not None else ""
    log.info("trial %d %s %s %s", trial.number, trial.state.name.lower(), value, json.dumps(trial.params))


def tune(
    base: TrainConfig,
    study: TuneConfig | None = None,
    space: dict[str, Any] | None = None,
    tracking: TrackingConfig | None = None,
    verbose: bool = False,
) -> TrainConfig:
    """Run study.n_trials trials over study.workers processes; return the best trial's whole training config
    (also written to study.best_config for `pumpcast train --config`).

    space: the search space (default: DEFAULT_SPACE updated by the JSON file study.space). Each worker runs
    its share of n_trials, so the study gains exactly n_trials trials (pruned and failed ones included). On
    several machines, run the same on each with a shared study.storage: each adds its own n_trials.
    """
    study = study or TuneConfig()
    tracking = tracking or TrackingConfig(enabled=False)
    space = space if space is not None else load_space(study.space)
    if base.runtime.strategy == "ddp":
        raise ConfigError(
            "tuning trials run in one process each: use strategy auto (and workers for parallelism)", "strategy"
        )
    for name in space:  # a space entry that names no setting fails here, not in every trial
        entry = space[name]
        replace_train(base, {name: entry[0] if isinstance(entry, list) else entry["low"]}, "search space")
    storage = storage_for(study.storage)  # a bad URL is refused before any work
    ensure_store(base.data)  # once, before the workers start, so no two trials generate data at once
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    sampler = optuna.samplers.TPESampler(seed=base.data.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    optuna.create_study(
        study_name=study.study_name,
        storage=storage,
        direction="minimize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    workers = study.workers
    shares = [study.n_trials // workers + (i < study.n_trials % workers) for i in range(workers)]
    threads = base.runtime.threads or max(1, available_cores() // workers)
    base = replace(base, runtime=replace(base.runtime, threads=threads))
    log.info(
        "study %r: %d trial(s) over %d worker(s), %d thread(s) each", study.study_name, study.n_trials, workers, threads
    )
    tracker = Tracker(tracking)
    with tracker.run(f"tune {study.study_name}", tags={"pumpcast.command": "tune"}) as parent:
        tracker.log_params(
            {
                "n_trials": study.n_trials,
                "workers": workers,
                "storage": study.storage,
                "study_name": study.study_name,
                "space": json.dumps(space),
            }
        )
        args = (base, space, study, tracking)
        if workers == 1:
            _worker(*args, shares[0], parent.run_id, verbose)
        else:
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker, args=(*args, n, parent.run_id, verbose)) for n in shares if n]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            failed = [p.exitcode for p in procs if p.exitcode != 0]
            if failed:
                raise PumpcastError(f"{len(failed)} tuning worker(s) failed (exit codes {failed}); see their output")
        done = optuna.load_study(study_name=study.study_name, storage=storage_for(study.storage))
        complete = [t for t in done.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise PumpcastError(f"study {study.study_name!r} has no completed trial yet; run more trials")
        best = done.best_trial
        best_cfg = replace_train(base, best.params, "best trial")
        tracker.log_metrics({"best_val_loss": best.value, "trials": len(done.trials)})
        tracker.log_params({f"best.{k}": v for k, v in best.params.items()})
        atomic_write_json(Path(study.best_config), to_dict(best_cfg.sections()))
        tracker.log_artifact(study.best_config)
    print(
        f"study {study.study_name!r}: {len(done.trials)} trials, best #{best.number} val_loss {best.value:.4f} "
        f"with {json.dumps(best.params)}; its whole training config is in {study.best_config} "
        f"(use: pumpcast train --config {study.best_config})"
    )
    return best_cfg


def show(study: TuneConfig, top: int = 10) -> str:
    """The best trials of a study as a text table."""
    try:
        loaded = optuna.load_study(study_name=study.study_name, storage=storage_for(study.storage))
    except KeyError as exc:
        raise PumpcastError(f"no study {study.study_name!r} in {study.storage}") from exc
    done = [t for t in loaded.trials if t.value is not None and math.isfinite(t.value)]
    done.sort(key=lambda t: t.value)
    states: dict[str, int] = {}
    for t in loaded.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    lines = [f"study {study.study_name!r} in {study.storage}: {len(loaded.trials)} trials {states}"]
    for t in done[:top]:
        lines.append(f"  #{t.number:<4d} val_loss {t.value:.4f}  {json.dumps(t.params)}")
    return "\n".join(lines)
