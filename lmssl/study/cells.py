"""A study's cells (one run at one FLOP budget) and the JSON files their finished work is kept in, each with the
settings it was made with."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmssl.config.study import RunSpec, StudySpec, budget_label
from lmssl.errors import ConfigError
from lmssl.storage.atomic import write_text


@dataclass(frozen=True)
class Cell:
    """One run at one budget (FLOPs, or minutes of training)."""
    run: RunSpec
    budget: float
    unit: str = "flops"  # study.budget_unit

    @property
    def name(self) -> str:
        return f"{self.run.name}-{budget_label(self.budget, self.unit)}"  # mlm-2e13, mlm-10min


def cells_of(spec: StudySpec) -> list[Cell]:
    return [Cell(run, budget, spec.budget_unit) for run in spec.all_runs() for budget in sorted(run.budgets)]


def read_json(path: Path) -> dict | None:
    """A finished step's record, None when absent; a damaged one stops the study naming the file (lmssl writes them
    atomically, so damage came from elsewhere and deserves a look rather than a silent redo)."""
    if not path.is_file():
        return None
    redo = "delete it and run the study again to redo that step"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; {redo}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno}); {redo}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(value).__name__}; {redo}")
    return value


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=1) + "\n")


def changed_settings(old: dict | None, new: dict, keys: str = "all") -> list[str]:
    """What differs between the settings a record was made with and today's: ["max_words 200 -> 300", ...].
    keys="shared" compares only the keys both hold (a config field added by a later lmssl, at its default, is no
    change)."""
    if old is None:
        return ["made before lmssl recorded settings"]
    names = [k for k in new if k in old] if keys == "shared" else list(dict.fromkeys([*old, *new]))
    return [f"{k} {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in names if old.get(k) != new.get(k)]
