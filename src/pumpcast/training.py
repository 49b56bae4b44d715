"""Making a model file from a store, in three steps that also stand alone:

- `train`: fit the network with PyTorch Lightning on a split (given, or resolved from the config) with a
  normaliser (given, or fitted on the training windows) and optionally initial weights: the LightningModule
  (loss, optimiser, schedule), the data module (sharded per process), interrupt-safe checkpoints, exact resume;
- `calibrate` (calibration.py): choose on validation data what the model file keeps besides weights (the
  pump calibration, the forecast calibration, the rollout damping);
- `package`: the ModelBundle that `modelfile.save_model_file` writes.

`fit(config)` runs the three and saves the file; it is what `pumpcast train` calls. The network itself lives
in model.py and its loss in losses.py.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Sampler

from pumpcast.calibration import calibrate
from pumpcast.channels import model_inputs
from pumpcast.config import ModelConfig, TrainConfig, flat_values
from pumpcast.detection import pump_logits
from pumpcast.events import pump_labels
from pumpcast.losses import get_loss, pump_loss
from pumpcast.model import PumpcastTransformer
from pumpcast.modelfile import DataInfo, ModelBundle, load_model_file, save_model_file
from pumpcast.schema import ConfigError, PumpcastError
from pumpcast.simulator import ensure_store
from pumpcast.splits import Split, resolve_split
from pumpcast.store import TokenDataManager
from pumpcast.threads import set_threads
from pumpcast.tracking import MLflowEpochLogger, Tracker
from pumpcast.windows import Normalizer, WindowDataset, collate_batch, window_span

log = logging.getLogger(__name__)


def quiet_lightning() -> None:
    """Keep the terminal for pumpcast's own output: no framework tips, no known-harmless deprecations."""
    for name in ("lightning.pytorch", "lightning.fabric", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning 2.6 on torch 2.13
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # per-process training metrics are rank 0's shard's; validation loss is averaged over processes
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")


class ForecastModule(pl.LightningModule):
    """Training logic around PumpcastTransformer: loss, AdamW, warm-up then cosine decay, RNG in checkpoints."""

    def __init__(
        self,
        model_config: dict,
        learning_rate: float,
        weight_decay: float,
        warmup_steps: int,
        aux_weight: float,
        pump_weight: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = PumpcastTransformer(ModelConfig.from_dict(model_config))
        self.forecast_loss = get_loss(self.model.config.loss)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(x, mask)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, pump loss): forecast loss plus pump_weight x the pump head's loss."""
        pred, pump_logits = self.model(batch["x"], batch["x_mask"])
        loss = self.forecast_loss(pred.float(), batch["y"], batch["y_mask"], self.hparams.aux_weight)
        if pump_logits is None:
            return loss, torch.zeros((), device=loss.device)
        pump = pump_loss(pump_logits.float(), batch["pump"], self.pos_weight.to(loss.device))
        return loss + self.hparams.pump_weight * pump, pump

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        self.pos_weight = torch.tensor(dm.pos_weight if dm is not None else [1.0, 1.0, 1.0], dtype=torch.float32)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["x"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, pump = self._loss(batch)
        n = batch["x"].shape[0]
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, batch_size=n, sync_dist=True)
        if self.model.pump is not None:
            self.log("val_pump_loss", pump, on_epoch=True, batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
        total = max(2, int(self.trainer.estimated_stepping_batches))
        warm = max(1, min(hp.warmup_steps, total // 10))

        def factor(step: int) -> float:  # linear warm-up, then cosine decay to 10% of the peak
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_epoch_end(self) -> None:
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """RNG states as tensors and plain lists, so the checkpoint stays loadable with weights_only=True."""
        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the global state seed_everything sets)
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            kind, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
            state, version, gauss_py = rng["python"]
            random.setstate((version, tuple(state), gauss_py))


def positive_weight(labels: np.ndarray, cap: float = 100.0) -> list[float]:
    """Per pump output, negatives / positives among known labels (capped): balances rare pumps in the loss."""
    out = []
    for k in range(labels.shape[1]):
        y = labels[:, k][np.isfinite(labels[:, k])]
        pos = float(y.sum())
        out.append(float(min(cap, max(1.0, (y.size - pos) / pos))) if pos > 0 else 1.0)
    return out


class ShardSampler(Sampler[int]):
    """Exactly `length` window indices of this process's shard per epoch, shuffled with a generator seeded by
    (seed, epoch, rank): an epoch's order is the same whether the run was resumed or not, and every process
    runs the same number of batches, so data-parallel training never waits on a process that ran out."""

    def __init__(self, n_local: int, length: int, seed: int, rank: int = 0, shuffle: bool = True):
        self.n_local, self.length, self.seed, self.rank, self.shuffle = n_local, length, seed, rank, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch * 1_009 + self.rank)
            order = torch.randperm(self.n_local, generator=g)
        else:
            order = torch.arange(self.n_local)
        reps = -(-self.length // max(1, self.n_local))  # a shard smaller than its share repeats windows
        return iter(order.repeat(reps)[: self.length].tolist())

    def __len__(self) -> int:
        return self.length


def shard_tokens(counts: dict[int, int], world: int) -> list[list[int]]:
    """Tokens per process, balanced by window count (largest first onto the lightest shard); deterministic."""
    shards: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for t in sorted(counts, key=lambda t: (-counts[t], t)):
        k = min(range(world), key=lambda i: (load[i], i))
        shards[k].append(t)
        load[k] += counts[t]
    return [sorted(s) for s in shards]


class Interrupted(PumpcastError):
    """Training stopped by SIGTERM or SIGINT after writing a checkpoint to resume from; exit_code is what a
    shell reports for the signal (143, 130)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class _CheckpointOnInterrupt(Callback):
    """On SIGTERM (Lightning stops after the current batch) or Ctrl-C, write last.ckpt from where training
    stands, so `--resume` continues from there.

    Once an epoch's last training batch is done, a checkpoint from there would resume past the epoch's
    validation (Lightning sees its batches done and skips it, and early stopping finds no val_loss). So an
    interrupt after the last batch or during validation keeps the previous epoch's last.ckpt, and the resume
    replays the interrupted epoch from its start (in the first epoch there is none yet: nothing to resume).
    """

    def __init__(self, path: Path, resumed: bool):
        self.path = path
        self.signum: int | None = None
        self.epoch = 0
        self.resumable = resumed  # path holds this run's state: the checkpoint it resumed from, or a later one

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.resumable = True  # the last-epoch checkpoint (an earlier callback) has just been written

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException | KeyboardInterrupt):
            self.signum = signal.SIGTERM if isinstance(exception, SIGTERMException) else signal.SIGINT
            self.epoch = trainer.current_epoch
            if not (trainer.validating or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
                trainer.save_checkpoint(self.path)
                self.resumable = True


def _check_resume(last: Path, best: Path, epochs: int) -> None:
    """A one-line error, before anything runs, when --resume has nothing usable to continue from."""
    if not last.is_file():
        raise ConfigError(f"resume: no checkpoint at {last}; train without resume first", "resume")
    fix = (
        f"copy {best} over it to resume from the best epoch, or train without resume"
        if best.is_file()
        else ("train without resume")
    )
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise ConfigError(f"resume: {last} is damaged ({type(exc).__name__}); {fix}", "resume") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "epoch" not in ckpt:
        raise ConfigError(f"resume: {last} is not a pumpcast training checkpoint; {fix}", "resume")
    if int(ckpt["epoch"]) > epochs:
        raise ConfigError(
            f"resume: {last} is at epoch {int(ckpt['epoch']) + 1}; set epochs above that to continue", "epochs"
        )
    log.info("resuming from %s: epoch %d, step %d", last, int(ckpt["epoch"]) + 1, int(ckpt.get("global_step", 0)))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed: Ctrl-C, SIGTERM or kill -9 at any moment leaves
    the previous checkpoint whole."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class Throughput(Callback):
    """Samples per second on the progress bar (smoothed) and per epoch as a metric."""

    def __init__(self) -> None:
        self.ema = 0.0
        self.t_batch = self.t_epoch = 0.0
        self.n_epoch = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t_epoch, self.n_epoch = time.perf_counter(), 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.t_batch = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = batch["x"].shape[0]
        self.n_epoch += n
        rate = n / max(time.perf_counter() - self.t_batch, 1e-9)
        self.ema = rate if self.ema == 0 else 0.9 * self.ema + 0.1 * rate
        pl_module.log("samples_per_s", self.ema, prog_bar=True, on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rate = self.n_epoch / max(time.perf_counter() - self.t_epoch, 1e-9)
        pl_module.log("epoch_samples_per_s", rate)


class PumpcastDataModule(pl.LightningDataModule):
    """Data for one run. prepare_data (global rank 0 only): make sure the store has data, take the split and
    the normaliser given or make them (a split from the config; a normaliser fitted on training windows), and
    record both in the store. setup (every process): load only this process's shard of tokens (balanced by
    window count), so no process holds the whole store."""

    def __init__(self, cfg: TrainConfig, split: Split | None = None, normalizer: Normalizer | None = None):
        super().__init__()
        self.cfg = cfg
        self.prepare_data_per_node = False
        self.store = TokenDataManager(cfg.data.data_dir)
        self.split = split
        self.normalizer = normalizer
        self.train: WindowDataset | None = None
        self.val: WindowDataset | None = None
        self.samplers: dict[str, ShardSampler] = {}
        self.pos_weight = [1.0, 1.0, 1.0]

    def prepare_data(self) -> None:
        data, store = self.cfg.data, ensure_store(self.cfg.data)
        lengths = store.lengths()
        split = self.split or resolve_split(store, data)
        L, H = self.cfg.model.seq_len, self.cfg.model.horizon
        for name, label in (("train", "train"), ("val", "validation")):
            if not any(window_span(lengths[t], r, L, H)[1] for t, r in split.ranges[name].items()):
                raise ConfigError(
                    f"{label} split has no window of {L} input + {H} target steps; lower seq_len (now {L}) or "
                    f"horizon (now {H}), or use longer series (longest token: {max(lengths.values())} steps)",
                    "seq_len",
                    "horizon",
                )
        self.split = split
        log.info(
            "split %s: %d train, %d validation, %d test token(s)",
            split.strategy,
            *(len(split.tokens(n)) for n in ("train", "val", "test")),
        )
        if self.normalizer is None:
            self.normalizer = Normalizer.fit_store(
                store, split.ranges["train"], L, H, data.window_stride, seed=data.seed
            )
            log.info("normalisation fitted on training windows")
        if self.cfg.runtime.write_store_files:
            store.save_split(split.to_json() | {"seq_length": L, "horizon": H})
            store.save_normalization(self.normalizer.to_array())

    def setup(self, stage: str) -> None:
        if self.split is None or self.normalizer is None:  # a process other than rank 0 reads what rank 0 made
            self.split = Split.from_json(self.store.load_split())
            self.normalizer = Normalizer.from_array(self.store.load_normalization())
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        lengths = self.store.lengths()
        L, H, stride = self.cfg.model.seq_len, self.cfg.model.horizon, self.cfg.data.window_stride
        K = self.cfg.model.pump_horizon
        for name in ("train", "val"):
            ranges = self.split.ranges[name]
            counts = {t: window_span(lengths[t], r, L, H, stride)[1] for t, r in ranges.items()}
            mine = shard_tokens(counts, world)[rank]
            tokens = {t: self.store.read(t) for t in mine}
            labels = {
                t: pump_labels(len(tok.features), tok.events, K, tok.interval_ms)
                for t, tok in tokens.items()
                if tok.events_known
            }
            ds = WindowDataset(
                {t: model_inputs(tok, self.cfg.model.groups) for t, tok in tokens.items()},
                {t: ranges[t] for t in mine},
                L,
                H,
                self.normalizer,
                stride,
                labels,
            )
            if name == "train":
                self.pos_weight = positive_weight(ds.flat_labels) if ds.flat_labels is not None else [1.0] * 3
            per_rank = max(1, sum(counts.values()) // world)
            self.samplers[name] = ShardSampler(len(ds), per_rank, self.cfg.data.seed, rank, shuffle=name == "train")
            setattr(self, name, ds)

    def _loader(self, name: str) -> DataLoader:
        workers = self.cfg.runtime.num_workers
        return DataLoader(
            getattr(self, name),
            batch_size=self.cfg.optim.batch_size,
            sampler=self.samplers[name],
            collate_fn=collate_batch,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")


class _History(Callback):
    """Per-epoch metrics, kept for the caller (and for trackers added by later layers)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k != "samples_per_s"}
        row["epoch"] = trainer.current_epoch
        self.rows.append(row)


class _EpochLine(Callback):
    """One status line per epoch when there is no progress bar (not a terminal, or --no-progress)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"{k} {float(m[k]):.4f}" for k in ("train_loss_epoch", "val_loss") if k in m]
        rate = f", {float(m['epoch_samples_per_s']):,.0f} samples/s" if "epoch_samples_per_s" in m else ""
        log.info("epoch %d/%d: %s%s", trainer.current_epoch + 1, trainer.max_epochs, ", ".join(parts), rate)


class _SamplerEpoch(Callback):
    """Tells the shard samplers which epoch starts (Lightning only does so for samplers it made itself)."""

    def __init__(self, data: PumpcastDataModule):
        self.data = data

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sampler in self.data.samplers.values():
            sampler.set_epoch(trainer.current_epoch)


@dataclass
class Trained:
    """What `train` gives global rank 0: the best network (lowest validation loss) and what it was fitted on."""

    model: PumpcastTransformer
    normalizer: Normalizer
    split: Split
    store: TokenDataManager
    best_val_loss: float
    epochs_run: int
    world_size: int
    train_windows: int  # rank 0's training windows
    history: list[dict[str, float]]


def _strategy(cfg: TrainConfig) -> str | DDPStrategy:
    if cfg.runtime.strategy == "ddp":
        return DDPStrategy(timeout=timedelta(seconds=cfg.runtime.ddp_timeout_s))
    return cfg.runtime.strategy


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The network's config: cfg.model with a pump head exactly when the pump loss has weight."""
    return replace(cfg.model, pump_head=cfg.pump.pump_weight > 0)


def train(
    cfg: TrainConfig,
    split: Split | None = None,
    normalizer: Normalizer | None = None,
    init_weights: dict[str, torch.Tensor] | None = None,
    callbacks: list[Callback] | None = None,
) -> Trained | None:
    """Train the network on the store in cfg.data.data_dir. With a split and a normaliser given (walk-forward
    retraining, fine-tuning) they are used as they are; otherwise they come from the config and the training
    windows. init_weights (a state dict) starts the network from them instead of a random initialisation.

    With several processes (strategy ddp) every process trains its shard; only global rank 0 writes
    checkpoints and gets a result, the others get None.
    """
    rt = cfg.runtime
    pl.seed_everything(cfg.data.seed, workers=True, verbose=False)
    processes = rt.devices if rt.strategy == "ddp" and isinstance(rt.devices, int) else 1
    set_threads(rt.threads, processes)
    use_cuda = torch.cuda.is_available() and rt.accelerator in ("auto", "gpu", "cuda")
    data = PumpcastDataModule(cfg, split, normalizer)
    mcfg = model_config(cfg)
    module = ForecastModule(
        mcfg.to_dict(),
        cfg.optim.learning_rate,
        cfg.optim.weight_decay,
        cfg.optim.warmup_steps,
        cfg.optim.aux_weight,
        cfg.pump.pump_weight if mcfg.pump_head else 0.0,
    )
    if init_weights is not None:
        try:
            module.model.load_state_dict(init_weights)
        except RuntimeError as exc:
            raise ConfigError(
                "init_from: the model file's network does not fit this model config; use the same model "
                f"settings (and pump_weight > 0 exactly when the file has a pump head) ({str(exc).splitlines()[0]})",
                "init_from",
            ) from exc
    ckpt_dir = Path(rt.checkpoint_dir)
    trainer, parts = _trainer(cfg, data, ckpt_dir, use_cuda, callbacks)
    last = ckpt_dir / "last.ckpt"
    if rt.resume:
        _check_resume(last, ckpt_dir / "best.ckpt", cfg.optim.epochs)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if rt.resume else None)
    except SystemExit as exc:  # Lightning ends a SIGTERM'd or Ctrl-C'd run with SystemExit
        interrupt = parts.interrupt
        if interrupt.signum is None or not trainer.is_global_zero:
            raise
        name = signal.Signals(interrupt.signum).name
        where = (
            f"checkpoint {last}; continue with --resume (same flags)"
            if interrupt.resumable
            else "no checkpoint yet (the first epoch had not ended); train again"
        )
        raise Interrupted(
            f"{name}: training stopped in epoch {interrupt.epoch + 1}; {where}", interrupt.signum
        ) from exc
    if not trainer.is_global_zero:
        return None
    if parts.stopping.stopped_epoch:
        log.info(
            "early stopping after epoch %d: val_loss has not improved for %d epoch(s)",
            parts.stopping.stopped_epoch + 1,
            cfg.optim.patience,
        )
    checkpoint = parts.checkpoint
    best_path = checkpoint.best_model_path or str(last)
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    model = PumpcastTransformer(mcfg)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    best = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan")
    assert data.split is not None and data.normalizer is not None and data.train is not None
    return Trained(
        model.eval(),
        data.normalizer,
        data.split,
        data.store,
        best,
        trainer.current_epoch,
        trainer.world_size,
        len(data.train),
        parts.history.rows,
    )


