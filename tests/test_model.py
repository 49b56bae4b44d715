import numpy as np
import pytest
import torch

from pumpcast.losses import HuberLoss
from pumpcast.model import ModelConfig, PumpcastTransformer
from pumpcast.schema import PumpcastError


@pytest.mark.parametrize("embedding,seq_len,patch", [("conv", 64, 16), ("conv", 50, 16), ("linear", 30, 16)])
def test_shapes(embedding, seq_len, patch):
    cfg = ModelConfig(
        seq_len=seq_len,
        horizon=5,
        embedding=embedding,
        patch_len=patch,
        embed_size=16,
        nhead=2,
        num_layers=1,
        dim_feedforward=32,
        head_hidden=32,
    )
    model = PumpcastTransformer(cfg)
    out, pump = model(torch.randn(3, seq_len, 6), torch.ones(3, seq_len, 6, dtype=torch.bool))
    assert out.shape == (3, 5, 6, 1) and pump is None  # one output per value: the point loss
    with_pump = PumpcastTransformer(ModelConfig(**(cfg.to_dict() | {"pump_head": True})))
    out, pump = with_pump(torch.randn(3, seq_len, 6), torch.ones(3, seq_len, 6, dtype=torch.bool))
    assert out.shape == (3, 5, 6, 1) and pump.shape == (3, 3)
    assert cfg.n_tokens == (-(-seq_len // patch) if embedding == "conv" else seq_len)


def test_absent_values_are_never_read():
    torch.manual_seed(0)
    model = PumpcastTransformer(
        ModelConfig(seq_len=32, horizon=4, patch_len=8, embed_size=16, nhead=2, num_layers=1, pump_head=True)
    ).eval()
    x = torch.randn(2, 32, 6)
    mask = torch.ones(2, 32, 6, dtype=torch.bool)
    mask[:, :, 2] = False  # liquidity absent
    mask[0, :10, 5] = False
    garbage = x.clone()
    garbage[~mask] = 1e6
    with torch.no_grad():
        for clean, dirty in zip(model(x, mask), model(garbage, mask), strict=True):  # forecast and pump logits
            np.testing.assert_allclose(clean.numpy(), dirty.numpy(), rtol=1e-5, atol=1e-5)
        # ... but the mask itself is information: absent differs from a present zero
        zeros = torch.where(mask, x, torch.zeros_like(x))
        assert not torch.allclose(model(zeros, mask)[0], model(zeros, torch.ones_like(mask))[0])


def test_masked_loss_ignores_absent_targets_and_weights_price():
    pred = torch.zeros(1, 2, 6)
    target = torch.ones(1, 2, 6)
    mask = torch.zeros(1, 2, 6, dtype=torch.bool)
    mask[..., 0] = True
    assert HuberLoss()(pred[..., None], target, mask, 0.5).item() == pytest.approx(0.5)  # huber(1) = 0.5
    target[..., 3] = 100.0  # absent, so ignored
    assert HuberLoss()(pred[..., None], target, mask, 0.5).item() == pytest.approx(0.5)


def test_bad_config_is_a_clear_error():
    with pytest.raises(PumpcastError, match="divisible"):
        ModelConfig(embed_size=30, nhead=4)
    with pytest.raises(PumpcastError, match="choose one of conv, linear"):
        ModelConfig(embedding="lstm")
