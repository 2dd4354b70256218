"""The training loop: one readable function over the Objective and Engine seams."""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lmssl import distributed
from lmssl.atomic import remove_stale
from lmssl.checkpoint import (
    BestCheckpoint,
    checkpoints_dir,
    intact_checkpoint,
    latest_checkpoint,
    load_checkpoint_config,
    save_training_checkpoint,
)
from lmssl.config import Config
from lmssl.data.loader import SequenceLoader
from lmssl.data.paths import corpus_of, data_root
from lmssl.data.tokenizer import TextTokenizer, tokenizer_path
from lmssl.data.unigram import Unigram, UnigramBaselines
from lmssl.downstream.online_probe import OnlineProbe
from lmssl.downstream.sts import evaluate_sts
from lmssl.engine import build_engine, require_engine
from lmssl.errors import ConfigError
from lmssl.evaluation.baselines import baseline_table
from lmssl.evaluation.likelihood import ValidationLikelihood
from lmssl.evaluation.validation import evaluate
from lmssl.faults import SkipGuard, StopSignals, check_resumable
from lmssl.metrics import MetricsLogger
from lmssl.objectives import build_objective
from lmssl.pretrained import init_encoder
from lmssl.resolve import run_tokenizer, with_vocab
from lmssl.rng import seed_everything, set_rng_state
from lmssl.rundir import RunDirectory