@dataclass
class _TrainerParts:
    """The callbacks `train` reads back after fitting."""

    checkpoint: ModelCheckpoint
    stopping: EarlyStopping
    history: _History
    interrupt: _CheckpointOnInterrupt


def _trainer(
    cfg: TrainConfig,
    data: PumpcastDataModule,
    ckpt_dir: Path,
    use_cuda: bool,
    callbacks: list[Callback] | None,
) -> tuple[pl.Trainer, _TrainerParts]:
    """The Lightning trainer of a run: best and last checkpoints (atomic), early stopping, the interrupt
    handler, throughput and epoch lines, and the caller's callbacks."""
    rt = cfg.runtime
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
    # Lightning's save_last only writes when another checkpoint is written (an improved val_loss); resume needs
    # the latest epoch whatever its loss, so last.ckpt has a callback of its own.
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    parts = _TrainerParts(
        checkpoint,
        EarlyStopping("val_loss", patience=cfg.optim.patience),
        _History(),
        _CheckpointOnInterrupt(ckpt_dir / "last.ckpt", rt.resume),
    )
    bar = rt.progress_bar and sys.stderr.isatty()
    trainer = pl.Trainer(
        max_epochs=cfg.optim.epochs,
        accelerator=rt.accelerator,
        devices=rt.devices,
        num_nodes=rt.num_nodes,
        strategy=_strategy(cfg),
        precision="bf16-mixed" if use_cuda else "32-true",
        gradient_clip_val=1.0,
        deterministic=not use_cuda,
        callbacks=[
            checkpoint,
            latest,
            parts.stopping,
            Throughput(),
            _SamplerEpoch(data),
            parts.history,
            parts.interrupt,
            *([] if bar else [_EpochLine()]),
            *(callbacks or []),
        ],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        use_distributed_sampler=False,  # the data module shards by token itself
    )
    return trainer, parts


