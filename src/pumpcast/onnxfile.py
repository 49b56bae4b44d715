"""The network as an ONNX file, for serving without PyTorch's training stack.

`export_onnx(bundle, "model.onnx")` writes the network with a fixed signature, and everything else the model
file holds (configs, normalisation, pump calibration, rollout damping) as JSON in the file's metadata, so
`Forecaster.load("model.onnx")` and `PumpDetector.load("model.onnx")` run it with onnxruntime through the
same window transforms as the torch model.

Signature (B = any batch size, L = seq_len, H = horizon, K = outputs per value of the loss):
    inputs   x            float32 (B, L, 6)   normalised window values, 0 where absent
             mask         bool    (B, L, 6)   True where a value is present
    outputs  forecast     float32 (B, H, 6, K)
             pump_logits  float32 (B, 3)      only for a model with a pump head
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pumpcast.files import atomic_write
from pumpcast.model import ModelConfig
from pumpcast.modelfile import ModelBundle, bundle_from_payload, bundle_payload, load_model_file
from pumpcast.schema import ModelFileError

METADATA_KEY = "pumpcast"


def export_onnx(bundle: ModelBundle, path: str | Path) -> Path:
    """Write the bundle's network and its metadata as an ONNX file (atomically)."""
    import onnx

    model = copy.deepcopy(bundle.model).cpu().eval()  # a copy: the bundle's network stays on its device
    L = bundle.config.seq_len
    example = (
        torch.zeros(2, L, bundle.config.n_inputs),
        torch.ones(2, L, bundle.config.n_inputs, dtype=torch.bool),
    )
    batch = torch.export.Dim("batch", min=1, max=1_000_000)
    outputs = ["forecast", "pump_logits"] if bundle.config.pump_head else ["forecast"]
    program = torch.onnx.export(
        _Outputs(model).eval(),
        example,
        input_names=["x", "mask"],
        output_names=outputs,
        dynamic_shapes=({0: batch}, {0: batch}),
        dynamo=True,
        verbose=False,
    )
    proto = program.model_proto
    meta = proto.metadata_props.add()
    meta.key, meta.value = METADATA_KEY, json.dumps(bundle_payload(bundle))
    path = Path(path)

    def write(tmp: Path) -> None:
        onnx.save(proto, str(tmp))
        _verify(OnnxNetwork(tmp, bundle.config), model, path)

    atomic_write(path, write, suffix=".onnx")
    return path


#: Batch sizes an export is checked at (a live bar, the network's scoring batch, an odd forecast batch).
VERIFY_BATCHES = (1, 3, 32)


@torch.inference_mode()
def _verify(network: OnnxNetwork, model: torch.nn.Module, path: Path) -> None:
    """An export is a model that works: the ONNX graph must give the torch network's outputs (within 1e-4 of
    their scale) at several batch sizes, with absent values in the mask, or nothing is written."""
    L, F = model.config.seq_len, model.config.n_inputs
    gen = torch.Generator().manual_seed(0)
    for b in VERIFY_BATCHES:
        x = torch.randn(b, L, F, generator=gen)
        mask = torch.rand(b, L, F, generator=gen) > 0.2
        try:
            got = network(x, mask)
        except Exception as exc:  # onnxruntime raises its own types
            raise ModelFileError(
                f"{path}: the exported network fails on a batch of {b} ({type(exc).__name__}); not written"
            ) from exc
        want = model(x, mask)
        for name, a, w in zip(("forecast", "pump_logits"), got, want, strict=True):
            if (a is None) != (w is None) or (
                w is not None and (a.shape != w.shape or not torch.allclose(a, w, rtol=1e-4, atol=1e-4))
            ):
                raise ModelFileError(
                    f"{path}: the exported network's {name} differs from the model's on a batch of {b}; not written"
                )


class _Outputs(torch.nn.Module):
    """The network with only tensors as outputs (ONNX has no None)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        forecast, pump = self.model(x, mask)
        return (forecast, pump) if pump is not None else forecast


class OnnxNetwork:
    """An onnxruntime session that is called like the torch network: (x, mask) -> (forecast, pump logits)."""

    def __init__(self, path: Path, config: ModelConfig):
        import onnxruntime

        self.config = config
        options = onnxruntime.SessionOptions()  # the same thread budget as torch (see threads.py)
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(
        self, x: torch.Tensor, mask: torch.Tensor, forecast: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The graph computes both outputs whatever `forecast` says (it is there to match the torch network)."""
        out = self.session.run(None, {"x": x.cpu().numpy().astype(np.float32), "mask": mask.cpu().numpy()})
        pump = torch.from_numpy(out[1]) if len(out) > 1 else None
        return torch.from_numpy(out[0]), pump

    # the parts of the nn.Module interface that forecasting and detection use
    def to(self, device: torch.device | str) -> OnnxNetwork:
        if torch.device(device).type != "cpu":
            raise ModelFileError("an ONNX model runs on the CPU here; load the .pth file for a GPU")
        return self

    def eval(self) -> OnnxNetwork:
        return self

    def parameters(self) -> Iterator[torch.Tensor]:
        yield torch.zeros(0)  # tells callers the device: the CPU


def load_onnx(path: str | Path) -> ModelBundle:
    """A bundle whose network is an onnxruntime session; one-line errors for a file that is not one."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file; write one with pumpcast export-model --format onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        payload = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    except Exception as exc:  # onnx raises protobuf errors of many types
        raise ModelFileError(
            f"{path}: not an ONNX file written by pumpcast export-model ({type(exc).__name__})"
        ) from exc
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: damaged model config in its metadata ({exc})") from exc
    return bundle_from_payload(payload, OnnxNetwork(path, config), path)


def load_bundle(path: str | Path) -> ModelBundle:
    """A model file (.pth) or an exported network (.onnx)."""
    return load_onnx(path) if Path(path).suffix == ".onnx" else load_model_file(path)
