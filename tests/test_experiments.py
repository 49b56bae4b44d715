"""MLflow tracking (a real SQLite store read back through the client), Optuna tuning with two workers on one
storage, and data-parallel training with two CPU processes."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from helpers import TINY_MODEL
from mlflow.tracking import MlflowClient

from pumpcast.cli import main, pump_trainer_main
from pumpcast.config import DataConfig, OptimConfig, TrainConfig
from pumpcast.model import ModelConfig
from pumpcast.modelfile import load_model_file
from pumpcast.simulator import generate_to_store
from pumpcast.store import TokenDataManager
from pumpcast.training import PumpcastDataModule, ShardSampler, shard_tokens

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *TINY_MODEL,
    "--window-stride",
    "4",
    "--num-tokens",
    "2",
    "--timesteps",
    "700",
    "--forecast",
    "20",
    "--forecast-extended",
    "40",
]


def _runs(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pumpcast")
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def _paths(work: Path) -> list[str]:
    return [
        "--data-dir",
        str(work / "data"),
        "--checkpoint-dir",
        str(work / "ckpt"),
        "--output-dir",
        str(work),
        "--save-model",
        str(work / "model_v2.pth"),
    ]


def test_train_and_test_runs_are_tracked_and_the_model_registered(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (
        pump_trainer_main(
            [
                *TINY,
                *_paths(tmp_path),
                "--epochs",
                "3",
                "--patience",
                "10",
                "--tracking-uri",
                uri,
                "--register-model",
                "pumpcast-tiny",
            ]
        )
        == 0
    )
    client, runs = _runs(uri)
    [run] = runs
    assert run.info.status == "FINISHED" and run.info.run_name == "train"
    params = run.data.params
    assert params["embed_size"] == "16" and params["split_strategy"] == "time" and params["seed"] == "0"
    for key in ("train_loss", "val_loss", "lr", "samples_per_s"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 3, key  # one per epoch
    assert "test.short.1-10.mae_log" in run.data.metrics and "test.extended.11-40.skill" in run.data.metrics
    assert run.data.metrics["best_val_loss"] == pytest.approx(
        min(m.value for m in client.get_metric_history(run.info.run_id, "val_loss")), rel=1e-6
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model_v2.pth", "split_info.json", "predictions", "img"} <= artifacts
    preds = {a.path for a in client.list_artifacts(run.info.run_id, "predictions")}
    assert {"predictions/metrics.json", "predictions/prediction_short.png"} <= preds
    [version] = client.search_model_versions("name='pumpcast-tiny'")
    assert version.run_id == run.info.run_id

    import mlflow

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/pumpcast-tiny/1")  # models from code: nothing unpickled
    exported = tmp_path / "h.csv"
    assert main(["export", "--data-dir", str(tmp_path / "data"), "--token-id", "0", "--output", str(exported)]) == 0
    history = pd.read_csv(exported)  # as a user has it: integer trade counts, empty (NaN) liquidity
    assert history["buys"].dtype.kind == "i"
    out = model.predict(history, params={"steps": 5})
    assert len(out) == 5 and out["price"].notna().all()

    # a test-mode run is a run of its own
    assert (
        pump_trainer_main(
            [
                "--test-mode",
                "--load-model",
                str(tmp_path / "model_v2.pth"),
                *TINY,
                *_paths(tmp_path),
                "--tracking-uri",
                uri,
            ]
        )
        == 0
    )
    _, runs = _runs(uri)
    assert sorted(r.info.run_name for r in runs) == ["test", "train"]


def test_tracking_server_down_warns_once_and_keeps_the_model(tmp_path, capsys):
    assert pump_trainer_main([*TINY, *_paths(tmp_path), "--epochs", "1", "--tracking-uri", "http://127.0.0.1:9"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert text.count("MLflow tracking at http://127.0.0.1:9 is unavailable") == 1, text
    assert text.count("warning") == 1  # one line for one unreachable server
    assert load_model_file(tmp_path / "model_v2.pth").config.embed_size == 16
    assert (tmp_path / "predictions" / "prediction_extended.png").is_file()


def test_no_mlflow_writes_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pump_trainer_main([*TINY, *_paths(tmp_path), "--epochs", "1", "--no-mlflow"]) == 0
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_two_tuning_workers_share_one_study(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(
        json.dumps(
            {
                "embed_size": [16],
                "nhead": [2, 4],
                "seq_length": [64],
                "dim_feedforward": [32],
                "batch_size": [32, 64],
                "patch_len": [8],
                "num_layers": {"low": 1, "high": 2},
            }
        )
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    best = tmp_path / "best.json"
    argv = [
        "tune",
        "--n-trials",
        "5",
        "--workers",
        "2",
        "--space",
        str(space),
        "--storage",
        storage,
        "--study-name",
        "s",
        "--epochs",
        "2",
        "--horizon",
        "8",
        "--window-stride",
        "8",
        "--num-tokens",
        "3",
        "--timesteps",
        "700",
        "--data-dir",
        str(tmp_path / "data"),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--best-config",
        str(best),
        "--tracking-uri",
        uri,
        "--no-progress",
    ]
    assert main(argv) == 0
    study = optuna.load_study(study_name="s", storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3, 4]  # none lost, none duplicated
    assert {t.state for t in study.trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    # best.json is the best trial's whole training config: searched values and the flags given to tune
    saved, params = json.loads(best.read_text()), study.best_trial.params
    assert (saved["model"]["nhead"], saved["optim"]["batch_size"]) == (params["nhead"], params["batch_size"])
    assert saved["model"]["horizon"] == 8 and saved["data"]["window_stride"] == 8 and saved["optim"]["epochs"] == 2
    # each trial is an MLflow run nested under the tuning run
    _, runs = _runs(uri)
    [parent] = [r for r in runs if r.info.run_name == "tune s"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1, 2, 3, 4]
    # a second command adds its own trials to the same study
    assert main([*argv[:2], "2", *argv[3:4], "1", *argv[5:]]) == 0
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 7
    # the best params train a model with exactly those settings
    assert (
        main(
            [
                "train",
                "--config",
                str(best),
                "--epochs",
                "1",
                "--horizon",
                "8",
                "--window-stride",
                "8",
                "--data-dir",
                str(tmp_path / "data"),
                "--checkpoint-dir",
                str(tmp_path / "final"),
                "--save-model",
                str(tmp_path / "final.pth"),
                "--no-mlflow",
                "--no-progress",
            ]
        )
        == 0
    )
    cfg = load_model_file(tmp_path / "final.pth").config
    params = study.best_trial.params
    assert (cfg.nhead, cfg.num_layers) == (params["nhead"], params["num_layers"])


def test_tune_show_lists_best_trials(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="pumpcast", storage=storage)
    study.add_trial(
        optuna.trial.create_trial(
            params={"embed_size": 32},
            value=0.5,
            distributions={"embed_size": optuna.distributions.CategoricalDistribution([32, 64])},
        )
    )
    assert main(["tune", "--show", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "1 trials" in out and "val_loss 0.5000" in out and '"embed_size": 32' in out


def test_shards_are_disjoint_balanced_and_cover_every_token():
    counts = {t: 100 + 37 * t for t in range(11)}
    shards = shard_tokens(counts, 3)
    assert sorted(t for s in shards for t in s) == list(range(11))
    loads = [sum(counts[t] for t in s) for s in shards]
    assert max(loads) - min(loads) <= max(counts.values())


class _FakeTrainer:
    def __init__(self, rank: int, world: int):
        self.global_rank, self.world_size = rank, world


def test_each_process_loads_only_its_shard(tmp_path, monkeypatch):
    generate_to_store(tmp_path / "d", num_tokens=6, timesteps=400, seed=3)
    cfg = TrainConfig(
        model=ModelConfig(seq_len=32, horizon=4, patch_len=8, embed_size=16, nhead=2),
        data=DataConfig(data_dir=str(tmp_path / "d")),
        optim=OptimConfig(batch_size=8),
    )
    PumpcastDataModule(cfg).prepare_data()
    read: dict[int, list[int]] = {}
    lengths = []
    for rank in range(2):
        dm = PumpcastDataModule(cfg)
        dm.trainer = _FakeTrainer(rank, 2)
        calls: list[int] = []
        original = TokenDataManager.read
        monkeypatch.setattr(TokenDataManager, "read", lambda self, t, c=calls, o=original: c.append(t) or o(self, t))
        dm.setup("fit")
        monkeypatch.undo()
        read[rank] = calls
        lengths.append((len(dm.samplers["train"]), len(dm.samplers["val"])))
        assert set(dm.train.token_ids) <= set(calls)
    assert not set(read[0]) & set(read[1])  # no token is read by both processes
    assert sorted(set(read[0]) | set(read[1])) == list(range(6))
    assert lengths[0] == lengths[1]  # same number of batches on every process: no hang


def test_shard_sampler_repeats_a_small_shard_to_its_share():
    s = ShardSampler(n_local=3, length=7, seed=0)
    order = list(s)
    assert len(order) == 7 and set(order) == {0, 1, 2}
    assert order == list(ShardSampler(n_local=3, length=7, seed=0))  # reproducible
    assert list(ShardSampler(5, 5, 0, shuffle=False)) == [0, 1, 2, 3, 4]


def test_ddp_on_two_cpu_processes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable,
        str(ROOT / "pump_trainer.py"),
        *TINY,
        *_paths(tmp_path),
        "--num-tokens",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--accelerator",
        "cpu",
        "--tracking-uri",
        uri,
    ]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best.ckpt", "last.ckpt"]  # rank 0 only
    bundle = load_model_file(tmp_path / "model_v2.pth")
    assert bundle.data.world_size == 2 and bundle.data.global_batch_size == 32
    # each process runs floor(train windows / 2) windows an epoch in batches of 16
    store = TokenDataManager(tmp_path / "data")
    split = json.loads(store.split_path.read_text())
    from pumpcast.windows import window_span

    lengths = store.lengths()
    total = sum(window_span(lengths[int(t)], tuple(r), 64, 8, 4)[1] for t, r in split["ranges"]["train"].items())
    per_epoch = -(-(total // 2) // 16)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 * per_epoch
    _, runs = _runs(uri)
    assert len(runs) == 1  # only rank 0 tracks
    assert res.stdout.count("trained 2 epoch(s)") == 1 and res.stdout.count("model vs persistence") == 2
