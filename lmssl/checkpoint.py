"""lmssl's own checkpoint format. A checkpoint is a directory: model.safetensors, config.yaml, tokenizer.json,
and for resumption trainer_state.pt. Every one is written under a temporary name and renamed (lmssl.atomic),
so a crash mid-save never leaves a broken checkpoint and `latest_checkpoint` only ever sees complete ones.
Other formats (Hugging Face directories, fine-tuned models) are read by lmssl.pretrained."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch

from lmssl.atomic import AtomicDirectory, atomic_directory
from lmssl.config import Config, config_yaml, load_config
from lmssl.data.tokenizer import TextTokenizer
from lmssl.distributed import barrier, gather_objects
from lmssl.model.weights import save_weights
from lmssl.objectives import build_objective
from lmssl.rng import rng_state

CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer_state.pt"


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


def write_model_files(directory: Path, model: torch.nn.Module, cfg: Config, tokenizer: TextTokenizer) -> None:
    """What a model directory holds: weights, the resolved config and the tokenizer."""
    save_weights(model, directory)
    (directory / "config.yaml").write_text(config_yaml(cfg))
    tokenizer.save(directory)


def _prune(output_dir: Path, keep: int) -> None:
    if keep:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)


def save_checkpoint(output_dir: Path, step: int, model: torch.nn.Module, cfg: Config, tokenizer: TextTokenizer,
                    trainer_state: dict, keep: int = 0) -> Path:
    """A single-process checkpoint of `model` at `step` (the training loop uses save_training_checkpoint)."""
    final = checkpoints_dir(output_dir) / f"step-{step:07d}"
    with atomic_directory(final) as tmp:
        write_model_files(tmp, model, cfg, tokenizer)
        torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / TRAINER_STATE)
    _prune(output_dir, keep)
    return final


def save_training_checkpoint(output_dir: Path, step: int, engine, cfg: Config, tokenizer: TextTokenizer,
                             trainer_state: dict, keep: int, dist) -> Path:
    """Collective (every process calls it): the engine's own state (DeepSpeed: its partitioned checkpoint in
    deepspeed/), every process's RNG states, and on the main process the consolidated weights in lmssl's
    format; written under a temporary name every process agrees on, then renamed."""
    final = checkpoints_dir(output_dir) / f"step-{step:07d}"
    target = AtomicDirectory(final, tmp_name=f".tmp-{final.name}") if dist.is_main else None
    barrier()
    tmp = checkpoints_dir(output_dir) / f".tmp-{final.name}"
    try:
        engine_state = engine.save_state(tmp)
        rngs = gather_objects(rng_state())
        barrier()  # every process's files are complete
        if dist.is_main:
            model = engine.consolidated_model(tmp, lambda: build_objective(cfg, tokenizer))
            write_model_files(tmp, model, cfg, tokenizer)
            torch.save({**trainer_state, **engine_state, "step": step, "rng": rngs[0], "rng_ranks": rngs},
                       tmp / TRAINER_STATE)
            target.commit()
            _prune(output_dir, keep)
    except BaseException:
        if target is not None:
            target.abort()
        raise
    barrier()
    return final


def load_trainer_state(checkpoint: Path) -> dict:
    return torch.load(Path(checkpoint) / TRAINER_STATE, weights_only=False)


def load_checkpoint_config(checkpoint: Path) -> Config:
    return load_config(Path(checkpoint) / "config.yaml")


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
        with atomic_directory(self.dir) as tmp:
            write_model_files(tmp, model, cfg, tokenizer)
            (tmp / "best.json").write_text(json.dumps({"step": step, **metrics}) + "\n")
        self.score = score
        return True
