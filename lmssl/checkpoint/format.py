"""lmssl's own checkpoint format. A checkpoint is a directory: model.safetensors, config.yaml, tokenizer.json,
manifest.json (every file's size and SHA-256), and for resumption trainer_state.pt. Every one is written under
a temporary name and renamed (lmssl.storage.atomic), so a crash mid-save never leaves a broken checkpoint and
`latest_checkpoint` only ever sees complete ones; the manifest catches what happens to a file afterwards
(truncated, damaged), and resume then falls back to the newest intact checkpoint. Weights that are not finite
are never written. Any model directory (these, fine-tuned models, Hugging Face ones) is read by
lmssl.checkpoint.model_dir."""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import sys
from pathlib import Path

import torch

from lmssl.config import Config, config_yaml, load_config
from lmssl.data.tokenizer import TextTokenizer
from lmssl.distributed import all_reduce_sum, barrier
from lmssl.errors import ConfigError, storage_error
from lmssl.model.weights import UnsafeCheckpoint, load_plain_data, save_weights
from lmssl.objectives import build_objective
from lmssl.storage.atomic import TMP_PREFIX, AtomicDirectory, atomic_directory

CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer_state.pt"
MANIFEST = "manifest.json"
FINETUNE_INFO = "finetune.json"  # beside a fine-tuned classifier's files: its task card, labels, pooling, seed, scores


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def seal(directory: Path) -> None:
    """Write manifest.json: the size and SHA-256 of every file in `directory` (call it last, before the rename)."""
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (Path(directory) / MANIFEST).write_text(json.dumps({"files": entries}, indent=1) + "\n")


def manifest_entries(raw) -> dict[str, dict]:
    """The `files` of a parsed manifest, each {bytes, sha256}; ValueError saying what is wrong otherwise (a manifest
    that lists nothing checks nothing: seal() always lists the files it seals)."""
    files = raw.get("files") if isinstance(raw, dict) else None
    if not isinstance(files, dict) or not files:
        found = f"a JSON {type(raw).__name__}" if not isinstance(raw, dict) else f"files: {json.dumps(files)}"
        raise ValueError(f"{found}, not an object whose \"files\" maps each file's name to its bytes and sha256")
    for name, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
                and isinstance(entry.get("sha256"), str)):
            raise ValueError(f"the entry of {name} is {json.dumps(entry)}, not its bytes and sha256")
    return files


def damage(directory: Path, names: tuple[str, ...] | None = None) -> str | None:
    """What is wrong with a sealed directory ('model.safetensors: 1024 bytes, manifest.json says 5432'), None when
    every listed file (or those of `names`) matches its manifest. Directories written before manifests existed
    have none and are not checked here."""
    manifest = Path(directory) / MANIFEST
    if not manifest.is_file():
        return None
    try:
        entries = manifest_entries(json.loads(manifest.read_text()))
    except (OSError, ValueError) as e:
        return f"{MANIFEST} cannot be read ({e})"
    for name, entry in entries.items():
        if names is not None and name not in names:
            continue
        path = Path(directory) / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{name} is {size} bytes, {MANIFEST} says {entry['bytes']}"
        if _sha256(path) != entry["sha256"]:
            return f"{name} does not match its checksum in {MANIFEST} (damaged)"
    return None


def nonfinite_parameter(model: torch.nn.Module) -> str | None:
    """The name of the first parameter holding NaN or inf (this process's share of it), None when all are finite."""
    for name, p in model.named_parameters():
        if p.numel() and not bool(torch.isfinite(p.detach()).all()):
            return name
    return None


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


