"""The seams: no import cycle, one default per setting, config files checked, the Python API without argparse,
warm starts from a model file."""

import argparse
import ast
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL

import pumpcast
from pumpcast.cli import build_parser, build_trainer_parser, main
from pumpcast.cli.flags import to_config
from pumpcast.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PumpConfig,
    RuntimeConfig,
    TrackingConfig,
    TrainConfig,
    TuneConfig,
    flag_of,
    replace_train,
)
from pumpcast.modelfile import load_model_file
from pumpcast.schema import ConfigError

PACKAGE = Path(pumpcast.__file__).parent


def _imports() -> dict[str, set[str]]:
    """pumpcast module -> the pumpcast modules it imports, anywhere in the file (function-level included)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pumpcast"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("pumpcast"))
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_import_cycle_and_no_library_module_imports_the_cli():
    graph = _imports()
    assert len(graph) > 20  # the walk found the package
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(d) :], d]))
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    library = [m for m in graph if not m.startswith("pumpcast.cli") and m != "pumpcast"]
    assert not [m for m in library if any(d.startswith("pumpcast.cli") for d in graph[m])]


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "pump": PumpConfig,
    "runtime": RuntimeConfig,
    "tracking": TrackingConfig,
    "tune": TuneConfig,
}


def test_every_flag_default_is_the_config_default():
    parser = build_trainer_parser()
    ns = parser.parse_args([])
    built = to_config(ns, ns.sections)
    assert {k: built[k] for k in SECTIONS} == {k: cls() for k, cls in SECTIONS.items()}
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}
    for cls in SECTIONS.values():
        for f in fields(cls):
            if not f.metadata["cli"]:
                continue
            flag = flag_of(f)
            assert flag in helps, flag  # every setting the CLI may set has a flag
            if f.default not in (None, False) and not f.metadata["negate"]:
                assert f"(default: {f.default})" in helps[flag], flag  # the help shows the one default


def test_seed_flags_keep_their_names_and_types():
    ns = build_trainer_parser().parse_args(
        "--seq-length 500 --embed-size 64 --nhead 4 --dim-feedforward 256 --dropout 0.1 --epochs 30 --batch-size 4 "
        "--learning-rate 2.2e-6 --num-tokens 10 --timesteps 4000 --save-model m.pth --load-model m.pth --test-mode "
        "--forecast 10 --forecast-extended 20 --split-strategy token --show-data-splits".split()
    )
    conf = to_config(ns, ns.sections)
    assert conf["model"].seq_len == 500 and conf["optim"].learning_rate == 2.2e-6 and conf["data"].num_tokens == 10
    assert conf["test"].load_model == "m.pth" and conf["test"].show_data_splits and ns.test_mode


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"seq_len": 128, "nhead": 2}, "epochs": 7, "optim.batch_size": 16}))
    ns = build_trainer_parser().parse_args(["--config", str(path), "--nhead", "8"])
    conf = to_config(ns, ns.sections)
    assert (conf["model"].seq_len, conf["model"].nhead) == (128, 8)  # the flag wins over the file
    assert (conf["optim"].epochs, conf["optim"].batch_size) == (7, 16)
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\nseq_len = 64\n")
    ns = build_parser().parse_args(["train", "--config", str(toml)])
    assert to_config(ns, ns.sections)["model"].seq_len == 64


@pytest.mark.parametrize(
    "content,expected",
    [
        ({"model": {"seq_lenn": 3}}, "unknown key model.seq_lenn"),
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"epochs": "ten"}, "epochs must be int"),
        ({"epochs": 0}, "epochs must be in [1, inf)"),
        ({"dropout": 2.0}, "dropout must be in [0, 1)"),
        ({"split_file": None, "seed": None}, "seed must be int"),
        ({"model": {"embed_size": 30, "nhead": 4}}, "embed_size 30 must be divisible by nhead 4"),
        ([1, 2], "a config file holds one object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_config_file_is_one_line_naming_file_and_key(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert main(["train", "--config", str(path), "--no-mlflow", "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "d").exists()  # refused before anything was made


def test_library_errors_name_fields_and_the_cli_says_flags(capsys):
    with pytest.raises(ConfigError, match="embed_size 30 must be divisible by nhead 4") as info:
        ModelConfig(embed_size=30, nhead=4)
    assert info.value.fields == ("embed_size", "nhead")
    assert main(["train", "--embed-size", "30", "--nhead", "4", "--no-mlflow"]) == 2
    assert "--embed-size 30 must be divisible by --nhead 4" in capsys.readouterr().err
    assert main(["train", "--learning-rate", "nan", "--no-mlflow"]) == 2
    assert "--learning-rate must be a finite number" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown key 'embed'"):
        replace_train(TrainConfig(), {"embed": 3})


def _tiny(tmp_path: Path, **runtime) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(data_dir=str(tmp_path / "data"), num_tokens=3, timesteps=700, window_stride=8),
        model=ModelConfig(seq_len=64, horizon=8, patch_len=8, embed_size=16, nhead=4, dim_feedforward=32),
        optim=OptimConfig(epochs=1),
        runtime=RuntimeConfig(checkpoint_dir=str(tmp_path / "ck"), progress_bar=False, **runtime),
    )


def test_python_api_fit_forecast_detect_and_warm_start(tmp_path):
    """The README's Python example, with no argparse anywhere: fit, forecast, detect, then fine-tune."""
    cfg = _tiny(tmp_path, save_model=str(tmp_path / "m.pth"))
    result = pumpcast.fit(cfg)
    assert result.model_path == tmp_path / "m.pth" and result.bundle.has_pump_head
    store = pumpcast.TokenDataManager(cfg.data.data_dir)
    history = store.read_features(0)[:300]
    forecast = pumpcast.Forecaster.load(result.model_path).predict([history], steps=5)[0]
    assert len(forecast) == 5 and forecast["price"].notna().all()
    detector = pumpcast.PumpDetector.load(result.model_path)
    assert np.isfinite(detector.score(history)[63:]).all()

    # warm start: the weights and the normaliser of the file are where training starts
    start = load_model_file(tmp_path / "m.pth")
    fine = replace_train(cfg, {"init_from": str(tmp_path / "m.pth"), "save_model": str(tmp_path / "f.pth")})
    fine = replace_train(fine, {"checkpoint_dir": str(tmp_path / "ck2"), "learning_rate": 1e-9, "warmup_steps": 0})
    tuned = pumpcast.fit(fine).bundle
    np.testing.assert_array_equal(tuned.normalizer.scale, start.normalizer.scale)
    for k, v in start.model.state_dict().items():  # a learning rate of 1e-9 barely moves the start
        torch.testing.assert_close(tuned.model.state_dict()[k], v, atol=1e-5, rtol=0)
    scratch = pumpcast.fit(replace_train(cfg, {"checkpoint_dir": str(tmp_path / "ck3"), "seed": 1}))
    assert not torch.allclose(scratch.bundle.model.head[0].weight, start.model.head[0].weight)
    # a file whose network does not fit the config is refused with the field's name
    wrong = replace_train(fine, {"model": {"embed_size": 32}, "checkpoint_dir": str(tmp_path / "ck4")})
    with pytest.raises(ConfigError, match="init_from"):
        pumpcast.fit(wrong)


