"""Any path a user gives -> (config, tokenizer, model). Everything that accepts a model path goes through here:
`lmssl eval`, `export`, `finetune`, `model.init_from`.

    a checkpoint directory      model.safetensors + config.yaml + tokenizer.json (lmssl.checkpoint)
    a run directory             its latest checkpoint
    a Hugging Face directory    config.json + weights + tokenizer files (lmssl.interop.hf.importer)
    a fine-tuned model          a checkpoint directory with finetune.json: a SequenceClassifier (load_finetuned)
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from lmssl.atomic import atomic_directory
from lmssl.checkpoint import (
    damage,
    latest_checkpoint,
    load_checkpoint_config,
    nonfinite_parameter,
    seal,
    write_model_files,
)
from lmssl.config import INIT_FREE_FIELDS, Config, ModelConfig
from lmssl.data.tokenizer import TextTokenizer
from lmssl.errors import ConfigError
from lmssl.interop.hf.importer import import_config, import_pretrained, read_tokenizer
from lmssl.interop.hf.source import is_hf_dir, part_dirs
from lmssl.model.classifier import SequenceClassifier
from lmssl.model.weights import WEIGHTS_FILE, load_weights
from lmssl.objectives import Objective, build_objective

FINETUNE_INFO = "finetune.json"


def locate(value: str | Path, key: str = "") -> Path:
    """The model directory a path names: itself (an lmssl checkpoint, a fine-tuned model or a Hugging Face
    directory) or a run directory's latest checkpoint. ConfigError (naming `key` when given) otherwise."""
    path = Path(value).expanduser()
    found = path if (path / WEIGHTS_FILE).is_file() or is_hf_dir(path) else latest_checkpoint(path)
    if found is None:
        what = ("an lmssl checkpoint (no model.safetensors), a run directory with checkpoints, nor a Hugging Face "
                "model directory (config.json)")
        raise ConfigError(f"key '{key}': {path} is neither {what}" if key else f"{path}: not {what}")
    return found


def is_finetuned(path: Path) -> bool:
    return (Path(path) / FINETUNE_INFO).is_file()


def source_config(path: Path) -> Config:
    """The config of a located model directory (converted from config.json for a Hugging Face one)."""
    return import_config(path) if is_hf_dir(path) else load_checkpoint_config(path)


def load_pretrained(value: str | Path, device: str | torch.device = "cpu") -> tuple[Config, TextTokenizer, Objective]:
    """(config, tokenizer, objective with weights, in eval mode) of a checkpoint, a run directory or a Hugging Face
    directory. A fine-tuned model is refused: it has no pretraining heads (load_finetuned reads it)."""
    path = locate(value)
    if is_hf_dir(path):
        cfg, tokenizer, objective = import_pretrained(path)
        require_finite(objective, path)
        return cfg, tokenizer, objective.to(device).eval()
    require_intact(path)
    if is_finetuned(path):
        info = json.loads((path / FINETUNE_INFO).read_text())
        raise ConfigError(f"{path} is a fine-tuned {info.get('card', {}).get('name', 'task')} classifier "
                          f"({FINETUNE_INFO}): it keeps the encoder but no pretraining heads; give the pretrained "
                          f"checkpoint it came from ({info.get('checkpoint', '?')}) instead")
    cfg = load_checkpoint_config(path)
    if cfg.model.attention_backend == "flash":  # trained with flash-attn; evaluated wherever this runs
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention_backend="auto"))
    tokenizer = TextTokenizer.from_file(path / "tokenizer.json")
    objective = build_objective(cfg, tokenizer)
    load_weights(objective, path)
    require_finite(objective, path)
    return cfg, tokenizer, objective.to(device).eval()


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


def resolve_device(name: str) -> torch.device:
    """`auto` = cuda when available, else cpu."""
    try:
        return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (--device / finetune.device); use auto, cpu, cuda or "
                          f"cuda:N") from None


