"""MLflow tracking that never costs a model: runs, params, per-epoch metrics, artifacts, the model registry.

Every train, test and tune run is an MLflow run. The default store is the local SQLite file mlflow.db (so
`mlflow ui` in the working folder shows the runs); --tracking-uri or MLFLOW_TRACKING_URI points elsewhere.
Any tracking failure (a server that is down, a locked database) is reported once as a warning and turns
tracking off for the rest of the process: training, outputs and the model file carry on.

We use MlflowClient directly instead of Lightning's MLFlowLogger: the logger raises when the server is down
and knows nothing of nested tuning runs, registry entries or test-mode runs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from pumpcast.config import TrackingConfig
from pumpcast.schema import FEATURES

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
#: Where the registered model's pyfunc code lives (MLflow "models from code": nothing is pickled).
PYFUNC_CODE = Path(__file__).with_name("mlflow_pyfunc.py")


def resolve_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the local SQLite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def is_global_rank_zero() -> bool:
    """False in the extra processes of a data-parallel run (Lightning's launcher and multi-node launches set
    these variables); they must not open tracking runs or write outputs."""
    env = os.environ
    if "RANK" in env:
        return env["RANK"] == "0"
    return env.get("NODE_RANK", "0") == "0" and env.get("LOCAL_RANK", "0") == "0"


class Tracker:
    """Fault-tolerant MLflow client for one process; a disabled tracker accepts every call and does nothing.
    Tracking is off in the extra processes of a data-parallel run."""

    def __init__(self, config: TrackingConfig | None = None):
        config = config or TrackingConfig()
        self.uri = resolve_uri(config.tracking_uri)
        self.experiment = config.experiment_name
        self.enabled = config.enabled and is_global_rank_zero()
        self.run_id: str | None = None
        self._client = None
        self._experiment_id: str | None = None

    # -------------------------------------------------------------- plumbing
    def _fail(self, what: str, exc: BaseException) -> None:
        if self.enabled:  # once: tracking is off from here on
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            log.warning(
                "warning: MLflow tracking at %s is unavailable (%s while %s: %s); continuing without tracking",
                self.uri,
                type(exc).__name__,
                what,
                first,
            )
        self.enabled = False

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # tracking must never stop training
            self._fail(what, exc)
            return None

    @property
    def client(self):
        if self._client is None:
            # A tracking server that is down should cost seconds, not the minutes of MLflow's default retries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
        return self._experiment_id

    # -------------------------------------------------------------- runs
    @contextmanager
    def run(
        self, name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> Iterator[Tracker]:
        """An MLflow run for the block; nested under parent_run_id if given. Marked FAILED or KILLED
        (pruned/interrupted) when the block raises."""
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self._call(
            "starting a run", lambda: self.client.create_run(self._experiment(), run_name=name, tags=all_tags)
        )
        previous, self.run_id = self.run_id, run.info.run_id if run else None
        status = "FINISHED"
        try:
            yield self
        except BaseException as exc:
            status = "KILLED" if type(exc).__name__ in ("TrialPruned", "KeyboardInterrupt", "Interrupted") else "FAILED"
            raise
        finally:
            if self.run_id:
                self._call("ending a run", self.client.set_terminated, self.run_id, status)
                if self.enabled and previous is None:
                    uri = self._call("reading the run", lambda: self.client.get_run(self.run_id).info.artifact_uri)
                    log.info("MLflow run %s (%s, %s): artifacts in %s", self.run_id, name, status.lower(), uri)
            self.run_id = previous

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call("logging params", self.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        if items:
            self._call("logging metrics", self.client.log_batch, self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id:
            for k, v in tags.items():
                self._call("setting tags", self.client.set_tag, self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id and Path(path).exists():
            self._call(f"uploading {path}", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def register_model(self, model_file: str | Path, name: str) -> str | None:
        """Log the model file as an MLflow pyfunc model (models from code: no pickled objects) and register it
        under `name`; returns the registered version."""
        if not self.run_id:
            return None

        def register() -> str:
            import mlflow
            from mlflow.models import ModelSignature
            from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
            from mlflow.types.schema import AnyType

            # inputs: exported histories as they are (trade counts are integers there, empty cells floats);
            # Forecaster.predict checks them itself
            inputs = Schema(
                [ColSpec("string", "time", required=False)] + [ColSpec(AnyType(), f, required=False) for f in FEATURES]
            )
            outputs = Schema(
                [ColSpec("string", "time", required=False)] + [ColSpec("double", f, required=False) for f in FEATURES]
            )
            signature = ModelSignature(
                inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("steps", "long", 16)])
            )
            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=self.run_id):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(PYFUNC_CODE),
                    artifacts={"model_file": str(model_file)},
                    registered_model_name=name,
                    signature=signature,
                    pip_requirements=["pumpcast", "torch>=2.4"],
                )
            return str(info.registered_model_version)

        return self._call(f"registering model {name}", register)


class MLflowEpochLogger(Callback):
    """Per-epoch train/validation loss, learning rate and samples/s into the active run (global rank 0 only)."""

    KEYS = {
        "train_loss_epoch": "train_loss",
        "val_loss": "val_loss",
        "lr": "lr",
        "epoch_samples_per_s": "samples_per_s",
    }

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        values = {name: float(metrics[key]) for key, name in self.KEYS.items() if key in metrics}
        values.setdefault("lr", trainer.optimizers[0].param_groups[0]["lr"])
        self.tracker.log_metrics(values, step=trainer.current_epoch)


def flatten(prefix: str, obj: Any) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"prefix.a.b": 1}: nested configs as MLflow params."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: obj}
