"""The one resolve step: a config -> a Run the loop can start. It settles, in this order and once each: the model
keys left to `model.init_from` (whose directory is opened once: lmssl.checkpoint.model_dir), the output directory
and what it holds (a run to resume, leftovers of a stopped one), the tokenizer and vocabulary, the objective with its
initial weights, the data, the FLOP budget's max_steps (or the time budget's, recorded by a resumed run), the engine
and the TrainState, and the evaluator, checkpointer and logger the loop asks when to act."""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lmssl import distributed
from lmssl.checkpoint.format import (
    BestCheckpoint,
    checkpoints_dir,
    intact_checkpoint,
    latest_checkpoint,
    load_checkpoint_config,
)
from lmssl.checkpoint.model_dir import ModelDir
from lmssl.config import INIT_FREE_FIELDS, Config, ModelConfig, RawConfig, build_config, read_config
from lmssl.data import load_tokenizer
from lmssl.data.loader import SequenceLoader
from lmssl.data.paths import corpus_of
from lmssl.data.tokenizer import TextTokenizer, tokenizer_path
from lmssl.downstream.online_probe import OnlineProbe
from lmssl.engine import build_engine, require_engine
from lmssl.engine.rng import seed_everything
from lmssl.engine.skip_guard import SkipGuard
from lmssl.errors import ConfigError, RunError
from lmssl.evaluation.likelihood import ValidationLikelihood
from lmssl.model.transformer import checkpoint_activations
from lmssl.objectives import Objective, build_objective
from lmssl.storage.atomic import remove_stale
from lmssl.training.checkpointer import Checkpointer
from lmssl.training.evaluator import Evaluator
from lmssl.training.faults import check_resumable, check_same_data
from lmssl.training.logger import RunLog
from lmssl.training.memory import check_fits
from lmssl.training.rundir import RunDirectory, check_run_directory
from lmssl.training.state import TrainState, masking_generator, step_flops
from lmssl.training.time_budget import TimeBudget, decided_length, now

SHAPE_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in INIT_FREE_FIELDS)
FLOP_SAMPLE_STEPS = 8  # the first steps whose mean FLOPs turn train.max_flops into train.max_steps


def complete_config(raw: RawConfig, source: ModelDir | None) -> Config:
    """Presets, types and validation (lmssl.config); with `model.init_from`, the model keys not written default to
    the source's (written keys win)."""
    model = raw.model_keys()
    if source is not None:
        theirs = source.config.model
        filled = {**{k: getattr(theirs, k) for k in ("preset", *SHAPE_FIELDS)}, **model}
        raw = dataclasses.replace(raw, sections={**raw.sections, "model": filled})
    return build_config(raw)


def fills_from_init(raw: RawConfig) -> bool:
    """Whether model.init_from is set and shapes a model key the config leaves out."""
    model = raw.model_keys()
    return bool(model.get("init_from")) and not all(k in model for k in SHAPE_FIELDS)


def resolve_config(raw: RawConfig) -> tuple[Config, ModelDir | None]:
    """The Config of a config as read, and the `model.init_from` directory when the model keys it fills needed it
    opened (None otherwise)."""
    source = ModelDir.open(str(raw.model_keys()["init_from"]), "model.init_from") if fills_from_init(raw) else None
    return complete_config(raw, source), source


def load_run_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """`lmssl train`'s config (as `lmssl config show` prints it): the YAML and overrides, completed from
    `model.init_from`."""
    return resolve_config(read_config(path, overrides))[0]


def with_vocab(cfg: Config, vocab_size: int) -> Config:
    """model.vocab_size = the tokenizer's when 0; a smaller one than the tokenizer's is an error."""
    if cfg.model.vocab_size == 0:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))
    if cfg.model.vocab_size < vocab_size:
        raise ConfigError(f"key 'model.vocab_size': {cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{vocab_size}")
    return cfg


