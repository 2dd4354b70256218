"""metrics.jsonl, a run's log: one JSON object per line, each with its `step`, written whole (lmssl.training.logger).
Read here, by everything that reads it back (resume, `lmssl eval compare`, studies)."""
from __future__ import annotations

import json
from pathlib import Path

from lmssl.errors import ConfigError

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: Path, strict: bool = False) -> tuple[list[dict], int]:
    """The logged lines of a run's metrics.jsonl, in order ([] when it has none), and the count of lines that could not
    be read (cut short by a crash, or not a logged object), which are left out. `strict`: a line that is whole JSON
    but not a logged object (a list, a number, an object without an integer step) is a ConfigError naming the file
    and line, since no crash writes one; only lines that do not parse (a cut line) are counted and left out."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return [], 0
    rows, unreadable = [], 0
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            unreadable += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        elif strict:
            raise ConfigError(f"{path}:{number}: not a logged step (a JSON {type(row).__name__}; each line of "
                              f"{METRICS_FILE} is an object with an integer \"step\", as lmssl train writes it)")
        else:
            unreadable += 1
    return rows, unreadable
