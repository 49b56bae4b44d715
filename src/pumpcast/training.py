"""Training with PyTorch Lightning: the LightningModule (loss, optimiser, schedule), data preparation from
the store, interrupt-safe checkpoints and exact resume.

Model logic lives in model.py; this module owns only how it is trained.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, Sampler

from pumpcast.forecasting import Forecaster
from pumpcast.model import ModelConfig, PumpcastTransformer
from pumpcast.modelfile import ModelBundle, save_model_file
from pumpcast.pumps import PUMP_TARGETS, pump_labels
from pumpcast.schema import PRICE, PumpcastError
from pumpcast.simulator import generate_to_store
from pumpcast.splits import Split, make_split
from pumpcast.store import TokenDataManager
from pumpcast.windows import Normalizer, WindowDataset, collate_batch, window_span


def quiet_lightning() -> None:
    """Keep the terminal for pumpcast's own output: no framework tips, no known-harmless deprecations."""
    for name in ("lightning.pytorch", "lightning.fabric", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning 2.6 on torch 2.13
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # per-process training metrics are rank 0's shard's; validation loss is averaged over processes
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")


@dataclass
class TrainConfig:
    """Everything a training run depends on; the CLI fills it from flags."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data_dir: str = "training-data"
    num_tokens: int = 5  # synthetic tokens generated when the store is empty
    timesteps: int = 4000
    split_strategy: str = "time"
    train_token_ratio: float = 0.6
    test_ratio: float = 0.4
    val_ratio: float = 0.2
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    aux_weight: float = 0.5  # weight of the non-price features in the loss
    pump_weight: float = 1.0  # weight of the pump head's loss; 0 trains no pump head
    max_false_alarms_per_day: float = 1.0  # the alarm threshold's budget, applied on validation data
    split_file: str | None = None  # a split_info.json to reuse instead of making a split
    window_stride: int = 1
    patience: int = 5
    seed: int = 0
    num_workers: int = 0
    checkpoint_dir: str = "checkpoints"
    resume: bool = False
    save_model: str | None = "model_v2.pth"
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"  # "ddp" for data-parallel processes (gloo on CPU, NCCL on GPUs)
    num_nodes: int = 1
    ddp_timeout_s: int = 300  # a process that stops answering fails the run instead of hanging it
    write_store_files: bool = True  # split_info.json and normalization_params.npy (tuning trials skip them)
    progress_bar: bool = True


def pump_loss(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the three pump outputs, positives up-weighted (pumps are rare); windows of
    tokens whose events are unknown (NaN labels) are left out."""
    known = torch.isfinite(labels)
    if not known.any():
        return logits.sum() * 0.0
    err = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.nan_to_num(labels), pos_weight=pos_weight, reduction="none"
    )
    return (err * known).sum() / known.sum()


def masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """Huber loss (robust to rug-pull-sized jumps) over available target values; price weighted 1, the other
    features aux_weight."""
    w = torch.full((pred.shape[-1],), aux_weight, device=pred.device, dtype=pred.dtype)
    w[PRICE] = 1.0
    m = mask.to(pred.dtype) * w
    err = torch.nn.functional.huber_loss(pred, target, reduction="none", delta=1.0)
    return (err * m).sum() / m.sum().clamp_min(1.0)


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

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(x, mask)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, pump loss): forecast loss plus pump_weight x the pump head's loss."""
        pred, pump_logits = self.model(batch["x"], batch["x_mask"])
        loss = masked_loss(pred.float(), batch["y"], batch["y_mask"], self.hparams.aux_weight)
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
    """Data for one run. prepare_data (global rank 0 only): generate synthetic data if the store is empty,
    split, fit the normalisation on training windows, record both in the store. setup (every process): load
    only this process's shard of tokens (balanced by window count), so no process holds the whole store."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        self.prepare_data_per_node = False
        self.store = TokenDataManager(cfg.data_dir)
        self.split: Split | None = None
        self.normalizer: Normalizer | None = None
        self.train: WindowDataset | None = None
        self.val: WindowDataset | None = None
        self.samplers: dict[str, ShardSampler] = {}
        self.pos_weight = [1.0, 1.0, 1.0]

    def prepare_data(self) -> None:
        cfg, store = self.cfg, self.store
        if len(store) == 0:
            generate_to_store(cfg.data_dir, cfg.num_tokens, cfg.timesteps, cfg.seed)
        lengths = store.lengths()
        split = (
            load_split_file(cfg.split_file, lengths)
            if cfg.split_file
            else make_split(lengths, cfg.split_strategy, cfg.test_ratio, cfg.val_ratio, cfg.train_token_ratio, cfg.seed)
        )
        L, H = cfg.model.seq_len, cfg.model.horizon
        hint = (
            f"lower --seq-length (now {L}) or --horizon (now {H}), or use longer series "
            f"(longest token: {max(lengths.values())} steps)"
        )
        for name, label in (("train", "train"), ("val", "validation")):
            if not any(window_span(lengths[t], r, L, H)[1] for t, r in split.ranges[name].items()):
                raise PumpcastError(f"{label} split has no window of {L} input + {H} target steps; {hint}")
        self.split = split
        self.normalizer = Normalizer.fit_store(store, split.ranges["train"], L, H, cfg.window_stride, seed=cfg.seed)
        if cfg.write_store_files:
            store.save_split(split.to_json() | {"seq_length": L, "horizon": H})
            store.save_normalization(self.normalizer.to_array())

    def setup(self, stage: str) -> None:
        if self.split is None:  # a process other than rank 0 reads what rank 0 prepared
            self.split = Split.from_json(self.store.load_split())
            self.normalizer = Normalizer.from_array(self.store.load_normalization())
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        lengths = self.store.lengths()
        L, H, stride = self.cfg.model.seq_len, self.cfg.model.horizon, self.cfg.window_stride
        K = self.cfg.model.pump_horizon
        for name in ("train", "val"):
            ranges = self.split.ranges[name]
            counts = {t: window_span(lengths[t], r, L, H, stride)[1] for t, r in ranges.items()}
            mine = shard_tokens(counts, world)[rank]
            tokens = {t: self.store.read(t) for t in mine}
            labels = {t: pump_labels(len(tok.features), tok.events, K) for t, tok in tokens.items() if tok.events_known}
            ds = WindowDataset(
                {t: tok.features for t, tok in tokens.items()},
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
            self.samplers[name] = ShardSampler(len(ds), per_rank, self.cfg.seed, rank, shuffle=name == "train")
            setattr(self, name, ds)

    def _loader(self, name: str) -> DataLoader:
        cfg = self.cfg
        return DataLoader(
            getattr(self, name),
            batch_size=cfg.batch_size,
            sampler=self.samplers[name],
            collate_fn=collate_batch,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")


@dataclass
class FitResult:
    bundle: ModelBundle
    data: PumpcastDataModule
    best_val_loss: float
    epochs_run: int
    model_path: Path | None
    history: list[dict[str, float]]


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


def _strategy(cfg: TrainConfig) -> str | DDPStrategy:
    if cfg.strategy == "ddp":
        return DDPStrategy(timeout=timedelta(seconds=cfg.ddp_timeout_s))
    return cfg.strategy


def fit(cfg: TrainConfig, extra_callbacks: list[Callback] | None = None) -> FitResult | None:
    """Train a forecaster on the store in cfg.data_dir; returns the best model (lowest validation loss).

    With several processes (--strategy ddp) every process trains its shard; only global rank 0 writes
    checkpoints and the model file and gets a result, the others get None.
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    use_cuda = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    data = PumpcastDataModule(cfg)
    module = ForecastModule(
        cfg.model.to_dict(),
        cfg.learning_rate,
        cfg.weight_decay,
        cfg.warmup_steps,
        cfg.aux_weight,
        cfg.pump_weight if cfg.model.pump_head else 0.0,
    )
    ckpt_dir = Path(cfg.checkpoint_dir)
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
    history = _History()
    callbacks = [
        checkpoint,
        latest,
        EarlyStopping("val_loss", patience=cfg.patience),
        Throughput(),
        _SamplerEpoch(data),
        history,
    ]
    trainer = pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=_strategy(cfg),
        precision="bf16-mixed" if use_cuda else "32-true",
        gradient_clip_val=1.0,
        deterministic=not use_cuda,
        callbacks=callbacks + list(extra_callbacks or []),
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        use_distributed_sampler=False,  # the data module shards by token itself
    )
    last = ckpt_dir / "last.ckpt"
    if cfg.resume and not last.is_file():
        raise PumpcastError(f"--resume: no checkpoint at {last}; train without --resume first")
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if cfg.resume else None)
    if not trainer.is_global_zero:
        return None

    best_path = checkpoint.best_model_path or str(last)
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    model = PumpcastTransformer(cfg.model)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model.eval()
    best = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan")
    bundle = ModelBundle(
        model=model,
        normalizer=data.normalizer,
        data_config={
            "interval_ms": _interval(data.store),
            "split_strategy": cfg.split_strategy,
            "data_dir": str(cfg.data_dir),
            "seed": cfg.seed,
            "world_size": trainer.world_size,
            "batch_size_per_process": cfg.batch_size,
            "global_batch_size": cfg.batch_size * trainer.world_size,
        },
        metrics={"best_val_loss": best},
    )
    if cfg.model.pump_head:
        bundle.pump = calibrate_pump_head(bundle, data.store, data.split.ranges["val"], cfg.max_false_alarms_per_day)
    bundle.rollout_damping = Forecaster(bundle).fit_damping(data.store, data.split.ranges["val"])
    model_path = save_model_file(bundle, cfg.save_model) if cfg.save_model else None
    return FitResult(bundle, data, best, trainer.current_epoch, model_path, history.rows)


