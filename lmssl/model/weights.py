"""model.safetensors: a module's weights, tied tensors stored once, read back strictly; a file that cannot be
read, or does not fit the model, is one ConfigError naming it. Other state files (optimizer, RNG) load as plain
data only: nothing read from disk runs code."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
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


class UnsafeCheckpoint(ConfigError):
    """A checkpoint file that would run code when loaded: refused, never passed over for an older checkpoint."""

    def __init__(self, message: str, imports: list[str] = ()):
        super().__init__(message)
        self.imports = list(imports)  # what its pickle would import (module.name)


# numpy's RNG state (np.random.get_state) is an array: its reconstruction is data, it runs nothing
NUMPY_ARRAY_GLOBALS = [np.dtype, type(np.dtype(np.uint32)), np.ndarray,
                       (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct]


def load_plain_data(path: Path, allowed: list = ()) -> object:
    """torch.load with weights_only=True: tensors, numbers, strings, containers and the `allowed` classes, never code.
    UnsafeCheckpoint naming what the file would import otherwise; ConfigError when it is damaged or truncated."""
    allowed = [*NUMPY_ARRAY_GLOBALS, *allowed]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            names = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
                           - {f"{g.__module__}.{g.__qualname__}" for g in allowed})
        except Exception:  # not even a torch.save archive: damaged
            names = []
        if names:
            raise UnsafeCheckpoint(f"{path}: refused: loading it would import {', '.join(names[:4])}, which is not "
                                   f"tensors or plain data; lmssl runs no code from a checkpoint (was it written by "
                                   f"lmssl?)", names) from None
        raise ConfigError(f"{path}: cannot be read (damaged or truncated)") from None
    except Exception:  # torch reports truncation and garbage in many types
        raise ConfigError(f"{path}: cannot be read (damaged or truncated)") from None
