"""What a run reports and when: a training line every train.log_every steps (and at the last step) with the
throughput since the previous one, each evaluation's line, into metrics.jsonl and TensorBoard (main process only),
and the progress bar. The step's values stay on the device until a line is written: the host syncs only then."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lmssl.errors import storage_error
from lmssl.storage.atomic import write_text
from lmssl.storage.metrics_log import METRICS_FILE, read_metrics


def tensorboard_tag(key: str) -> str:
    """TensorBoard groups by the part before '/': training scalars under train/, evaluations under val/."""
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    return f"val/{key}" if key.endswith("_spearman") else f"train/{key}"


class MetricsLogger:
    """metrics.jsonl (one JSON object per logged step, each written whole) and TensorBoard scalars."""

    def __init__(self, output_dir: Path, tensorboard: bool = True, truncate_after: int = 0):
        self.path = Path(output_dir) / METRICS_FILE
        if self.path.exists():
            # a resumed run drops what the interrupted run logged after its last checkpoint, and a line an
            # earlier crash cut short (the disk filled up mid-line)
            rows, cut = read_metrics(output_dir)
            if cut:
                print(f"note: {self.path}: dropped {cut} unreadable line(s), cut short by an earlier crash",
                      file=sys.stderr)
            write_text(self.path, "".join(json.dumps(row) + "\n" for row in rows if row["step"] <= truncate_after))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.writer = self.tensorboard(output_dir, purge_step=truncate_after + 1) if tensorboard else None

    @staticmethod
    def tensorboard(output_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=purge_step)

    def moving(self) -> None:
        """The run's directory is about to move (train.overwrite): TensorBoard appends by path, so it closes first."""
        if self.writer is not None:
            self.writer.close()

    def moved(self, output_dir: Path) -> None:
        """metrics.jsonl's descriptor survives the rename; TensorBoard goes on in a new event file of the new place."""
        self.path = Path(output_dir) / METRICS_FILE
        if self.writer is not None:
            self.writer = self.tensorboard(output_dir)

    def log(self, step: int, values: dict[str, float]) -> None:
        line = (json.dumps({"step": step, **values}) + "\n").encode()
        try:
            written = os.write(self.fd, line)  # one write per line: readers never see half of one
            if written != len(line):
                raise OSError(28, "No space left on device")
        except OSError as e:
            raise storage_error(e, self.path) or e
        if self.writer is not None:
            try:
                for k, v in values.items():
                    if isinstance(v, (int, float)):
                        self.writer.add_scalar(tensorboard_tag(k), v, step)
            except OSError as e:  # TensorBoard is a view of metrics.jsonl: losing it never stops a run
                print(f"warning: TensorBoard logging stopped ({e}); metrics.jsonl goes on", file=sys.stderr)
                self.writer = None

    def close(self) -> None:
        os.close(self.fd)
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                pass


def host_values(stats: dict) -> dict:
    """The step's statistics as Python numbers (device tensors are read here: the one host sync of a log step)."""
    return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in stats.items()}


class RunLog:
    """The loop's logger: `train_step` after each step, `write` for an evaluation's line. Closed by the Run
    (lmssl.training.prepare) also on an error, so the bar ends before the error line."""

    def __init__(self, output_dir: Path, step: int, max_steps: int | None, log_every: int, tensorboard: bool,
                 main: bool):
        self.metrics = MetricsLogger(output_dir, tensorboard, truncate_after=step) if main else None
        self.log_every, self.max_steps = log_every, max_steps
        self.bar = tqdm(total=max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True, disable=not main)
        self.window_start = time.perf_counter()

    def train_step(self, state, stats: dict) -> None:
        """Advance the bar; on a log step, write the step's line with the tokens per second since the last one."""
        self.bar.update()
        if state.step % self.log_every and state.step != self.max_steps:
            return
        values = host_values(stats)
        values["tokens_per_s"] = state.tokens / (time.perf_counter() - self.window_start)
        self.write(state.step, values)
        self.bar.set_postfix(loss=f"{values['loss']:.3f}", tok_s=f"{values['tokens_per_s']:.0f}")
        state.tokens, self.window_start = 0, time.perf_counter()

    def set_max_steps(self, max_steps: int) -> None:
        """train.max_minutes decided the run's length after its first steps (None until then)."""
        self.max_steps, self.bar.total = max_steps, max_steps
        self.bar.refresh()

    def note(self, message: str) -> None:
        """A line on stderr above the bar (main process only)."""
        if self.metrics is not None:
            tqdm.write(message, file=sys.stderr)

    def write(self, step: int, values: dict) -> None:
        if self.metrics is not None:
            self.metrics.log(step, values)

    def moving(self) -> None:
        if self.metrics is not None:
            self.metrics.moving()

    def moved(self, output_dir: Path) -> None:
        if self.metrics is not None:
            self.metrics.moved(output_dir)

    def close_bar(self) -> None:
        """Before the final evaluation: its lines come after the bar."""
        self.bar.close()

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
