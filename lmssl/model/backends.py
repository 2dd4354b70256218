"""`model.attention_backend` -> the attention backend a Transformer is built with (chosen once, never per call)."""
from __future__ import annotations

from lmssl.model.attention import SdpaAttention
from lmssl.model.flash import flash_backend


def build_attention_backend(name: str, head_dim: int = 64):
    """Chosen once when the model is built. `sdpa`: PyTorch SDPA. `flash`: flash-attn's varlen kernel; an error
    when it cannot run here (no CUDA, flash_attn missing). `auto`: flash when CUDA is available and flash_attn
    imports (forward passes it cannot run, on CPU tensors or in fp32, fall back to SDPA), else SDPA."""
    if name == "sdpa":
        return SdpaAttention()
    if name in ("auto", "flash"):
        backend = flash_backend(required=name == "flash", head_dim=head_dim)
        return backend if backend is not None else SdpaAttention()
    raise ValueError(f"unknown attention backend {name!r}; choose auto, sdpa or flash")