class _SamplerEpoch(Callback):
    """Tells the shard samplers which epoch starts (Lightning only does so for samplers it made itself)."""

    def __init__(self, data: PumpcastDataModule):
        self.data = data

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sampler in self.data.samplers.values():
            sampler.set_epoch(trainer.current_epoch)


def _interval(store: TokenDataManager) -> int:
    tokens = store.metadata()["tokens"]
    return int(next(iter(tokens.values()))["interval_ms"]) if tokens else 60_000


def load_split_file(path: str, lengths: dict[int, int]) -> Split:
    """A split_info.json written earlier (or by hand), checked against the store's tokens."""
    import json

    try:
        split = Split.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PumpcastError(f"{path}: not a readable split_info.json ({exc})") from exc
    for name, ranges in split.ranges.items():
        for t, (a, b) in ranges.items():
            if t not in lengths or not 0 <= a <= b <= lengths[t]:
                raise PumpcastError(f"{path}: {name} range {a}-{b} of token {t} does not fit the store")
    return split


def calibrate_pump_head(
    bundle: ModelBundle,
    store: TokenDataManager,
    val_ranges: dict[int, tuple[int, int]],
    max_false_alarms_per_day: float,
) -> dict[str, Any]:
    """On validation data only: Platt-scale the pump head, choose which output raises alarms ("now" or "any",
    by validation recall within the false-alarm budget, then fewer false alarms), and choose the alarm
    thresholds of the model and of the baselines to the budget. Everything evaluate and detect use later
    comes from here."""
    from pumpcast.evaluation import score_ranges
    from pumpcast.pumps import TokenScores, calibrated, choose_threshold, event_metrics, fit_platt

    K = bundle.config.pump_horizon
    scored = score_ranges(Forecaster(bundle), store, val_ranges)
    if not scored:
        return {
            "horizon": K,
            "calibration": [[1.0, 0.0]] * 3,
            "threshold": float("inf"),
            "max_false_alarms_per_day": max_false_alarms_per_day,
            "baseline_thresholds": {},
            "note": "no validation token with known events: uncalibrated, no alarms",
        }
    keep = [np.isfinite(r.logits[:, 0]) for r in scored]
    logits = [r.logits[k] for r, k in zip(scored, keep, strict=True)]
    labels = [pump_labels(len(r.token.features), r.token.events, K)[k] for r, k in zip(scored, keep, strict=True)]
    all_logits, all_labels = np.concatenate(logits), np.concatenate(labels)
    calibration = [list(fit_platt(all_logits[:, k], all_labels[:, k])) for k in range(3)]
    choices = []
    for output in ("any", "now"):  # "soon" alone is too weak a signal to alarm on
        k = PUMP_TARGETS.index(output)
        its = [
            TokenScores(r.token.token_id, calibrated(r.logits, calibration)[:, k], r.token.events, r.steps_per_day)
            for r in scored
        ]
        th = choose_threshold(its, K, max_false_alarms_per_day)
        m = event_metrics(its, th, K)
        choices.append((-np.nan_to_num(m["recall"]), m["false_alarms_per_day"], output, th, m))
    _, _, alarm_output, threshold, val_metrics = min(choices, key=lambda c: c[:2])
    baseline_thresholds = {
        name: choose_threshold(
            [TokenScores(r.token.token_id, r.baselines[name], r.token.events, r.steps_per_day) for r in scored],
            K,
            max_false_alarms_per_day,
        )
        for name in scored[0].baselines
    }
    return {
        "horizon": K,
        "calibration": calibration,
        "alarm_output": alarm_output,
        "threshold": threshold,
        "max_false_alarms_per_day": max_false_alarms_per_day,
        "baseline_thresholds": baseline_thresholds,
        "val_metrics": val_metrics,
    }