def masking_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """Data corruption draws depend only on (seed, step, micro-batch): a resumed run redraws them exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 64 + micro)


FLOP_SAMPLE_STEPS = 8  # the first steps whose mean FLOPs turn train.max_flops into train.max_steps


def step_flops(objective, micro_batches: list) -> int | None:
    """Training FLOPs of the micro-batches of a step (Objective.train_flops), None if the objective counts none."""
    counts = [objective.train_flops(batch) for batch in micro_batches]
    return None if None in counts else sum(sum(c.values()) for c in counts)


def mean_step_flops(cfg: Config, objective, train_data, batch_size: int) -> float:
    """The mean FLOPs of the run's first steps (their own micro-batches, `batch_size` sequences each, and masking
    draws): train.max_flops over it, rounded up, is train.max_steps."""
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
    return total / FLOP_SAMPLE_STEPS


class _NoLogger:
    """What processes other than the main one log: nothing."""

    def log(self, step, metrics) -> None:
        pass

    def close(self) -> None:
        pass


def final_baselines(cfg: Config, objective, train_data, valid_data, likelihood, tokenizer: TextTokenizer,
                    result: dict) -> dict[str, tuple[float, str]]:
    """The baselines (`Objective.baselines`) of the final metrics in `result`: the training tokens' unigram model
    scored on the validation tokens and on the text PPL / pseudo-PPL scores, the scored pairs' majority label.
    None of them for a streamed corpus, whose tokens are not held."""
    train, valid = getattr(train_data, "tokens", None), getattr(valid_data, "tokens", None)
    if train is None or valid is None:
        return {}
    model = Unigram(train, tokenizer.vocab_size, tokenizer.special_ids)
    unigram = UnigramBaselines.of(model, valid, likelihood.tokens() if likelihood else None)
    evaluated = min(len(valid_data), cfg.eval.max_batches * cfg.eval.batch_size or len(valid_data))
    return {k: (v, what) for k, (v, what) in objective.baselines(unigram, valid_data, evaluated).items()
            if v is not None and k in result}


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


def train(cfg: Config) -> dict:
    """Pretrain as configured; returns the final validation metrics and the last checkpoint path.

    Under torchrun or the deepspeed launcher every process runs this function: each takes its slice of every
    global micro-batch (the data order is that of one process with world_size x train.batch_size sequences),
    only the main process logs and writes checkpoint files (DeepSpeed's partitions excepted). The main process
    owns the output directory for the whole run (lmssl.runlock)."""
    dist = distributed.setup(require_group=cfg.train.engine == "deepspeed")
    out = Path(cfg.train.output_dir)
    check_output_dir(out)
    # missing, empty, binary, non-UTF-8 or uncached corpora stop the run before any work
    for split in ("train", "valid") if cfg.data.valid not in ("", "auto") else ("train",):
        corpus_of(cfg, split).check()
    require_engine(cfg.train)
    run_dir = RunDirectory(out, cfg.train.overwrite, dist.is_main).open()
    try:
        return _train(cfg, dist, run_dir)
    except ConfigError:
        run_dir.discard_if_new()  # a bad input leaves nothing behind
        raise
    finally:
        run_dir.close()


def _train(cfg: Config, dist, run_dir: RunDirectory) -> dict:
    out = run_dir.path
    if dist.is_main:
        removed = remove_stale(checkpoints_dir(out)) + remove_stale(out)
        if removed:
            print(f"note: removed {len(removed)} temporary file(s) a stopped run left behind: "
                  f"{', '.join(p.name for p in removed[:4])}", file=sys.stderr)
    resume_from, state, tokenizer = resume_point(cfg, out, dist)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.train.seed)
    tokenizer = tokenizer or run_tokenizer(cfg)  # model.init_from brings the tokenizer it was trained with
    cfg = with_vocab(cfg, tokenizer.vocab_size)
    objective = build_objective(cfg, tokenizer)
    init_from = None if resume_from else init_encoder(objective, cfg)  # model.init_from: a pretrained encoder
    train_data = objective.dataset("train", tokenizer)  # packed sequences, or the objective's own examples
    valid_data = objective.dataset("valid", tokenizer) if cfg.data.valid else None
    likelihood = ValidationLikelihood.create(cfg, tokenizer, objective)  # PPL / pseudo-PPL on data.valid, or None
    probe = OnlineProbe(cfg, tokenizer, objective.causal) if cfg.eval.probe_task and dist.is_main else None
    per_rank = cfg.train.batch_size
    try:  # one loader of global micro-batches, the same on every process: resuming restores all of them at once
        loader = SequenceLoader(train_data, per_rank * dist.world_size, cfg.train.seed)
    except ValueError as e:
        raise ConfigError(f"key 'train.batch_size': {e} in data.train") from None
    params = sum(p.numel() for p in objective.parameters())  # before ZeRO-3 partitions them
    if cfg.train.max_flops:
        mean = mean_step_flops(cfg, objective, train_data, per_rank * dist.world_size)
        max_steps = max(1, math.ceil(cfg.train.max_flops / mean))
        if dist.is_main:
            print(f"train.max_flops={cfg.train.max_flops:.3g}: train.max_steps={max_steps} (the first "
                  f"{FLOP_SAMPLE_STEPS} steps' mean: {mean:.4g} FLOPs)", file=sys.stderr)
            if max_steps <= cfg.train.warmup_steps:
                print(f"warning: train.warmup_steps={cfg.train.warmup_steps} >= the {max_steps} steps of the budget: "
                      f"the learning rate never reaches train.lr", file=sys.stderr)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=max_steps))
    engine = build_engine(objective, cfg.train, dist)

    def next_micro_batch() -> list:
        examples = loader.next_batch()
        return examples[dist.rank * per_rank:(dist.rank + 1) * per_rank]

    step, guard, flops = 0, SkipGuard(cfg.train.max_skipped_steps), 0  # flops: cumulative, every process's
    if resume_from is not None:
        engine.load_state(resume_from, state)  # weights, optimizer and schedule
        loader.load_state_dict(state["loader"])
        rngs = state.get("rng_ranks") or [state["rng"]]
        set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
        step, guard.total, flops = state["step"], state.get("skipped_steps", 0), state.get("flops", 0)
        if dist.is_main:
            print(f"resumed from {resume_from} at step {step}", file=sys.stderr)
        if step >= cfg.train.max_steps:  # finished already: nothing to add, nothing logged twice
            if dist.is_main:
                print(f"note: {resume_from} is at step {step} >= train.max_steps={cfg.train.max_steps}: nothing to "
                      f"do (raise train.max_steps to train longer)", file=sys.stderr)
            return {"step": step, "checkpoint": str(resume_from)}
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        logger = MetricsLogger(out, tensorboard=cfg.train.tensorboard, truncate_after=step)
        count = "streamed" if cfg.data.streaming else f"{len(train_data)}"
        print(f"{cfg.objective.name}: {params / 1e6:.2f}M parameters, {count} training sequences of {cfg.data.seq_len} "
              f"tokens, {dist.world_size} process(es) x {per_rank} x {cfg.train.grad_accum} accumulated = "
              f"{dist.world_size * per_rank * cfg.train.grad_accum} sequences per step, engine {cfg.train.engine}, "
              f"output in {out}", file=sys.stderr)
        if init_from is not None:
            print(f"encoder initialised from {init_from}", file=sys.stderr)
    else:
        logger = _NoLogger()

    def checkpoint() -> Path | None:
        nonlocal out
        state = {"loader": loader.state_dict(), "skipped_steps": guard.total, "flops": flops}
        written = save_training_checkpoint(out, step, engine, cfg, tokenizer, state, cfg.train.keep_checkpoints,
                                           dist)
        if written is not None and run_dir.committed():  # train.overwrite: the new run now takes the old one's place
            out = run_dir.path
            best.relocate(out)
            written = out / written.relative_to(written.parent.parent)
        return written

    def validate() -> dict:
        """The objective's loss and metrics on data.valid, plus PPL / pseudo-PPL on its first words."""
        metrics = evaluate(engine, valid_data, cfg.eval.batch_size, cfg.eval.max_batches)
        return {**metrics, **(likelihood(objective) if likelihood else {}), **counted_flops()}

    def counted_flops() -> dict:
        return {"flops": flops} if flops else {}  # none for an objective that does not count them

    best = BestCheckpoint(out, objective.selection_metric)

    def sts_eval() -> dict:
        """The STS sets the objective asks for (SimCSE: STS-B dev); the best weights on its selection metric
        are kept in output_dir/best. Draws nothing from the global RNG, so training stays reproducible."""
        sets = objective.sts_sets()
        if not sets:
            return {}
        scores = evaluate_sts(objective, tokenizer, data_root(cfg), sets, batch_size=cfg.eval.batch_size)
        metrics = {f"{name}_spearman": value for name, value in scores.items()}
        logger.log(step, {**metrics, **counted_flops()})
        with engine.gathered():  # collective under ZeRO-3
            if dist.is_main:
                best.update(step, metrics, objective, cfg, tokenizer)
        return metrics

    def probe_eval() -> dict:
        """The online linear probe of the encoder's current weights (eval.probe_task), on the main process."""
        if not cfg.eval.probe_task:
            return {}
        with engine.gathered():  # collective under ZeRO-3
            metrics = probe(objective.encoder()) if probe is not None else {}
        if metrics:
            logger.log(step, {**metrics, **counted_flops()})
        return metrics

    bar = tqdm(total=cfg.train.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not dist.is_main)
    last_ckpt, window_tokens, window_start = None, 0, time.perf_counter()
    try:
        with StopSignals() as signals:
            while step < cfg.train.max_steps:
                micro = [objective.collate(next_micro_batch(), masking_generator(cfg.train.seed, step, i))
                         for i in range(cfg.train.grad_accum)]
                stats = engine.train_step(micro)
                step += 1
                counted = step_flops(objective, micro)
                if counted is not None:  # this process's micro-batches stand for every process's
                    flops += counted * dist.world_size
                    stats["flops"] = flops
                guard.update(step, stats)  # counts skipped (non-finite) steps
                window_tokens += sum(b.num_tokens for b in micro) * dist.world_size
                bar.update()
                if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
                    elapsed = time.perf_counter() - window_start
                    stats["tokens_per_s"] = window_tokens / elapsed
                    logger.log(step, stats)
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=f"{stats['tokens_per_s']:.0f}")
                    window_tokens, window_start = 0, time.perf_counter()
                guard.check(step, cfg)  # too many skipped steps in a row stop the run (after logging this one)
                stopping = distributed.any_process(signals.received is not None)
                if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.train.max_steps and not stopping:
                    if valid_data is not None:
                        logger.log(step, validate())
                    sts_eval()
                    probe_eval()
                saving = (cfg.train.save_every and step % cfg.train.save_every == 0) or step == cfg.train.max_steps
                if (saving or stopping) and guard.in_a_row:
                    if dist.is_main:  # weights that just gave a non-finite loss are not worth a checkpoint
                        print(f"warning: no checkpoint at step {step}: its loss was not finite", file=sys.stderr)
                elif saving or stopping:
                    last_ckpt = checkpoint() or last_ckpt
                if stopping:
                    return {"step": step, "checkpoint": str(last_ckpt or latest_checkpoint(out)),
                            "stopped": signals.received or 15}
        bar.close()
        result = {"step": step, "checkpoint": str(last_ckpt or latest_checkpoint(out)), **counted_flops()}
        if valid_data is not None:
            result.update(validate())
            logger.log(step, {k: v for k, v in result.items() if k.startswith("val_") or k == "flops"})
        result.update(sts_eval())
        result.update(probe_eval())
        if best.dir.is_dir():
            result["best"] = str(best.dir)
        baselines = final_baselines(cfg, objective, train_data, valid_data, likelihood, tokenizer, result) \
            if dist.is_main else {}
        if baselines:
            result["baselines"] = {k: v for k, (v, _) in baselines.items()}
            print(baseline_table(result, baselines, step), file=sys.stderr)
        return result
    finally:  # also on an error: the progress bar ends before the error line, metrics.jsonl is closed
        bar.close()
        logger.close()