def save_training_checkpoint(output_dir: Path, step: int, engine, cfg: Config, tokenizer: TextTokenizer,
                             trainer_state: dict, keep: int, dist) -> Path | None:
    """Collective (every process calls it): the engine's own state (DeepSpeed: its partitioned checkpoint in
    deepspeed/), and on the main process the consolidated weights in lmssl's format and `trainer_state` (the
    run's, lmssl.training.state) with the engine's in trainer_state.pt; written under a temporary name every
    process agrees on, sealed, then renamed. None (nothing written, a notice) when the weights hold NaN or inf."""
    bad = nonfinite_parameter(engine.model)
    if all_reduce_sum([float(bad is not None)])[0]:
        if dist.is_main:
            where = bad or "on another process"
            print(f"warning: not writing the step-{step} checkpoint: the weights are not finite ({where}); the "
                  f"earlier checkpoints are kept", file=sys.stderr)
        return None
    final = checkpoints_dir(output_dir) / f"step-{step:07d}"
    tmp = checkpoints_dir(output_dir) / f"{TMP_PREFIX}{final.name}"
    target = AtomicDirectory(final, tmp_name=tmp.name) if dist.is_main else None
    barrier()
    try:
        engine_state = engine.save_state(tmp)
        barrier()  # every process's files are complete
        if dist.is_main:
            model = engine.consolidated_model(tmp, lambda: build_objective(cfg, tokenizer))
            write_model_files(tmp, model, cfg, tokenizer)
            torch.save({**trainer_state, **engine_state}, tmp / TRAINER_STATE)
            seal(tmp)
            target.commit()
            _prune(output_dir, keep)
    except BaseException as e:
        if target is not None:
            target.abort()
        raise storage_error(e, final) or e
    barrier()
    return final


def load_trainer_state(checkpoint: Path) -> dict:
    path = Path(checkpoint) / TRAINER_STATE
    if not path.is_file():
        raise ConfigError(f"{path}: missing (a checkpoint to resume from needs its trainer state)")
    state = load_plain_data(path)
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: cannot be read (holds a {type(state).__name__}, not the trainer state)")
    return state


def intact_checkpoint(output_dir: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint whose files match their manifest and whose trainer state loads, with that state;
    the damaged ones passed over are named on stderr. None when there is no checkpoint; ConfigError when none
    is intact."""
    problems = []
    for checkpoint in reversed(list_checkpoints(output_dir)):
        problem = damage(checkpoint)
        if problem is None:
            try:
                state = load_trainer_state(checkpoint)
            except UnsafeCheckpoint:
                raise
            except ConfigError as e:
                problem = str(e)
        if problem is None:
            for skipped in problems:
                print(f"note: passing over a damaged checkpoint: {skipped}", file=sys.stderr)
            return checkpoint, state
        problems.append(f"{checkpoint.name}: {problem}")
    if problems:
        raise ConfigError(f"{checkpoints_dir(output_dir)}: no intact checkpoint to resume from ("
                          + "; ".join(problems) + ")")
    return None


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

    def relocate(self, output_dir: Path) -> None:
        """The run's directory moved (train.overwrite swapped it in)."""
        self.output_dir, self.dir = Path(output_dir), Path(output_dir) / "best"

    def update(self, step: int, metrics: dict[str, float], model: torch.nn.Module, cfg: Config,
               tokenizer: TextTokenizer) -> bool:
        """Save `model` as the best if metrics[metric] beats the best so far (NaN never does)."""
        score = metrics.get(self.metric) if self.metric else None
        if score is None or not score > self.score:
            return False
        with atomic_directory(self.dir) as tmp:
            write_model_files(tmp, model, cfg, tokenizer)
            (tmp / "best.json").write_text(json.dumps({"step": step, **metrics}) + "\n")
            seal(tmp)
        self.score = score
        return True


def save_finetuned(directory: Path, model: torch.nn.Module, cfg: Config, tokenizer: TextTokenizer, info: dict) -> None:
    """A fine-tuned classifier: model.safetensors (encoder.*, pooler.*, head.*), config.yaml (the pretrained
    architecture), tokenizer.json and finetune.json (task card, labels, seed, epoch, metrics); atomically replaced."""
    with atomic_directory(directory) as tmp:
        write_model_files(tmp, model, cfg, tokenizer)
        (tmp / FINETUNE_INFO).write_text(json.dumps(info, indent=1) + "\n")
        seal(tmp)
