"""When a run saves, and what: a checkpoint every train.save_every steps, at the last step and when a signal stops it,
but never of weights whose step just had a non-finite loss; the first one of train.overwrite=true also puts the new
run in the old one's place (lmssl.training.rundir)."""
from __future__ import annotations

import sys
from pathlib import Path

from lmssl.checkpoint.format import latest_checkpoint, save_training_checkpoint


class Checkpointer:
    def __init__(self, cfg, dist, engine, tokenizer, run_dir, best, log):
        self.cfg, self.dist, self.engine, self.tokenizer = cfg, dist, engine, tokenizer
        self.run_dir = run_dir  # lmssl.training.rundir.RunDirectory
        self.best = best  # lmssl.checkpoint.format.BestCheckpoint
        self.log = log  # lmssl.training.logger.RunLog
        self.last: Path | None = None  # the newest checkpoint this process wrote

    def due(self, step: int, stopping: bool) -> bool:
        every = self.cfg.train.save_every
        return stopping or bool(every and step % every == 0) or step == self.cfg.train.max_steps

    def save(self, state) -> None:
        """Collective: the checkpoint of `state` (lmssl.training.state.TrainState) and the engine."""
        if state.guard.in_a_row:  # weights that just gave a non-finite loss are not worth a checkpoint
            if self.dist.is_main:
                print(f"warning: no checkpoint at step {state.step}: its loss was not finite", file=sys.stderr)
            return
        written = save_training_checkpoint(self.run_dir.path, state.step, self.engine, self.cfg, self.tokenizer,
                                           state.state_dict(), self.cfg.train.keep_checkpoints, self.dist)
        if written is not None and self.run_dir.replacing:  # train.overwrite: the new run takes the old one's place
            self.log.moving()
            self.run_dir.commit()
            self.log.moved(self.run_dir.path)
            self.best.relocate(self.run_dir.path)
            written = self.run_dir.path / written.relative_to(written.parent.parent)
        self.last = written or self.last

    def latest(self) -> str:
        return str(self.last or latest_checkpoint(self.run_dir.path))
