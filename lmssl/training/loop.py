"""The training loop: prepare once (lmssl.training.prepare), then steps; the evaluator, the checkpointer and the logger
say when they act."""
from __future__ import annotations

from dataclasses import dataclass, field

from lmssl import distributed
from lmssl.config import Config, RawConfig
from lmssl.training.faults import StopSignals
from lmssl.training.prepare import Run, prepare_run


@dataclass
class RunResult:
    step: int  # the last step trained
    checkpoint: str  # the newest checkpoint
    metrics: dict = field(default_factory=dict)  # the final evaluation: flops, val_*, <STS set>_spearman, val_probe_*
    stopped: int | None = None  # the signal that stopped the run before train.max_steps
    best: str | None = None  # output_dir/best (the objective's selection metric)
    baselines: dict | None = None  # what the final metrics must beat (lmssl.training.evaluator)

    def as_dict(self) -> dict:
        """What `lmssl train` prints as its JSON line."""
        extra = {"stopped": self.stopped, "best": self.best, "baselines": self.baselines or None}
        return {"step": self.step, "checkpoint": self.checkpoint, **self.metrics,
                **{k: v for k, v in extra.items() if v is not None}}


def train(config: Config | RawConfig) -> dict:
    """Pretrain as configured (lmssl.training.prepare.prepare_run says what a config may be); returns the final
    metrics and the last checkpoint (RunResult.as_dict)."""
    with prepare_run(config) as run:
        return run_loop(run).as_dict()


def run_loop(run: Run) -> RunResult:
    cfg, state, engine, objective = run.cfg, run.state, run.engine, run.objective
    if run.finished:
        return RunResult(state.step, str(run.resumed_from))
    with StopSignals() as signals:
        while state.step < cfg.train.max_steps:
            with run.budget.timed(state):  # train.max_minutes: the first steps' speed sets max_steps
                micro = state.micro_batches(objective, cfg.train.grad_accum, cfg.train.seed)
                stats = engine.train_step(micro)
                state.advance(objective, micro, stats)
            run.log.train_step(state, stats)
            state.guard.check(state.step, cfg)  # too many skipped steps in a row stop the run (after logging this one)
            stopping = distributed.any_process(signals.received is not None)
            if run.evaluator.due(state.step, stopping):
                run.evaluator.evaluate(state)
            if run.checkpointer.due(state.step, stopping):
                run.checkpointer.save(state)
            if stopping:
                return RunResult(state.step, run.checkpointer.latest(), stopped=signals.received or 15)
    run.log.close_bar()
    metrics, baselines = run.evaluator.final(state)
    best = str(run.best.dir) if run.best.dir.is_dir() else None
    return RunResult(state.step, run.checkpointer.latest(), metrics, best=best, baselines=baselines)
