"""Checkpoints are directories: model.safetensors, config.yaml, tokenizer.json, trainer_state.pt.

They are written under a temporary name and renamed, so a crash mid-save never leaves a broken
checkpoint, and `latest_checkpoint` only ever sees complete ones."""
from __future__ import annotations

import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from lmssl.config import Config, load_config, save_config
from lmssl.data.tokenizer import TextTokenizer

CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: Path, step: int, model: torch.nn.Module, cfg: Config, tokenizer: TextTokenizer,
                    trainer_state: dict, keep: int = 0) -> Path:
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private
    save_model(model, str(tmp / "model.safetensors"))  # handles tied (shared) tensors
    save_config(cfg, tmp / "config.yaml")
    tokenizer.save(tmp)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    return final


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    missing, unexpected = load_model(model, str(Path(checkpoint) / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")


def load_trainer_state(checkpoint: Path) -> dict:
    return torch.load(Path(checkpoint) / "trainer_state.pt", weights_only=False)


def load_checkpoint_config(checkpoint: Path) -> Config:
    return load_config(Path(checkpoint) / "config.yaml")


def load_pretrained(checkpoint: Path, device: str | torch.device = "cpu"):
    """(config, tokenizer, objective with weights) of an lmssl checkpoint directory, in eval mode."""
    from lmssl.config import ConfigError
    from lmssl.objectives import build_objective

    checkpoint = Path(checkpoint)
    if not (checkpoint / "model.safetensors").is_file():
        found = latest_checkpoint(checkpoint)  # a run's output_dir is accepted too
        if found is None:
            raise ConfigError(f"{checkpoint}: not an lmssl checkpoint (no model.safetensors) nor a run directory with checkpoints")
        checkpoint = found
    cfg = load_checkpoint_config(checkpoint)
    tokenizer = TextTokenizer.from_file(checkpoint / "tokenizer.json")
    objective = build_objective(cfg, tokenizer)
    load_weights(objective, checkpoint)
    return cfg, tokenizer, objective.to(device).eval()
