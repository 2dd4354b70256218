"""metrics.jsonl, a run's log: one JSON object per line, each with its `step`, written whole (lmssl.training.logger).
Read here, by everything that reads it back (resume, `lmssl eval compare`, studies)."""
from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: Path) -> tuple[list[dict], int]:
    """The logged lines of a run's metrics.jsonl, in order ([] when it has none), and the count of lines that could not
    be read (cut short by a crash, or not a logged object), which are left out."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return [], 0
    rows, unreadable = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            unreadable += 1
    return rows, unreadable