def package(trained: Trained, cfg: TrainConfig) -> ModelBundle:
    """The model file's contents from a trained network (calibration still to come)."""
    intervals = trained.store.intervals()
    return ModelBundle(
        model=trained.model,
        normalizer=trained.normalizer,
        data=DataInfo(
            interval_ms=next(iter(intervals.values())) if intervals else 60_000,
            split_strategy=trained.split.strategy,
            data_dir=str(cfg.data.data_dir),
            seed=cfg.data.seed,
            world_size=trained.world_size,
            batch_size_per_process=cfg.optim.batch_size,
            global_batch_size=cfg.optim.batch_size * trained.world_size,
        ),
        metrics={"best_val_loss": trained.best_val_loss},
    )


def cross_fit_logits(
    cfg: TrainConfig, split: Split, init_weights: dict[str, torch.Tensor] | None = None
) -> dict[int, np.ndarray] | None:
    """Out-of-fold pump logits of every training and validation token with events: those tokens go into
    cfg.pump.cross_fit groups, and for each group a sub-model (the same recipe, its own normaliser) trains on
    every other token (the group is its validation split, for early stopping only) and scores the group over
    its ranges. No test token is in any sub-model's data. None (said) with fewer such tokens than groups."""
    store = TokenDataManager(cfg.data.data_dir)
    both: dict[int, tuple[int, int]] = {}
    for name in ("train", "val"):
        for t, (a, b) in split.ranges[name].items():
            lo, hi = both.get(t, (a, b))
            both[t] = (min(lo, a), max(hi, b))
    entries = store.entries()
    judged = sorted(t for t in both if entries[t].events > 0)
    k = cfg.pump.cross_fit
    if len(judged) < k:
        log.warning("cross-fitting skipped: %d token(s) with events, fewer than %d groups", len(judged), k)
        return None
    order = np.random.default_rng(cfg.data.seed).permutation(judged)
    groups = [sorted(int(t) for t in order[g::k]) for g in range(k)]
    out: dict[int, np.ndarray] = {}
    for g, group in enumerate(groups):
        log.info("cross-fitting: sub-model %d/%d, scoring token(s) %s out of fold", g + 1, k, group)
        ranges = {
            "train": {t: r for t, r in both.items() if t not in group},
            "val": {t: both[t] for t in group},
            "test": {},
        }
        sub_split = replace(split, ranges=ranges)
        runtime = replace(
            cfg.runtime,
            save_model=None,
            write_store_files=False,
            resume=False,
            checkpoint_dir=str(Path(cfg.runtime.checkpoint_dir) / f"crossfit{g}"),
        )
        sub_cfg = replace(cfg, pump=replace(cfg.pump, cross_fit=0), runtime=runtime)
        sub = train(sub_cfg, split=sub_split, init_weights=init_weights)
        if sub is None:  # another rank of a ddp run
            return None
        bundle = package(sub, sub_cfg)
        bundle.model.eval()
        for t in group:
            a, b = both[t]
            out[t] = pump_logits(bundle, model_inputs(store.read(t), cfg.model.groups), a, b)
    return out


