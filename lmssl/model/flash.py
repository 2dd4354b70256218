"""flash-attn's varlen kernel as an attention backend (`model.attention_backend: flash | auto`).

The only module of lmssl that imports `flash_attn`, and only inside functions: `import lmssl` and every CPU
test run without it. Install it with the `gpu` extra (`pip install -e .[gpu]`). The unpadding around the
kernel (once at trunk entry, repadded at exit) is backend-independent: lmssl.model.attention.Varlen.
"""
from __future__ import annotations

import torch

from lmssl.errors import ConfigError
from lmssl.model.attention import SdpaAttention, VarlenAttention

INSTALL = "install the `gpu` extra on a CUDA machine: pip install -e .[gpu]"
MAX_HEAD_DIM = 256  # flash-attn 2 kernels handle head sizes up to 256
HALF = (torch.float16, torch.bfloat16)


def unavailable_reason(head_dim: int) -> str | None:
    """Why flash-attn cannot serve a model with heads of `head_dim` on this machine; None = it can."""
    if not torch.cuda.is_available():
        return f"CUDA is not available (flash-attn runs on NVIDIA GPUs only); {INSTALL}"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"flash-attn 2 needs an Ampere or newer GPU (compute capability 8.0+), this one is {major}.{minor}"
    if head_dim > MAX_HEAD_DIM:
        return f"flash-attn handles head sizes up to {MAX_HEAD_DIM}, this model's is {head_dim}"
    try:
        import flash_attn  # noqa: F401  (also loads its CUDA extension)
    except Exception as e:  # ImportError, or a build that does not match this torch/CUDA
        return f"flash_attn cannot be imported ({type(e).__name__}: {e}); {INSTALL}"
    return None


def kernel_check(device: torch.device, dtype: torch.dtype | None) -> str | None:
    """Why flash_attn_varlen_func cannot run a forward pass on `device` computing in `dtype`; None = it can."""
    if device.type != "cuda":
        return f"flash-attn runs on CUDA tensors only, this forward's are on {device}"
    if dtype not in HALF:
        return (f"flash-attn computes in fp16/bf16 only, this forward computes in {dtype}: set train.precision=bf16, "
                f"or model.attention_backend=auto (falls back to sdpa) or sdpa")
    return None


def flash_backend(required: bool, head_dim: int) -> VarlenAttention | None:
    """flash-attn's varlen kernel as a backend. Unavailable here: an error naming the key when `required`
    (`flash`), else None (`auto` then uses SDPA). With `auto`, forward passes the kernel cannot run (CPU
    tensors, fp32) use SDPA instead."""
    reason = unavailable_reason(head_dim)
    if reason is not None:
        if not required:
            return None
        raise ConfigError(f"key 'model.attention_backend': 'flash' cannot run here: {reason}. "
                          f"Choose 'auto' (flash when available, else sdpa) or 'sdpa'")
    from flash_attn import flash_attn_varlen_func

    return VarlenAttention(flash_attn_varlen_func, name="flash", check=kernel_check,
                           fallback=None if required else SdpaAttention())