def test_init_from_on_the_command_line(tmp_path):
    common = [
        *TINY_MODEL,
        "--num-tokens",
        "3",
        "--timesteps",
        "700",
        "--window-stride",
        "8",
        "--epochs",
        "1",
        "--no-mlflow",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    first = ["--checkpoint-dir", str(tmp_path / "a"), "--save-model", str(tmp_path / "a.pth")]
    assert main(["train", *common, *first]) == 0
    second = ["--checkpoint-dir", str(tmp_path / "b"), "--save-model", str(tmp_path / "b.pth")]
    assert main(["train", *common, *second, "--init-from", str(tmp_path / "a.pth")]) == 0
    assert load_model_file(tmp_path / "b.pth").config == load_model_file(tmp_path / "a.pth").config


def test_tune_from_python_with_a_config(tmp_path):
    cfg = _tiny(tmp_path)
    study = TuneConfig(n_trials=2, storage=f"sqlite:///{tmp_path / 'o.db'}", best_config=str(tmp_path / "best.json"))
    best = pumpcast.tune(cfg, study, space={"nhead": [2, 4], "optim.learning_rate": {"low": 1e-4, "high": 1e-3}})
    assert isinstance(best, TrainConfig) and best.model.nhead in (2, 4) and best.data == cfg.data
    saved = json.loads((tmp_path / "best.json").read_text())
    assert replace_train(TrainConfig(), saved) == best  # the file is the whole config


def test_every_command_help_renders(capsys):
    """A help text argparse cannot format (a bare % in it) would break `COMMAND --help`."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert "usage:" in parser.format_help(), name


#: Where a metric may be computed: metrics.py, and the training objective (the pinball loss on tensors, which
#: must be differentiable; metrics.pinball is what judges).
METRIC_HOMES = {"metrics.py"}
TRAINING_LOSS = {"losses.py"}


def _metric_sites() -> list[str]:
    """Places outside metrics.py that compute a metric: a function named after one, the pinball loss
    (maximum(tau * d, (tau - 1) * d)), a direction (sign(a) == sign(b)), interval coverage
    ((lo <= y) & (y <= hi)), a skill (1 - error / error) or a recall (detected / events)."""
    found = []
    names = ("pinball", "coverage", "direction", "recall", "average_precision", "skill", "false_alarms")
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in METRIC_HOMES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.FunctionDef) and any(n in node.name for n in names):
                found.append(f"{where} def {node.name}")
            maximum = isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "maximum"
            if maximum and path.name not in TRAINING_LOSS:
                if any(isinstance(a, ast.BinOp) and "- 1" in ast.unparse(a) for a in node.args):
                    found.append(f"{where} pinball: {ast.unparse(node)}")
            if isinstance(node, ast.Compare) and ast.unparse(node).count("sign(") == 2:
                found.append(f"{where} direction: {ast.unparse(node)}")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd):
                if all(isinstance(s, ast.Compare) and isinstance(s.ops[0], ast.LtE) for s in (node.left, node.right)):
                    found.append(f"{where} coverage: {ast.unparse(node)}")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and isinstance(node.right, ast.BinOp):
                errors = any(k in ast.unparse(node.right) for k in ("mae", "abs", "err"))
                if ast.unparse(node.left) == "1" and isinstance(node.right.op, ast.Div) and errors:
                    found.append(f"{where} skill: {ast.unparse(node)}")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and "detected" in ast.unparse(node.left):
                found.append(f"{where} recall: {ast.unparse(node)}")
    return found


def test_each_metric_is_defined_once_in_metrics_py():
    assert _metric_sites() == []


#: Functions allowed over 100 lines, and why.
LONG_FUNCTIONS = {
    # the simulator's core: draws each step's order flow and moves the pool in one pass over (T, B) arrays;
    # split, its pieces would pass a dozen of those arrays between them
    ("simulator.py", "_simulate_block"),
}


def test_no_function_over_100_lines_but_the_simulators_core():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 100:
                if (path.name, node.name) not in LONG_FUNCTIONS:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


@pytest.mark.parametrize(
    "argv",
    [
        ["test", "--data-dir", "{tmp}/none"],
        ["evaluate", "--load-model", "{tmp}/none.pth", "--data-dir", "{tmp}/none"],
        ["detect", "--load-model", "{tmp}/none.pth", "--input", "{tmp}/none.csv"],
        ["predict", "--load-model", "{tmp}/none.pth", "--input", "{tmp}/h.csv", "--steps", "2", "--output", "{tmp}/o"],
        ["export-model", "--load-model", "{tmp}/none.pth", "--output", "{tmp}/m.onnx"],
    ],
    ids=lambda argv: argv[0],
)
def test_every_command_that_runs_a_network_takes_threads(tmp_path, argv, capsys):
    """--threads on every command that runs torch or onnxruntime, with the training commands' rule and help,
    applied before the command runs (here it then fails on a missing file, after the threads are set)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--threads", "1"]) != 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        build_parser().parse_args([argv[0], "--help"])
    assert "torch CPU threads per process (default: the available cores divided by the processes)" in " ".join(
        capsys.readouterr().out.split()
    )
