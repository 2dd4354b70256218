"""A flash varlen kernel as an attention backend (`model.attention_backend: flash | auto`).

The kernel comes from the `flash_attn` package when it imports, else from PyTorch's own
`torch.nn.attention.varlen.varlen_attn` (PyTorch >= 2.9, flash-attention kernels built into PyTorch), so a
bare GPU machine runs the flash path without building flash-attn. PyTorch's kernel has no attention
dropout: with it, `auto` picks SDPA for models that train with attention dropout and `flash` refuses them.
The only module of lmssl that imports `flash_attn`, and only inside functions: `import lmssl` and every CPU
test run without it. The unpadding around the kernel (once at trunk entry, repadded at exit) is
backend-independent: lmssl.model.attention.Varlen.
"""
from __future__ import annotations

import inspect

import torch

from lmssl.errors import ConfigError
from lmssl.model.attention import SdpaAttention, VarlenAttention

INSTALL = "on a CUDA machine PyTorch >= 2.9 brings its own kernel, or install the `gpu` extra: pip install -e .[gpu]"
MAX_HEAD_DIM = 256  # flash-attn 2 kernels handle head sizes up to 256
HALF = (torch.float16, torch.bfloat16)


def unavailable_reason(head_dim: int) -> str | None:
    """Why no flash varlen kernel can serve a model with heads of `head_dim` on this machine; None = one can."""
    if not torch.cuda.is_available():
        return f"CUDA is not available (flash attention runs on NVIDIA GPUs only); {INSTALL}"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"flash attention 2 needs an Ampere or newer GPU (compute capability 8.0+), this one is {major}.{minor}"
    if head_dim > MAX_HEAD_DIM:
        return f"flash attention handles head sizes up to {MAX_HEAD_DIM}, this model's is {head_dim}"
    return None


def flash_attn_kernel():
    """flash_attn_varlen_func, or the reason it cannot be imported."""
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception as e:  # ImportError, or a build that does not match this torch/CUDA
        return f"flash_attn cannot be imported ({type(e).__name__}: {e})"
    return flash_attn_varlen_func


def torch_varlen_kernel():
    """PyTorch's varlen_attn behind flash_attn_varlen_func's call (without dropout), or why it is not there.
    PyTorch 2.9-2.10 take `is_causal`; later versions express causal masking as `window_size=(-1, 0)`."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return f"PyTorch {torch.__version__} has no torch.nn.attention.varlen (2.9 or newer does)"
    by_window = "window_size" in inspect.signature(varlen_attn).parameters

    def kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, causal=False):
        if dropout_p:  # flash_backend never builds this kernel for a model with attention dropout
            raise ValueError("torch.nn.attention.varlen.varlen_attn has no attention dropout")
        mask = {"window_size": (-1, 0) if causal else (-1, -1)} if by_window else {"is_causal": causal}
        return varlen_attn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **mask)

    return kernel


def varlen_kernel(attention_dropout: float):
    """(provider, kernel) of the first provider that can serve: `flash_attn`, else PyTorch's varlen_attn when the
    model has no attention dropout; else (None, the reasons)."""
    found = flash_attn_kernel()
    if callable(found):
        return "flash_attn", found
    reasons = [found]
    native = torch_varlen_kernel()
    if callable(native) and attention_dropout > 0:
        native = (f"torch.nn.attention.varlen has no attention dropout and model.attention_dropout is "
                  f"{attention_dropout}: set it to 0, or install flash-attn")
    if callable(native):
        return "torch", native
    return None, "; ".join([*reasons, native])


def kernel_check(device: torch.device, dtype: torch.dtype | None) -> str | None:
    """Why flash_attn_varlen_func cannot run a forward pass on `device` computing in `dtype`; None = it can."""
    if device.type != "cuda":
        return f"flash attention runs on CUDA tensors only, this forward's are on {device}"
    if dtype not in HALF:
        return (f"flash attention computes in fp16/bf16 only, this forward computes in {dtype}: set "
                f"train.precision=bf16, or model.attention_backend=auto (falls back to sdpa) or sdpa")
    return None


def flash_backend(required: bool, head_dim: int, attention_dropout: float = 0.0) -> VarlenAttention | None:
    """A flash varlen kernel as a backend (its `provider`: flash_attn or torch). Unavailable here: an error naming
    the key when `required` (`flash`), else None (`auto` then uses SDPA). With `auto`, forward passes the kernel
    cannot run (CPU tensors, fp32) use SDPA instead."""
    reason = unavailable_reason(head_dim)
    provider, kernel = (None, reason) if reason is not None else varlen_kernel(attention_dropout)
    if provider is None:
        if not required:
            return None
        raise ConfigError(f"key 'model.attention_backend': 'flash' cannot run here: {kernel}. "
                          f"Choose 'auto' (flash when available, else sdpa) or 'sdpa'")
    return VarlenAttention(kernel, name="flash", check=kernel_check, fallback=None if required else SdpaAttention(),
                           provider=provider)