@dataclass
class FitResult:
    bundle: ModelBundle
    trained: Trained
    model_path: Path | None


def fit(
    cfg: TrainConfig,
    tracker: Tracker | None = None,
    callbacks: list[Callback] | None = None,
    split: Split | None = None,
) -> FitResult | None:
    """Train, calibrate and package a model, and save it to cfg.runtime.save_model (if set). With
    cfg.runtime.init_from, the weights and the normaliser start from that model file (fine-tuning); with a
    split (a backtest's fold), that split instead of the one the config makes.

    With a tracker, the run's settings, per-epoch metrics and the model file go into its active run. In a
    data-parallel run, processes other than global rank 0 get None.
    """
    normalizer, weights = None, None
    if cfg.runtime.init_from:
        start = load_model_file(cfg.runtime.init_from)
        normalizer, weights = start.normalizer, start.model.state_dict()
    if tracker is not None:
        tracker.log_params(flat_values(cfg.sections()))
        callbacks = [*(callbacks or []), MLflowEpochLogger(tracker)]
    trained = train(cfg, split=split, normalizer=normalizer, init_weights=weights, callbacks=callbacks)
    if trained is None:
        return None
    ranges = trained.split.ranges
    out_of_fold = cross_fit_logits(cfg, trained.split, weights) if cfg.pump.cross_fit and cfg.pump.pump_weight else None
    bundle = calibrate(
        package(trained, cfg),
        trained.store,
        ranges["val"],
        cfg.pump.max_false_alarms_per_day,
        ranges["train"],
        out_of_fold,
        cfg.pump.cross_fit,
    )
    path = save_model_file(bundle, cfg.runtime.save_model) if cfg.runtime.save_model else None
    if tracker is not None:
        tracker.log_metrics({"best_val_loss": trained.best_val_loss, "epochs_run": trained.epochs_run})
        tracker.log_params({"data.train_windows_rank0": trained.train_windows, "data.world_size": trained.world_size})
        if path:
            tracker.log_artifact(path)
    return FitResult(bundle, trained, path)
