"""The forecaster: a transformer encoder over embedded, position-encoded windows, with an MLP head.

Read top to bottom: inputs (values + availability mask) -> per-step Linear or patching Conv1D embedding ->
sinusoidal positions -> encoder -> pooled summary -> MLP -> the next `horizon` steps of all six features
(normalised, window-relative; price as log change from the last input step), as many outputs per value as
the configured loss decodes (losses.py). Predicting every feature, not
only price, lets long rollouts continue on the model's own predictions without peeking at future covariates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pumpcast.config import ModelConfig
from pumpcast.events import PUMP_TARGETS
from pumpcast.losses import get_loss

__all__ = ["PUMP_RECENT", "ModelConfig", "PumpcastTransformer", "sinusoidal_positions"]

#: Latest input steps the pump head reads directly (besides the encoder's summary).
PUMP_RECENT = 4


def sinusoidal_positions(n: int, dim: int) -> torch.Tensor:
    """(n, dim) fixed sinusoidal position encoding (Vaswani et al.)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class PumpcastTransformer(nn.Module):
    """Window (B, L, F + C) + mask (B, L, F + C) -> head outputs (B, horizon, F, K) (K: outputs per value of
    the config's loss) and, with a pump head, pump logits (B, 3). The C channel columns (config.inputs,
    channels.py) are inputs only: the head forecasts the F features."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = self.config = config
        self.outputs_per_value = get_loss(c.loss).outputs_per_value
        in_ch = 2 * c.n_inputs  # values (features, then channels) and their availability mask
        if c.embedding == "conv":
            self.embed = nn.Conv1d(in_ch, c.embed_size, kernel_size=c.patch_len, stride=c.patch_len)
        else:
            self.embed = nn.Linear(in_ch, c.embed_size)
        self.register_buffer("pos", sinusoidal_positions(c.n_tokens, c.embed_size), persistent=False)
        layer = nn.TransformerEncoderLayer(
            c.embed_size, c.nhead, c.dim_feedforward, c.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, c.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.embed_size)
        self.head = nn.Sequential(
            nn.Linear(2 * c.embed_size, c.head_hidden),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.head_hidden, c.head_hidden),
            nn.GELU(),
            nn.Linear(c.head_hidden, c.horizon * c.n_features * self.outputs_per_value),
        )
        # The pump head also sees the last PUMP_RECENT input steps as they are: a surge in the latest bar is
        # the sharpest sign of a pump under way, and a patch embedding would blur it with 15 older bars.
        self.pump = (
            nn.Sequential(
                nn.Linear(2 * c.embed_size + PUMP_RECENT * in_ch, c.head_hidden),
                nn.GELU(),
                nn.Linear(c.head_hidden, c.head_hidden),
                nn.GELU(),
                nn.Linear(c.head_hidden, len(PUMP_TARGETS)),
            )
            if c.pump_head
            else None
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, forecast: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """forecast=False skips the forecast head (None in its place): pump scoring needs only the pump logits."""
        c = self.config
        m = mask.to(x.dtype)
        h = torch.cat([x * m, m], dim=-1)  # (B, L, 2F): absent values are masked, never read
        recent = h[:, -PUMP_RECENT:].flatten(1)  # (B, PUMP_RECENT * 2F), for the pump head
        if c.embedding == "conv":
            pad = c.n_tokens * c.patch_len - h.shape[1]  # left-pad to whole patches (mask 0 = absent)
            h = nn.functional.pad(h.transpose(1, 2), (pad, 0))  # (B, 2F, n_tokens * P)
            h = self.embed(h).transpose(1, 2)  # (B, n_tokens, E)
        else:
            h = self.embed(h)  # (B, L, E)
        h = h + self.pos[: h.shape[1]]
        h = self.norm(self.encoder(h))  # (B, n_tokens, E)
        summary = torch.cat([h[:, -1], h.mean(dim=1)], dim=-1)  # (B, 2E): latest patch + whole window
        pump_logits = self.pump(torch.cat([summary, recent], dim=-1)) if self.pump is not None else None  # (B, 3)
        if not forecast:
            return None, pump_logits
        return self.head(summary).view(-1, c.horizon, c.n_features, self.outputs_per_value), pump_logits  # (B,H,F,K)
