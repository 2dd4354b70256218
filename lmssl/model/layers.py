"""The trunk's position-wise parts: activations, norms, the feed-forward (plain or gated), rotary embeddings, and
dropout drawn for a full tensor but applied to some of its rows (Transformer.forward_at)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmssl.config import ModelConfig

CPU_INFERENCE_ELEMENTS = 1 << 20  # feed-forward activations per chunk in CPU inference (4 MB in fp32)


def activation_fn(name: str):
    return {"gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu}[name]


def norm_layer(cfg: ModelConfig, width: int) -> nn.Module:
    """The config's norm at `width`: LayerNorm (with a bias when model.bias) or RMSNorm (torch's; no bias)."""
    if cfg.norm_type == "rmsnorm":
        return nn.RMSNorm(width, eps=cfg.norm_eps)
    return nn.LayerNorm(width, eps=cfg.norm_eps, bias=cfg.bias)


def rope_tables(position_ids: torch.Tensor, head_dim: int, theta: float, dtype):
    even = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32)
    inv_freq = 1.0 / (theta ** (even / head_dim))
    angles = position_ids[:, None, :, None].float() * inv_freq  # (B, 1, T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (B, 1, T, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # rotate-half convention (GPT-NeoX)
    return x * cos + rotated * sin


class FeedForward(nn.Module):
    """act(x W1) W2, or gated (model.mlp geglu/swiglu): fc_in holds [W | V] and computes both at once, and
    (act(x W) * x V) W2 (ModernBERT's Wi layout; Llama's gate_proj is W, up_proj V)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.mlp != "gelu"
        self.fc_in = nn.Linear(cfg.hidden_size, cfg.ffn_size * (2 if self.gated else 1), bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.ffn_size, cfg.hidden_size, bias=cfg.bias)
        self.act = activation_fn("silu" if cfg.mlp == "swiglu" else cfg.activation)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc_in(x)
        if self.gated:
            h, gate = h.chunk(2, dim=-1)
            return self.act(h) * gate
        return self.act(h)

    def forward(self, x):
        rows, width = x.numel() // x.shape[-1], self.fc_in.out_features
        if torch.is_grad_enabled() or x.device.type != "cpu" or rows <= 2 * CPU_INFERENCE_ELEMENTS // width:
            return self.fc_out(self.inner(x))
        # CPU inference on many rows: a chunk at a time, so the (rows, ffn_size) activations stay in the caches
        # between the two projections (measured: 1.9x faster at 8192 x 256 -> 1024 on a 2-core CPU)
        chunk = max(1, CPU_INFERENCE_ELEMENTS // width)
        flat = x.reshape(rows, x.shape[-1])
        out = torch.empty_like(flat)
        for start in range(0, rows, chunk):
            out[start:start + chunk] = self.fc_out(self.inner(flat[start:start + chunk]))
        return out.view(x.shape)


def dropout_rows(dropout: nn.Dropout, x: torch.Tensor, shape: tuple[int, ...], index: torch.Tensor) -> torch.Tensor:
    """`dropout(full)` gathered at the flat rows `index` of `full` (of `shape`), given only those rows `x`:
    the mask is drawn as F.dropout draws it for the full tensor (same shape and dtype, so the same random
    numbers), then gathered."""
    p = dropout.p
    if not dropout.training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    noise = x.new_empty(shape).bernoulli_(1.0 - p).div_(1.0 - p)
    return x * noise.view(-1, shape[-1]).index_select(0, index)
