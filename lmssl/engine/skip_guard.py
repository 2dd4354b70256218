"""The divergence guard of pretraining and fine-tuning: the engines skip a step whose loss or gradient norm is not
finite; the guard counts them, and too many in a row stop the run (or the fine-tuning seed) in one line."""
from __future__ import annotations

import dataclasses

from lmssl.config import Config
from lmssl.errors import RunError


@dataclasses.dataclass
class SkipGuard:
    """Counts the steps the engine skipped (non-finite loss or gradient norm); `limit` in a row stop the run."""
    limit: int
    total: int = 0
    in_a_row: int = 0
    last_finite: tuple[int, object] | None = None  # (step, loss): a tensor until a message needs its value

    def update(self, step: int, stats: dict) -> None:
        """Record the engine's step; stats gets the running count as `skipped_steps`. An applied step had a finite
        loss (the engines apply no other), so its loss is kept without reading it from the device."""
        skipped = bool(stats.pop("skipped", 0.0))
        self.total += skipped
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        stats["skipped_steps"] = self.total
        if not skipped:
            self.last_finite = (step, stats["loss"])

    def diverged(self, step: int, limit_key: str) -> str | None:
        """What the last `limit` skipped steps in a row were ('steps 4-6 (3 in a row, KEY=3) had ...; the last
        finite loss was ...'), or None while fewer were skipped in a row."""
        if self.in_a_row < self.limit:
            return None
        last = (f"the last finite loss was {float(self.last_finite[1]):.4g} at step {self.last_finite[0]}"
                if self.last_finite else "no step had a finite loss")
        return (f"steps {step - self.in_a_row + 1}-{step} ({self.in_a_row} in a row, {limit_key}={self.limit}) had a "
                f"non-finite loss or gradient norm and were skipped; {last}")

    def check(self, step: int, cfg: Config) -> None:
        """RunError when `limit` steps in a row were skipped."""
        what = self.diverged(step, "train.max_skipped_steps")
        if what is not None:
            hint = "train.precision=fp32, " if cfg.train.precision != "fp32" else ""
            raise RunError(f"training diverged: {what}. Try a lower train.lr (now {cfg.train.lr:g}), {hint}more "
                           f"train.warmup_steps or train.clip_grad; the checkpoints written so far are finite")
