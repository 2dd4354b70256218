"""`lmssl study STUDY.yaml`: every run at every FLOP budget (a cell), one after another, then the evaluations of each
cell's final checkpoint, then results.json, report.md and the plots.

Everything lands under study_dir: runs/<cell>/ (the pretraining run), cells/<cell>/<evaluation>.json (one file per
finished evaluation), scratch/ (from-scratch fine-tuning, shared by cells of one architecture). A finished cell or
evaluation is never redone while the study file asks for the same thing: after an interruption (a signal, a crash,
SIGKILL) the same command goes on from the last checkpoint of the interrupted run and the first unfinished
evaluation. Every record keeps the settings it was made with: a cell trained with other settings than the study file
now gives stops the study before anything runs (one line saying what changed); an evaluation made with other
settings is redone (with a note). `--print` prints the training command lines instead (to launch elsewhere); the
study then evaluates whatever runs have finished."""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from lmssl.checkpoint.format import latest_checkpoint
from lmssl.config.study import BUDGET_KEYS, StudySpec
from lmssl.errors import ConfigError, RunError
from lmssl.storage.atomic import write_text
from lmssl.storage.metrics_log import read_metrics
from lmssl.storage.ownership import foreign_entries, refuse_foreign
from lmssl.study.cells import Cell, cells_of, changed_settings, read_json, write_json
from lmssl.study.evaluations import evaluate_cell, prepare_pairs, task_names
from lmssl.study.plots import plots
from lmssl.study.report import PLOTS, machine, render_report, scaling_fit
from lmssl.training.loop import train
from lmssl.training.prepare import load_run_config

# all a study writes in its directory: a directory holding anything else is not written into
STUDY_ENTRIES = ("cells", "runs", "scratch", "pairs.jsonl", "pairs.json", "results.json", "report.md", *PLOTS)


def train_overrides(spec: StudySpec, cell: Cell, study_dir: Path) -> list[str]:
    return [*spec.overrides, *cell.run.overrides, f"train.output_dir={study_dir / 'runs' / cell.name}",
            f"{BUDGET_KEYS[cell.unit]}={cell.budget!r}"]  # the shortest exact text: a budget trains as written


def train_command(spec: StudySpec, cell: Cell, study_dir: Path) -> str:
    return shlex.join(["lmssl", "train", cell.run.config, *train_overrides(spec, cell, study_dir),
                       "train.resume=true"])


# keys that change neither what a cell learns nor what its record says: where things are, how fast and how often saved
BOOKKEEPING = {"train.output_dir", "train.resume", "train.overwrite", "train.tensorboard", "train.num_threads",
               "train.save_every", "train.keep_checkpoints", "data.root", "data.cache_dir", "model.attention_backend"}


def config_settings(config: str, overrides: list[str]) -> dict:
    """The resolved config a cell trains with, flat (section.key: value), less its bookkeeping keys."""
    cfg = load_run_config(config, [o for o in overrides if o != "train.resume=true"]).to_dict()
    flat = {f"{section}.{key}": value for section, values in cfg.items() for key, value in values.items()}
    return json.loads(json.dumps({k: v for k, v in flat.items() if k not in BOOKKEEPING}))  # tuples as lists


def check_finished(spec: StudySpec, cells: list[Cell], study_dir: Path) -> dict[str, dict]:
    """Before anything runs: every cell's record readable, and every trained cell trained with the settings the study
    file gives today (otherwise one line saying what changed); returns each cell's settings."""
    settings = {}
    for cell in cells:
        settings[cell.name] = settings_now = config_settings(cell.run.config, train_overrides(spec, cell, study_dir))
        cell_dir = study_dir / "cells" / cell.name
        for path in sorted(cell_dir.glob("*.json")) if cell_dir.is_dir() else []:
            read_json(path)  # a damaged evaluation stops the study now, not after hours of training
        record = read_json(cell_dir / "train.json")
        if record is None:
            continue
        before = record.get("settings")
        if before is None:  # a record from before settings were kept: its config and overrides resolved today
            before = config_settings(record.get("config", ""), record.get("overrides", []))
        changed = changed_settings(before, settings_now, keys="shared")
        if record.get("config") != cell.run.config:
            changed.insert(0, f"config {json.dumps(record.get('config'))} -> {json.dumps(cell.run.config)}")
        if changed:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            raise ConfigError(f"{spec.source}: cell {cell.name} was trained with other settings "
                              f"({'; '.join(changed[:3])}{more}) under {study_dir}; restore them, or give the study "
                              f"another output_dir")
    return settings


