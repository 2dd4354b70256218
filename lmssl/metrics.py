"""metrics.jsonl (one JSON object per logged step) and TensorBoard scalars."""
from __future__ import annotations

import json
from pathlib import Path

from lmssl.atomic import write_text


class MetricsLogger:
    def __init__(self, output_dir: Path, tensorboard: bool = True, truncate_after: int = 0):
        self.path = Path(output_dir) / "metrics.jsonl"
        if self.path.exists():
            # a resumed run drops what the interrupted run logged after its last checkpoint
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= truncate_after]
            write_text(self.path, "".join(line + "\n" for line in kept))
        self.file = self.path.open("a")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=truncate_after + 1)

    def log(self, step: int, values: dict[str, float]) -> None:
        record = {"step": step, **values}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