# ---------------------------------------------------------------------------------------------------------------
# fine-tuned models: a SequenceClassifier with the pretrained architecture's config.yaml and a finetune.json
# ---------------------------------------------------------------------------------------------------------------

def save_finetuned(directory: Path, model: SequenceClassifier, cfg: Config, tokenizer: TextTokenizer,
                   info: dict) -> None:
    """model.safetensors (encoder.*, pooler.*, head.*), config.yaml (the pretrained architecture), tokenizer.json
    and finetune.json (task card, labels, seed, epoch, metrics); atomically replaced."""
    with atomic_directory(directory) as tmp:
        write_model_files(tmp, model, cfg, tokenizer)
        (tmp / FINETUNE_INFO).write_text(json.dumps(info, indent=1) + "\n")
        seal(tmp)


def load_finetuned(directory: str | Path, device: str = "cpu") -> tuple[SequenceClassifier, TextTokenizer, dict]:
    """A fine-tuned model written by `save_finetuned`, in eval mode, with its tokenizer and finetune.json."""
    directory = Path(directory)
    if not is_finetuned(directory):
        raise ConfigError(f"{directory}: not a fine-tuned model directory (no {FINETUNE_INFO})")
    require_intact(directory)
    info = json.loads((directory / FINETUNE_INFO).read_text())
    cfg = load_checkpoint_config(directory)
    card = info["card"]
    regression = card["labels"] is None
    model = SequenceClassifier(cfg.model, info["causal"], 1 if regression else len(card["labels"]), regression,
                               info["use_pooler"])
    load_weights(model, directory)
    require_finite(model, directory)
    return model.to(device).eval(), TextTokenizer.from_file(directory / "tokenizer.json"), info


# ---------------------------------------------------------------------------------------------------------------
# model.init_from: start from a pretrained encoder
# ---------------------------------------------------------------------------------------------------------------

def init_model_fields(init_from: str) -> dict:
    """The model section of the `model.init_from` source: the defaults of a config that starts from it."""
    return dataclasses.asdict(source_config(locate(init_from, "model.init_from")).model)


def init_tokenizer(cfg: Config) -> TextTokenizer | None:
    """The tokenizer of the `model.init_from` source, None when it is unset: a pretrained encoder only means
    something with the token ids it was trained on, so it replaces data.tokenizer."""
    if not cfg.model.init_from:
        return None
    found = locate(cfg.model.init_from, "model.init_from")
    if not is_hf_dir(found):
        return TextTokenizer.from_file(found / "tokenizer.json")
    parts = part_dirs(found)  # a multi-part export (ELECTRA): the first part's tokenizer, as they all share it
    return read_tokenizer(parts[0] if parts else found)


def init_encoder(objective: Objective, cfg: Config) -> Path | None:
    """Copy the downstream encoder (`Objective.encoder()`) of the `model.init_from` source into
    `objective.encoder()`, whatever the two objectives are (MLM trunk, ELECTRA discriminator, SimCSE
    trunk...). When the source is of the same objective with the same parameters (continued pretraining),
    its heads are copied too; otherwise they stay as initialised. Returns the source, None when unset."""
    if not cfg.model.init_from:
        return None
    found = locate(cfg.model.init_from, "model.init_from")
    source_cfg = source_config(found)
    for f in dataclasses.fields(ModelConfig):
        ours, theirs = getattr(cfg.model, f.name), getattr(source_cfg.model, f.name)
        if f.name not in INIT_FREE_FIELDS and ours != theirs:
            raise ConfigError(f"key 'model.{f.name}': {ours!r} here but {theirs!r} in the model.init_from checkpoint "
                              f"{found}; the trunk must match it (set model.{f.name}={theirs})")
    _, _, source = load_pretrained(found)
    ours, theirs = objective.state_dict(), source.state_dict()
    same = ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)
    if same and cfg.objective.name == source_cfg.objective.name:
        objective.load_state_dict(theirs)
    else:
        objective.encoder().load_state_dict(source.encoder().state_dict())
    return found
