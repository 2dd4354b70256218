"""Checkpoints are directories: model.safetensors, config.yaml, tokenizer.json, trainer_state.pt.

They are written under a temporary name and renamed, so a crash mid-save never leaves a broken
checkpoint, and `latest_checkpoint` only ever sees complete ones."""
from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from lmssl.config import INIT_FREE_FIELDS, Config, ConfigError, ModelConfig, load_config, save_config
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


def write_model_files(directory: Path, model: torch.nn.Module, cfg: Config, tokenizer: TextTokenizer) -> None:
    """What `load_pretrained` reads: weights, the resolved config and the tokenizer."""
    directory.chmod(0o755)  # mkdtemp makes it private
    save_model(model, str(directory / "model.safetensors"))  # handles tied (shared) tensors
    save_config(cfg, directory / "config.yaml")
    tokenizer.save(directory)


def save_checkpoint(output_dir: Path, step: int, model: torch.nn.Module, cfg: Config, tokenizer: TextTokenizer,
                    trainer_state: dict, keep: int = 0) -> Path:
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    write_model_files(tmp, model, cfg, tokenizer)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    return final


def save_training_checkpoint(output_dir: Path, step: int, engine, cfg: Config, tokenizer: TextTokenizer,
                             trainer_state: dict, keep: int, dist) -> Path:
    """Collective (every process calls it): the engine's own state (DeepSpeed: its partitioned checkpoint in
    deepspeed/), every process's RNG states, and on the main process the consolidated weights in lmssl's
    format; written under a temporary name every process agrees on, then renamed."""
    from lmssl.distributed import barrier, gather_objects
    from lmssl.objectives import build_objective

    root = checkpoints_dir(output_dir)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-{final.name}"
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    engine_state = engine.save_state(tmp)
    rngs = gather_objects(rng_state())
    barrier()  # every process's files are complete
    if dist.is_main:
        model = engine.model
        if engine.loads_weights_itself():  # DeepSpeed: weights rebuilt from its partitions into a CPU copy
            model = build_objective(cfg, tokenizer)
            missing, unexpected = model.load_state_dict(engine.consolidated_state_dict(tmp), strict=False)
            params = model.state_dict(keep_vars=True)
            loaded = {id(params[k]) for k in params if k not in missing}
            missing = [k for k in missing if id(params[k]) not in loaded]  # tied tensors are stored under one name
            if missing or unexpected:
                raise RuntimeError(f"consolidated weights do not match the model: missing {missing[:5]}, "
                                   f"unexpected {unexpected[:5]}")
        tmp.chmod(0o755)
        write_model_files(tmp, model, cfg, tokenizer)
        torch.save({**trainer_state, **engine_state, "step": step, "rng": rngs[0], "rng_ranks": rngs},
                   tmp / "trainer_state.pt")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        if keep:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old)
    barrier()
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
    """(config, tokenizer, objective with weights) of an lmssl checkpoint directory (or a run directory: its
    latest checkpoint), or of a Hugging Face model directory (lmssl.interop.hf), in eval mode."""
    from lmssl.interop.hf import import_pretrained, is_hf_dir
    from lmssl.objectives import build_objective

    checkpoint = Path(checkpoint)
    if is_hf_dir(checkpoint):
        cfg, tokenizer, objective = import_pretrained(checkpoint)
        return cfg, tokenizer, objective.to(device).eval()
    if not (checkpoint / "model.safetensors").is_file():
        found = latest_checkpoint(checkpoint)  # a run's output_dir is accepted too
        if found is None:
            raise ConfigError(f"{checkpoint}: not an lmssl checkpoint (no model.safetensors) nor a run directory with checkpoints")
        checkpoint = found
    cfg = load_checkpoint_config(checkpoint)
    if cfg.model.attention_backend == "flash":  # trained with flash-attn; evaluated wherever this runs
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention_backend="auto"))
    tokenizer = TextTokenizer.from_file(checkpoint / "tokenizer.json")
    objective = build_objective(cfg, tokenizer)
    load_weights(objective, checkpoint)
    return cfg, tokenizer, objective.to(device).eval()


# ---------------------------------------------------------------------------------------------
# model.init_from: start from a pretrained encoder
# ---------------------------------------------------------------------------------------------

