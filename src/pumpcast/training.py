"""Training with PyTorch Lightning: the LightningModule (loss, optimiser, schedule), data preparation from
the store, interrupt-safe checkpoints and exact resume.

Model logic lives in model.py; this module owns only how it is trained.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Sampler

from pumpcast.model import ModelConfig, PumpcastTransformer
from pumpcast.modelfile import ModelBundle, save_model_file
from pumpcast.schema import PRICE, PumpcastError
from pumpcast.simulator import generate_to_store
from pumpcast.splits import Split, make_split
from pumpcast.store import TokenDataManager
from pumpcast.windows import Normalizer, WindowDataset, collate_batch, require_windows


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
    window_stride: int = 1
    patience: int = 5
    seed: int = 0
    num_workers: int = 0
    checkpoint_dir: str = "checkpoints"
    resume: bool = False
    save_model: str | None = "model_v2.pth"
    accelerator: str = "auto"
    devices: int | str = "auto"
    progress_bar: bool = True


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
        total_steps: int,
        aux_weight: float,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = PumpcastTransformer(ModelConfig.from_dict(model_config))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(x, mask)

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = self.model(batch["x"], batch["x_mask"])
        return masked_loss(pred.float(), batch["y"], batch["y_mask"], self.hparams.aux_weight)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["x"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log(
            "val_loss", self._loss(batch), prog_bar=True, on_epoch=True, batch_size=batch["x"].shape[0], sync_dist=True
        )

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
        warm, total = max(1, hp.warmup_steps), max(hp.total_steps, hp.warmup_steps + 1)

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


class EpochSeededSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch): an epoch's order is the same whether the run was
    resumed or not."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


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


@dataclass
class PreparedData:
    """The store's data for one run: split, normalisation fitted on training windows, datasets."""

    store: TokenDataManager
    split: Split
    normalizer: Normalizer
    train: WindowDataset
    val: WindowDataset
    series: dict[int, np.ndarray]


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Generate synthetic data if the store is empty, split it, fit normalisation on training windows only,
    and record split_info.json and normalization_params.npy in the store."""
    store = TokenDataManager(cfg.data_dir)
    if len(store) == 0:
        generate_to_store(cfg.data_dir, cfg.num_tokens, cfg.timesteps, cfg.seed)
    lengths = store.lengths()
    split = make_split(lengths, cfg.split_strategy, cfg.test_ratio, cfg.val_ratio, cfg.train_token_ratio, cfg.seed)
    series = {t: store.read_features(t) for t in lengths}
    L, H = cfg.model.seq_len, cfg.model.horizon
    hint = (
        f"lower --seq-length (now {L}) or --horizon (now {H}), or use longer series "
        f"(longest token: {max(lengths.values())} steps)"
    )
    train = WindowDataset(series, split.ranges["train"], L, H, stride=cfg.window_stride)
    require_windows(train, "train", hint)
    normalizer = Normalizer.fit(train, seed=cfg.seed)
    train.normalizer = normalizer
    val = WindowDataset(series, split.ranges["val"], L, H, normalizer, stride=cfg.window_stride)
    require_windows(val, "validation", hint)
    info = split.to_json() | {"seq_length": L, "horizon": H}
    store.save_split(info)
    store.save_normalization(normalizer.to_array())
    return PreparedData(store, split, normalizer, train, val, series)


@dataclass
class FitResult:
    bundle: ModelBundle
    data: PreparedData
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


def fit(cfg: TrainConfig, extra_callbacks: list[Callback] | None = None) -> FitResult:
    """Train a forecaster on the store in cfg.data_dir; returns the best model (lowest validation loss)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = prepare_data(cfg)
    use_cuda = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    loader_kw = {
        "batch_size": cfg.batch_size,
        "collate_fn": collate_batch,
        "num_workers": cfg.num_workers,
        "persistent_workers": cfg.num_workers > 0,
        "pin_memory": use_cuda,
    }
    train_loader = DataLoader(
        data.train, sampler=EpochSeededSampler(len(data.train), cfg.seed), drop_last=False, **loader_kw
    )
    val_loader = DataLoader(data.val, shuffle=False, **loader_kw)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    module = ForecastModule(
        cfg.model.to_dict(),
        cfg.learning_rate,
        cfg.weight_decay,
        min(cfg.warmup_steps, max(1, steps_per_epoch * cfg.epochs // 10)),
        steps_per_epoch * cfg.epochs,
        cfg.aux_weight,
    )
    ckpt_dir = Path(cfg.checkpoint_dir)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    history = _History()
    callbacks = [checkpoint, EarlyStopping("val_loss", patience=cfg.patience), Throughput(), history]
    trainer = pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
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
    )
    last = ckpt_dir / "last.ckpt"
    if cfg.resume and not last.is_file():
        raise PumpcastError(f"--resume: no checkpoint at {last}; train without --resume first")
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if cfg.resume else None)

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
        },
        metrics={"best_val_loss": best},
    )
    model_path = None
    if cfg.save_model and trainer.is_global_zero:
        model_path = save_model_file(bundle, cfg.save_model)
    return FitResult(bundle, data, best, trainer.current_epoch, model_path, history.rows)


def _interval(store: TokenDataManager) -> int:
    tokens = store.metadata()["tokens"]
    return int(next(iter(tokens.values()))["interval_ms"]) if tokens else 60_000