def run_summary(run_dir: Path) -> dict:
    """What the run's metrics.jsonl says at its end: the last validation (val_* keys), steps and FLOPs trained, and
    the validation curve against FLOPs (for the plots)."""
    lines = read_metrics(run_dir)[0]
    validations = [line for line in lines if any(k.startswith("val_") for k in line)]
    final: dict = {}
    for line in validations:  # a step's validation, likelihood and probe lines merge
        if line["step"] == lines[-1]["step"]:
            final.update(line)
    curve = [{"step": v["step"], "flops": v.get("flops"), "val_loss": v["val_loss"]}
             for v in validations if "val_loss" in v]
    return {"steps": lines[-1]["step"], "flops": max((line.get("flops", 0) for line in lines), default=0),
            "final": {k: v for k, v in final.items() if k.startswith("val_")}, "curve": curve}


def train_cell(spec: StudySpec, cell: Cell, study_dir: Path, settings: dict) -> dict:
    """Train the cell's run (resuming it when it has a checkpoint); its record, also written to
    cells/<cell>/train.json. A run stopped by a signal stops the study."""
    done = study_dir / "cells" / cell.name / "train.json"
    record = read_json(done)
    if record is not None:
        return record
    out = study_dir / "runs" / cell.name
    overrides = train_overrides(spec, cell, study_dir) + (["train.resume=true"] if latest_checkpoint(out) else [])
    cfg = load_run_config(cell.run.config, overrides)
    print(f"study {spec.name}: training {cell.name} ({cell.run.config}, {cell.budget:.3g} "
          f"{'FLOPs' if cell.unit == 'flops' else 'minutes'})", file=sys.stderr)
    started = time.perf_counter()
    result = train(cfg)
    if "stopped" in result:
        raise RunError(f"study {spec.name}: stopped while training {cell.name} (checkpoint {result['checkpoint']}); "
                       f"the same `lmssl study` command resumes it")
    c = cfg.train
    summary = run_summary(out)
    record = {"cell": cell.name, "run": cell.run.name, "budget": cell.budget, "budget_unit": cell.unit,
              "config": cell.run.config,
              "overrides": overrides, "checkpoint": result["checkpoint"], **summary,
              "tokens": summary["steps"] * c.batch_size * c.grad_accum * cfg.data.seq_len,
              "train_seconds": round(time.perf_counter() - started, 1), "settings": settings}
    write_json(done, record)
    return record


def run_study(spec: StudySpec, print_only: bool = False) -> dict:
    """Train and evaluate every cell (or print the training commands of the unfinished ones); returns the summary
    `lmssl study` prints."""
    study_dir = Path(spec.output_dir)
    refuse_foreign(f"{spec.source}: key 'output_dir'", study_dir, foreign_entries(study_dir, STUDY_ENTRIES),
                   "a study directory", "choose another output_dir")
    cells = cells_of(spec)
    tasks = task_names(spec)
    settings = check_finished(spec, cells, study_dir)
    if print_only:
        pending = [c for c in cells if not (study_dir / "cells" / c.name / "train.json").is_file()]
        for cell in pending:
            print(train_command(spec, cell, study_dir))
        return {"study": spec.name, "pending": [c.name for c in pending],
                "then": f"lmssl study {spec.source} (evaluates the finished runs, trains the others)"}
    started = time.perf_counter()
    pairs = prepare_pairs(spec, study_dir)
    records = []
    for cell in cells:
        record = train_cell(spec, cell, study_dir, settings[cell.name])
        record["evaluations"] = evaluate_cell(spec, cell, record, study_dir, pairs, tasks,
                                              largest=cell.budget == max(cell.run.budgets))
        records.append(record)
    return write_results(spec, study_dir, records, time.perf_counter() - started)


def write_results(spec: StudySpec, study_dir: Path, records: list[dict], wall: float) -> dict:
    """results.json, the plots and report.md; returns the summary line `lmssl study` prints."""
    fit = scaling_fit(spec, records)
    total = sum(r["train_seconds"] + sum(e.get("seconds", 0.0) for e in r["evaluations"].values()) for r in records)
    results = {"study": spec.name, "source": spec.source, "machine": machine(), "seconds_total": round(total, 1),
               "seconds_last_invocation": round(wall, 1), "cells": records, "scaling": fit}
    results["plots"] = plots(study_dir, records, fit)
    write_text(study_dir / "results.json", json.dumps(results, indent=1, default=float) + "\n")
    report = render_report(study_dir)
    print(report, file=sys.stderr)
    return {"study": spec.name, "cells": len(records), "results": str(study_dir / "results.json"),
            "report": str(study_dir / "report.md"), "minutes_total": round(total / 60, 1),
            **({"alpha": fit["alpha"], "beta": fit["beta"]} if fit and "error" not in fit else {})}