def initialise_from(objective: Objective, cfg: Config, source: ModelDir) -> None:
    """Copy the downstream encoder (`Objective.encoder()`) of the `model.init_from` source into ours, whatever the
    two objectives are (MLM trunk, ELECTRA discriminator, SimCSE trunk...). When the source is of the same
    objective with the same parameters (continued pretraining), its heads are copied too."""
    shape = source.config.model
    for f in dataclasses.fields(ModelConfig):
        ours, theirs = getattr(cfg.model, f.name), getattr(shape, f.name)
        if f.name not in INIT_FREE_FIELDS and ours != theirs:
            raise ConfigError(f"key 'model.{f.name}': {ours!r} here but {theirs!r} in the model.init_from checkpoint "
                              f"{source.path}; the trunk must match it (set model.{f.name}={theirs})")
    pretrained = source.objective()
    ours, theirs = objective.state_dict(), pretrained.state_dict()
    same = ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)
    if same and cfg.objective.name == source.config.objective.name:
        objective.load_state_dict(theirs)
    else:
        objective.encoder().load_state_dict(pretrained.encoder().state_dict())


def check_output_dir(out: Path) -> None:
    """Before any work: the output directory is a directory, or can be made one, and is writable."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"key 'train.output_dir': {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"key 'train.output_dir': {existing} is not writable")


def resume_point(cfg: Config, out: Path, dist) -> tuple[Path | None, dict | None, TextTokenizer | None]:
    """(checkpoint, its trainer state, its tokenizer) to resume from, or Nones for a fresh run. The checkpoint's
    own tokenizer and config are authoritative: a config that differs beyond length and cadence is refused."""
    if not cfg.train.resume:
        if latest_checkpoint(out) is not None:
            raise ConfigError(f"key 'train.output_dir': {out} already holds checkpoints; set train.resume=true to "
                              f"continue it, train.overwrite=true to replace it, or choose another train.output_dir")
        return None, None, None
    found = intact_checkpoint(out)
    if found is None:
        if dist.is_main:
            print(f"note: train.resume=true but {out} holds no checkpoint: starting from step 0", file=sys.stderr)
        return None, None, None
    checkpoint, state = found
    tokenizer = TextTokenizer.from_file(checkpoint / "tokenizer.json")
    named = tokenizer_path(cfg.data.tokenizer)
    if not cfg.model.init_from and named.is_file() and \
            TextTokenizer.from_file(named).fingerprint() != tokenizer.fingerprint():
        raise ConfigError(f"key 'data.tokenizer': {named} is not the tokenizer {checkpoint} was trained with (its "
                          f"tokenizer.json differs); restore that tokenizer or start a new run")
    check_resumable(load_checkpoint_config(checkpoint), with_vocab(cfg, tokenizer.vocab_size), checkpoint)
    return checkpoint, state, tokenizer


def budget_steps(cfg: Config, objective, train_data, batch_size: int, dist) -> Config:
    """train.max_flops as train.max_steps: the budget over the mean FLOPs of the run's first steps (their own
    micro-batches, `batch_size` sequences each, and masking draws), rounded up."""
    loader = SequenceLoader(train_data, batch_size, cfg.train.seed)
    total = 0
    for step in range(FLOP_SAMPLE_STEPS):
        counted = step_flops(objective, [objective.collate(loader.next_batch(), masking_generator(cfg.train.seed,
                                                                                                  step, i))
                                         for i in range(cfg.train.grad_accum)])
        if counted is None:
            raise ConfigError(f"key 'train.max_flops': objective '{cfg.objective.name}' does not count its FLOPs "
                              f"(Objective.train_flops); set train.max_steps instead")
        total += counted
    mean = total / FLOP_SAMPLE_STEPS
    max_steps = max(1, math.ceil(cfg.train.max_flops / mean))
    if dist.is_main:
        print(f"train.max_flops={cfg.train.max_flops:.3g}: train.max_steps={max_steps} (the first "
              f"{FLOP_SAMPLE_STEPS} steps' mean: {mean:.4g} FLOPs)", file=sys.stderr)
        if max_steps <= cfg.train.warmup_steps:
            print(f"warning: train.warmup_steps={cfg.train.warmup_steps} >= the {max_steps} steps of the budget: "
                  f"the learning rate never reaches train.lr", file=sys.stderr)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=max_steps))


@dataclass
class Run:
    """What the loop works with; a context that gives the output directory back (and removes what a bad input left
    of a new run) on the way out."""
    cfg: Config  # resolved: vocabulary size, and max_steps of a FLOP budget
    dist: distributed.DistInfo
    run_dir: RunDirectory
    objective: Objective
    engine: object  # lmssl.engine: TorchEngine or DeepSpeedEngine
    state: TrainState
    resumed_from: Path | None  # the checkpoint it continues
    log: RunLog | None = None  # None when the resumed run has nothing left to do
    evaluator: Evaluator | None = None
    checkpointer: Checkpointer | None = None
    best: BestCheckpoint | None = None
    budget: TimeBudget = dataclasses.field(default_factory=TimeBudget)  # train.max_minutes' measurement, or inert

    @property
    def finished(self) -> bool:
        return self.log is None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self.log is not None:
            self.log.close()
        release(self.run_dir, error)


def release(run_dir: RunDirectory, error: BaseException | None) -> None:
    if isinstance(error, (ConfigError, RunError)):
        run_dir.discard_if_new()  # a bad input, or a disk full before anything was written, leaves nothing behind
    run_dir.close()


def prepare_run(config: Config | RawConfig) -> Run:
    """The Run of a config: a Config as built, or a RawConfig (lmssl.config.read_config), whose model keys left to
    model.init_from are filled from the same opening of that directory that gives its tokenizer and weights.

    Under torchrun or the deepspeed launcher every process prepares (and trains): each takes its slice of every
    global micro-batch (the data order is that of one process with world_size x train.batch_size sequences); only
    the main process logs and writes checkpoint files (DeepSpeed's partitions excepted), and it owns the output
    directory for the whole run (lmssl.storage.lock)."""
    started = now()  # train.max_minutes counts from here
    cfg, source = resolve_config(config) if isinstance(config, RawConfig) else (config, None)
    dist = distributed.setup(require_group=cfg.train.engine == "deepspeed")
    check_output_dir(Path(cfg.train.output_dir))
    check_run_directory(Path(cfg.train.output_dir), cfg.train.resume)
    # missing, empty, binary, non-UTF-8 or uncached corpora stop the run before any work
    for split in ("train", "valid") if cfg.data.valid not in ("", "auto") else ("train",):
        corpus_of(cfg, split).check()
    require_engine(cfg.train)
    run_dir = RunDirectory(Path(cfg.train.output_dir), cfg.train.overwrite, dist.is_main).open()
    try:
        return build_run(cfg, dist, run_dir, source, started)
    except BaseException as e:
        release(run_dir, e)
        raise


def remove_leftovers(out: Path) -> None:
    """The temporaries a stopped lmssl writer left in the run's directory and its checkpoints/, with a note."""
    removed = remove_stale(checkpoints_dir(out)) + remove_stale(out)
    if removed:
        print(f"note: removed {len(removed)} temporary file(s) a stopped run left behind: "
              f"{', '.join(p.name for p in removed[:4])}", file=sys.stderr)


def announce(cfg: Config, dist, out: Path, params: int, train_data, source: ModelDir | None) -> None:
    """The run's one line of what it trains, on what, how, and where (plus where its encoder came from)."""
    batch = cfg.train.batch_size * dist.world_size
    count = "streamed" if cfg.data.streaming else f"{len(train_data)}"
    print(f"{cfg.objective.name}: {params / 1e6:.2f}M parameters, {count} training sequences of {cfg.data.seq_len} "
          f"tokens, {dist.world_size} process(es) x {cfg.train.batch_size} x {cfg.train.grad_accum} accumulated = "
          f"{batch * cfg.train.grad_accum} sequences per step, engine {cfg.train.engine}, output in {out}",
          file=sys.stderr)
    if source is not None:
        print(f"encoder initialised from {source.path}", file=sys.stderr)


def build_run(cfg: Config, dist, run_dir: RunDirectory, source: ModelDir | None, started: float) -> Run:
    out = run_dir.path
    if dist.is_main:
        remove_leftovers(out)
    resumed_from, saved, tokenizer = resume_point(cfg, out, dist)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.train.seed)
    if resumed_from is None and cfg.model.init_from:
        source = source or ModelDir.open(cfg.model.init_from, "model.init_from")
        tokenizer = source.tokenizer  # a pretrained encoder only means something with the token ids it knows
    tokenizer = tokenizer or load_tokenizer(cfg)
    cfg = with_vocab(cfg, tokenizer.vocab_size)
    check_fits(cfg, tokenizer, dist.device)  # refused before it is built: the OOM killer says nothing
    objective = build_objective(cfg, tokenizer)
    checkpoint_activations(objective, cfg.train.activation_checkpointing)
    if resumed_from is None and cfg.model.init_from:
        initialise_from(objective, cfg, source)
    train_data = objective.dataset("train", tokenizer)  # packed sequences, or the objective's own examples
    valid_data = objective.dataset("valid", tokenizer) if cfg.data.valid else None
    likelihood = ValidationLikelihood.create(cfg, tokenizer, objective)  # PPL / pseudo-PPL on data.valid, or None
    probe = OnlineProbe(cfg, tokenizer, objective.causal) if cfg.eval.probe_task and dist.is_main else None
    batch = cfg.train.batch_size * dist.world_size  # global micro-batches, the same on every process
    try:
        loader = SequenceLoader(train_data, batch, cfg.train.seed)
    except ValueError as e:
        raise ConfigError(f"key 'train.batch_size': {e} in data.train") from None
    params = sum(p.numel() for p in objective.parameters())  # before ZeRO-3 partitions them
    if cfg.train.max_flops:
        cfg = budget_steps(cfg, objective, train_data, batch, dist)
    cfg, decided = decided_length(cfg, saved, dist)  # train.max_minutes: the checkpoint's decision, or UNDECIDED
    engine = build_engine(objective, cfg.train, dist)
    state = TrainState(loader, SkipGuard(cfg.train.max_skipped_steps), dist)
    if resumed_from is not None:
        check_same_data(saved, loader, corpus_of(cfg, "train").location, resumed_from)
        engine.load_state(resumed_from, saved)  # weights, optimizer and schedule
        state.load_state_dict(saved)
        state.time_budget = decided
        if dist.is_main:
            print(f"resumed from {resumed_from} at step {state.step}", file=sys.stderr)
    run = Run(cfg, dist, run_dir, objective, engine, state, resumed_from)
    if state.step >= cfg.train.max_steps:  # finished already: nothing to add, nothing logged twice
        if dist.is_main:
            length = next(f"train.{k}" for k in ("max_flops", "max_minutes", "max_steps") if getattr(cfg.train, k))
            print(f"note: {resumed_from} is at step {state.step} >= train.max_steps={cfg.train.max_steps}: nothing to "
                  f"do (raise {length} to train longer)", file=sys.stderr)
        return run
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        announce(cfg, dist, out, params, train_data, source if resumed_from is None else None)
    measuring = bool(cfg.train.max_minutes) and decided is None
    run.log = RunLog(out, state.step, None if measuring else cfg.train.max_steps, cfg.train.log_every,
                     cfg.train.tensorboard, dist.is_main)
    if measuring:
        run.budget = TimeBudget(cfg, run.log, started)
    run.best = BestCheckpoint(out, objective.selection_metric)
    run.evaluator = Evaluator(cfg, dist, engine, tokenizer, (train_data, valid_data), likelihood, probe, run.best,
                              run.log)
    run.checkpointer = Checkpointer(cfg, dist, engine, tokenizer, run_dir, run.best, run.log)
    return run
