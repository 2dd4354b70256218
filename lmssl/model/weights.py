"""model.safetensors: a module's weights, tied tensors stored once, read back strictly; a file that cannot be
read, or does not fit the model, is one ConfigError naming it."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from lmssl.errors import ConfigError

WEIGHTS_FILE = "model.safetensors"


def save_weights(model: torch.nn.Module, directory: Path) -> None:
    save_model(model, str(Path(directory) / WEIGHTS_FILE))  # handles tied (shared) tensors


def load_weights(model: torch.nn.Module, directory: Path) -> None:
    """Every parameter and buffer of `model` from directory/model.safetensors; a mismatch names the keys."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            reason = str(e).splitlines()[0]
            raise ConfigError(f"{path}: cannot be read ({reason}); it is damaged or truncated") from None
        first = next(line.strip() for line in str(e).splitlines() if "size mismatch" in line)
        first = re.sub(r"torch\.Size\((\[[^\]]*\])\)", r"\1", first)
        raise ConfigError(f"{path}: the weights do not fit this model's shape ({first})") from None
    except Exception as e:  # safetensors' own errors: a truncated or garbage file
        raise ConfigError(f"{path}: cannot be read as safetensors ({str(e).splitlines()[0]}); it is damaged or "
                          f"truncated") from None
    if missing or unexpected:
        raise ConfigError(f"{path}: the weights do not match the model (missing {sorted(missing)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]})")