def resolve_pretrained(value: str) -> Path:
    """A pretrained model path: an lmssl checkpoint, a run directory (its latest checkpoint) or a Hugging Face
    model directory; ConfigError naming `model.init_from` otherwise."""
    from lmssl.interop.hf import is_hf_dir

    path = Path(value).expanduser()
    found = path if (path / "model.safetensors").is_file() or is_hf_dir(path) else latest_checkpoint(path)
    if found is None:
        raise ConfigError(f"key 'model.init_from': {path} is neither an lmssl checkpoint (no model.safetensors), "
                          f"a run directory with checkpoints, nor a Hugging Face model directory (config.json)")
    return found


def pretrained_config(path: Path) -> Config:
    """The config of what `resolve_pretrained` found (converted from config.json for a HF directory)."""
    from lmssl.interop.hf import import_config, is_hf_dir

    return import_config(path) if is_hf_dir(path) else load_checkpoint_config(path)


def init_model_fields(init_from: str) -> dict:
    """The model section of the `model.init_from` source: the defaults of a config that starts from it."""
    return dataclasses.asdict(pretrained_config(resolve_pretrained(init_from)).model)


def init_tokenizer(cfg: Config) -> TextTokenizer | None:
    """The tokenizer of the `model.init_from` checkpoint, None when it is unset: a pretrained encoder
    only means something with the token ids it was trained on, so it replaces data.tokenizer."""
    from lmssl.interop.hf import ELECTRA_PARTS, is_hf_dir, read_tokenizer

    if not cfg.model.init_from:
        return None
    found = resolve_pretrained(cfg.model.init_from)
    if not is_hf_dir(found):
        return TextTokenizer.from_file(found / "tokenizer.json")
    return read_tokenizer(found if (found / "config.json").is_file() else found / ELECTRA_PARTS[0])


def init_encoder(objective: torch.nn.Module, cfg: Config) -> Path | None:
    """Copy the downstream encoder (`Objective.encoder()`) of the `model.init_from` checkpoint into
    `objective.encoder()`, whatever the two objectives are (MLM trunk, ELECTRA discriminator, SimCSE
    trunk...). When the source is of the same objective with the same parameters (continued pretraining),
    its heads are copied too; otherwise they stay as initialised. Returns the source, None when unset."""
    if not cfg.model.init_from:
        return None
    found = resolve_pretrained(cfg.model.init_from)
    source_cfg = pretrained_config(found)
    for f in dataclasses.fields(ModelConfig):
        ours, theirs = getattr(cfg.model, f.name), getattr(source_cfg.model, f.name)
        if f.name not in INIT_FREE_FIELDS and ours != theirs:
            raise ConfigError(f"key 'model.{f.name}': {ours!r} here but {theirs!r} in the model.init_from checkpoint "
                              f"{found}; the trunk must match it (set model.{f.name}={theirs})")
    _, _, source = load_pretrained(found)
    ours, theirs = objective.state_dict(), source.state_dict()
    same = ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)
    if same and type(objective) is type(source):
        objective.load_state_dict(theirs)
    else:
        objective.encoder().load_state_dict(source.encoder().state_dict())
    return found


# ---------------------------------------------------------------------------------------------
# the best weights on a selection metric
# ---------------------------------------------------------------------------------------------

class BestCheckpoint:
    """output_dir/best: the weights that scored highest so far on the objective's `selection_metric`
    (SimCSE: STS-B dev Spearman), with config.yaml, tokenizer.json and best.json (step and metrics).
    A new best is written to a temporary directory and renamed into place, so `best` is never partial."""

    def __init__(self, output_dir: Path, metric: str):
        self.output_dir, self.metric = Path(output_dir), metric
        self.dir = self.output_dir / "best"
        info = self.dir / "best.json"
        # a resumed run must beat the best its interrupted part recorded
        self.score = json.loads(info.read_text()).get(metric, -math.inf) if metric and info.is_file() else -math.inf

    def update(self, step: int, metrics: dict[str, float], model: torch.nn.Module, cfg: Config,
               tokenizer: TextTokenizer) -> bool:
        """Save `model` as the best if metrics[metric] beats the best so far (NaN never does)."""
        score = metrics.get(self.metric) if self.metric else None
        if score is None or not score > self.score:
            return False
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-best-", dir=self.output_dir))
        write_model_files(tmp, model, cfg, tokenizer)
        (tmp / "best.json").write_text(json.dumps({"step": step, **metrics}) + "\n")
        old = None
        if self.dir.exists():
            old = Path(tempfile.mkdtemp(prefix=".old-best-", dir=self.output_dir))
            self.dir.rename(old / "best")
        tmp.rename(self.dir)
        if old is not None:
            shutil.rmtree(old)
        self.score = score
        return True
