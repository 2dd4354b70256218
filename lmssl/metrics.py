"""metrics.jsonl (one JSON object per logged step, each written whole) and TensorBoard scalars."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from lmssl.atomic import write_text
from lmssl.errors import storage_error


def tensorboard_tag(key: str) -> str:
    """TensorBoard groups by the part before '/': training scalars under train/, evaluations under val/."""
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    return f"val/{key}" if key.endswith("_spearman") else f"train/{key}"


class MetricsLogger:
    def __init__(self, output_dir: Path, tensorboard: bool = True, truncate_after: int = 0):
        self.path = Path(output_dir) / "metrics.jsonl"
        if self.path.exists():
            # a resumed run drops what the interrupted run logged after its last checkpoint, and a line an
            # earlier crash cut short (the disk filled up mid-line)
            kept, cut = [], 0
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    if line.strip() and json.loads(line)["step"] <= truncate_after:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    cut += 1
            if cut:
                print(f"note: {self.path}: dropped {cut} unreadable line(s), cut short by an earlier crash",
                      file=sys.stderr)
            write_text(self.path, "".join(line + "\n" for line in kept))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=truncate_after + 1)

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
