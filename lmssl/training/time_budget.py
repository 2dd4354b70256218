"""train.max_minutes: a wall-clock budget turned into train.max_steps once, from the speed of the run's first steps.

The clock starts when the run starts preparing (`lmssl train` minus Python's imports): set-up, data, the untimed
first step (allocations, compilation) and everything else before the decision are counted as they happened. The
first step is not timed; the median wall time of the next steps (batch collation, forward, backward, optimizer step;
not the logging, evaluations or checkpoints between them) is the speed: as many as the warmup allows before its last
step, between TIMED_STEPS and MAX_TIMED_STEPS (8 steps misjudged recipe-study cells' speed by up to 30%), and

    max_steps = steps done + floor((max_minutes x 60 - seconds elapsed) / seconds per step)

Evaluations, checkpoints after the decision and the final evaluation are not counted: leave them room. Until the
decision the schedule reads max_steps = UNDECIDED (warmup, then the peak lr of an endless run); the decided value is
set in the run's one TrainConfig, which the loop, the evaluator, the checkpointer and the engine's schedule read at
each use, and recorded in the trainer state, so a resumed run keeps it without measuring again. The lr of the step
after the decision was set just before it, so the whole schedule is that of the decided length when
train.warmup_steps > TIMED_STEPS + UNTIMED_STEPS (the warmup does not depend on max_steps)."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import sys
import time

from lmssl.config import Config
from lmssl.distributed import gather_objects

UNTIMED_STEPS = 1  # the first step: allocations, compilation, warm caches
TIMED_STEPS = 8  # the fewest steps whose median wall time decides max_steps (a median: a recompile does not skew it)
MAX_TIMED_STEPS = 50  # the most: a longer warmup buys a steadier measurement, never a later decision than this
UNDECIDED = 2**31 - 1  # train.max_steps while it is measured


clock = time.monotonic  # what `now` reads (tests replace it)


def now() -> float:
    return clock()


def decided_length(cfg: Config, saved: dict | None, dist) -> tuple[Config, dict | None]:
    """(cfg with the max_steps of train.max_minutes, the trainer state's record of the decision). A resumed run keeps
    its checkpoint's decision; with another max_minutes it decides again from the recorded speed and elapsed time
    (no new measurement). (cfg with max_steps=UNDECIDED, None) when the run has yet to measure."""
    minutes = cfg.train.max_minutes
    record = (saved or {}).get("time_budget")
    if not minutes:
        return cfg, None
    if record is None:
        return replace_max_steps(cfg, UNDECIDED), None
    if record["max_minutes"] != minutes:
        was, record = record["max_minutes"], decision(minutes, record["at_step"], record["elapsed_s"],
                                                      record["seconds_per_step"])
        if dist.is_main:
            print(f"train.max_minutes={minutes:g} (was {was:g}): train.max_steps={record['max_steps']}, from the "
                  f"checkpoint's measured {record['seconds_per_step']:.4g} s/step", file=sys.stderr)
    return replace_max_steps(cfg, record["max_steps"]), record


def replace_max_steps(cfg: Config, max_steps: int) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=max_steps))


def decision(minutes: float, at_step: int, elapsed: float, per_step: float) -> dict:
    """The record of a decision (plain numbers: trainer_state.pt loads as plain data)."""
    left = max(0, math.floor((minutes * 60 - elapsed) / per_step))
    return {"max_minutes": minutes, "at_step": at_step, "elapsed_s": elapsed, "seconds_per_step": per_step,
            "max_steps": at_step + left}


class TimeBudget:
    """Times the first steps of a run with train.max_minutes and then sets its max_steps (inert otherwise)."""

    def __init__(self, cfg: Config | None = None, log=None, started: float = 0.0):
        self.cfg, self.log, self.started = cfg, log, started  # log: lmssl.training.logger.RunLog
        self.measuring = cfg is not None
        self.seen = 0  # steps of this process since it started measuring
        self.seconds: list[float] = []
        warmup = cfg.train.warmup_steps if cfg is not None else 0
        self.window = max(TIMED_STEPS, min(MAX_TIMED_STEPS, warmup - UNTIMED_STEPS - 1))  # steps timed

    @contextlib.contextmanager
    def timed(self, state):
        """Around one step (its batches and the engine's step); decides once TIMED_STEPS have been timed."""
        if not self.measuring:
            yield
            return
        begin = now()
        yield
        self.seen += 1
        if self.seen > UNTIMED_STEPS:
            self.seconds.append(now() - begin)
        if len(self.seconds) == self.window:
            self.decide(state)

    def decide(self, state) -> None:
        train = self.cfg.train
        per_step, elapsed = max(statistics.median(self.seconds), 1e-9), now() - self.started
        per_step, elapsed = gather_objects((per_step, elapsed))[0]  # the main process's clock decides for all
        record = decision(train.max_minutes, state.step, elapsed, per_step)
        state.time_budget, self.measuring = record, False
        # the one change to a config after prepare: every part of the run reads this TrainConfig's max_steps at use
        train.max_steps = record["max_steps"]
        self.log.set_max_steps(train.max_steps)
        first = state.step - self.window + 1
        self.log.note(f"train.max_minutes={train.max_minutes:g}: train.max_steps={train.max_steps} (the median of "
                      f"steps {first}-{state.step}: {per_step:.4g} s/step; {elapsed / 60:.2f} min spent before; "
                      f"evaluations and checkpoints from now on are not counted)")
        if train.max_steps <= train.warmup_steps:
            self.log.note(f"warning: train.warmup_steps={train.warmup_steps} >= the {train.max_steps} steps of the "
                          f"budget: the learning rate never reaches its peak")
