"""A study's cells (one run at one FLOP budget) and the JSON files their finished work is kept in."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmssl.config.study import RunSpec, StudySpec
from lmssl.storage.atomic import write_text


@dataclass(frozen=True)
class Cell:
    """One run at one FLOP budget."""
    run: RunSpec
    budget: float

    @property
    def name(self) -> str:
        return f"{self.run.name}-{self.budget:.3g}".replace("+", "")  # mlm-2e13


def cells_of(spec: StudySpec) -> list[Cell]:
    return [Cell(run, budget) for run in spec.all_runs() for budget in sorted(run.budgets)]


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=1) + "\n")
