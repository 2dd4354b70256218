"""model.safetensors: a module's weights, tied tensors stored once, read back strictly."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

WEIGHTS_FILE = "model.safetensors"


def save_weights(model: torch.nn.Module, directory: Path) -> None:
    save_model(model, str(Path(directory) / WEIGHTS_FILE))  # handles tied (shared) tensors


def load_weights(model: torch.nn.Module, directory: Path) -> None:
    """Every parameter and buffer of `model` from directory/model.safetensors; a mismatch names the keys."""
    missing, unexpected = load_model(model, str(Path(directory) / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        missing, unexpected = sorted(missing), sorted(unexpected)
        raise ValueError(f"{directory}: weights do not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
