"""`model.attention_backend` -> the attention backend a Transformer is built with (chosen once, never per call)."""
from __future__ import annotations

from lmssl.model.attention import SdpaAttention
from lmssl.model.flash import flash_backend


def build_attention_backend(name: str, head_dim: int = 64, attention_dropout: float = 0.0):
    """Chosen once when the model is built. `sdpa`: PyTorch SDPA. `flash`: a flash varlen kernel (flash_attn's, else
    PyTorch's own when the model has no attention dropout); an error when none can run here. `auto`: flash where it
    can run (forward passes it cannot, on CPU tensors or in fp32, fall back to SDPA), else SDPA."""
    if name == "sdpa":
        return SdpaAttention()
    if name in ("auto", "flash"):
        backend = flash_backend(required=name == "flash", head_dim=head_dim, attention_dropout=attention_dropout)
        return backend if backend is not None else SdpaAttention()
    raise ValueError(f"unknown attention backend {name!r}; choose auto, sdpa or flash")
