"""ModelDir: any model directory a user names, opened once. `ModelDir.open` finds what the path is, checks it and
reads its config and tokenizer; the weights load when asked (`objective()`, `classifier()`). Everything that
takes a model path goes through it: model.init_from, `lmssl eval`, export, finetune, generate, fill-mask, predict.

    a checkpoint directory      model.safetensors + config.yaml + tokenizer.json (lmssl.checkpoint.format)
    a run directory             its latest checkpoint
    a fine-tuned model          a checkpoint directory with finetune.json: a SequenceClassifier
    a Hugging Face directory    config.json + weights + tokenizer files (lmssl.interop.hf.importer)
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lmssl.checkpoint.format import (
    FINETUNE_INFO,
    damage,
    latest_checkpoint,
    load_checkpoint_config,
    nonfinite_parameter,
)
from lmssl.config import Config
from lmssl.data.tokenizer import TextTokenizer
from lmssl.errors import ConfigError
from lmssl.interop.hf.importer import import_config, import_objective, import_tokenizer
from lmssl.interop.hf.source import HFSource, is_hf_dir, read_sources
from lmssl.model.classifier import SequenceClassifier
from lmssl.model.weights import WEIGHTS_FILE, load_weights
from lmssl.objectives import Objective, build_objective

NOT_A_MODEL = ("an lmssl checkpoint (no model.safetensors), a run directory with checkpoints, nor a Hugging Face model "
               "directory (config.json)")


def locate(value: str | Path, key: str = "") -> Path:
    """The model directory a path names: itself (an lmssl checkpoint, a fine-tuned model or a Hugging Face
    directory) or a run directory's latest checkpoint. ConfigError (naming `key` when given) otherwise."""
    path = Path(value).expanduser()
    found = path if (path / WEIGHTS_FILE).is_file() or is_hf_dir(path) else latest_checkpoint(path)
    if found is None:
        raise ConfigError(f"key '{key}': {path} is neither {NOT_A_MODEL}" if key else f"{path}: not {NOT_A_MODEL}")
    return found


def resolve_device(name: str) -> torch.device:
    """`auto` = cuda when available, else cpu; a CUDA device this machine does not have is refused here, before
    any work (torch would fail later with an AssertionError)."""
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (--device / finetune.device); use auto, cpu, cuda or "
                          f"cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device {name!r} (--device / finetune.device): {why}; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} (--device / finetune.device): this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 to "
                              f"cuda:{torch.cuda.device_count() - 1}); use one of them, auto or cpu")
    return device


@dataclass(frozen=True)
class ModelDir:
    path: Path  # the directory read (for a run directory, its latest checkpoint)
    kind: Literal["checkpoint", "finetuned", "hf"]
    config: Config  # the pretrained architecture and objective (Hugging Face: converted from config.json)
    tokenizer: TextTokenizer
    finetune_info: dict | None = None  # a fine-tuned model's finetune.json (task card, labels, pooling, ...)
    hf_sources: dict[str, HFSource] | None = None  # a Hugging Face directory's parts (tensors read on first use)

    @classmethod
    def open(cls, value: str | Path, key: str = "") -> "ModelDir":
        """Find, check and read a model directory (ConfigError naming `key`, when given, or the path)."""
        path = locate(value, key)
        if is_hf_dir(path):
            sources = read_sources(path)
            config = import_config(path, sources)
            return cls(path, "hf", config, import_tokenizer(path, config, sources), hf_sources=sources)
        require_intact(path)
        info_file = path / FINETUNE_INFO
        info = json.loads(info_file.read_text()) if info_file.is_file() else None
        return cls(path, "finetuned" if info else "checkpoint", load_checkpoint_config(path),
                   TextTokenizer.from_file(path / "tokenizer.json"), info)

    @classmethod
    def open_finetuned(cls, value: str | Path) -> "ModelDir":
        """A fine-tuned model directory (`lmssl finetune`'s best/): ConfigError when it is not one."""
        if not (Path(value) / FINETUNE_INFO).is_file():
            raise ConfigError(f"{value}: not a fine-tuned model directory (no {FINETUNE_INFO})")
        return cls.open(value)

    def objective(self, device: str | torch.device = "cpu") -> Objective:
        """The pretraining objective with its weights, in eval mode. A fine-tuned model has no pretraining heads:
        refused, naming the checkpoint it came from."""
        if self.kind == "finetuned":
            info = self.finetune_info
            raise ConfigError(f"{self.path} is a fine-tuned {info.get('card', {}).get('name', 'task')} classifier "
                              f"({FINETUNE_INFO}): it keeps the encoder but no pretraining heads; give the pretrained "
                              f"checkpoint it came from ({info.get('checkpoint', '?')}) instead")
        if self.kind == "hf":
            objective = import_objective(self.path, self.config, self.tokenizer, self.hf_sources)
        else:
            cfg = self.config
            if cfg.model.attention_backend == "flash":  # trained with flash-attn; evaluated wherever this runs
                cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention_backend="auto"))
            objective = build_objective(cfg, self.tokenizer)
            load_weights(objective, self.path)
        require_finite(objective, self.path)
        return objective.to(resolve_device(device) if isinstance(device, str) else device).eval()

    def classifier(self, device: str | torch.device = "cpu") -> SequenceClassifier:
        """A fine-tuned model (`lmssl finetune`'s best/) with its weights, in eval mode."""
        if self.kind != "finetuned":
            raise ConfigError(f"{self.path}: not a fine-tuned model directory (no {FINETUNE_INFO})")
        info, card = self.finetune_info, self.finetune_info["card"]
        regression = card["labels"] is None
        model = SequenceClassifier(self.config.model, info["causal"], 1 if regression else len(card["labels"]),
                                   regression, info["use_pooler"], info.get("mean_pooling", False))
        load_weights(model, self.path)
        require_finite(model, self.path)
        return model.to(resolve_device(device) if isinstance(device, str) else device).eval()


def require_intact(path: Path) -> None:
    """ConfigError naming the file when a sealed model directory's files no longer match its manifest."""
    problem = damage(path, names=(WEIGHTS_FILE, "config.yaml", "tokenizer.json", FINETUNE_INFO))
    if problem is not None:
        raise ConfigError(f"{path}: damaged: {problem}; use another checkpoint (a run keeps its earlier ones in "
                          f"checkpoints/)")


def require_finite(model: torch.nn.Module, path: Path) -> None:
    bad = nonfinite_parameter(model)
    if bad is not None:
        raise ConfigError(f"{path}: the weights are not finite (NaN or inf in {bad}): the run had diverged when this "
                          f"was saved; use an earlier checkpoint")
