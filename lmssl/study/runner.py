"""`lmssl study STUDY.yaml`: every run at every FLOP budget (a cell), one after another, then the evaluations of each
cell's final checkpoint, then results.json, report.md and the plots.

Everything lands under study_dir: runs/<cell>/ (the pretraining run), cells/<cell>/<evaluation>.json (one file per
finished evaluation), scratch/ (from-scratch fine-tuning, shared by cells of one architecture). A finished cell or
evaluation is never redone: after an interruption (a signal, a crash, SIGKILL) the same command goes on from the
last checkpoint of the interrupted run and the first unfinished evaluation. `--print` prints the training command
lines instead (to launch elsewhere); the study then evaluates whatever runs have finished."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from lmssl.checkpoint.format import latest_checkpoint
from lmssl.config.study import StudySpec
from lmssl.errors import RunError
from lmssl.storage.metrics_log import read_metrics
from lmssl.storage.ownership import foreign_entries, refuse_foreign
from lmssl.study.cells import Cell, cells_of, read_json, write_json
from lmssl.study.evaluations import evaluate_cell, prepare_pairs
from lmssl.study.report import write_results
from lmssl.training.loop import train
from lmssl.training.prepare import load_run_config

# all a study writes in its directory: a directory holding anything else is not written into
STUDY_ENTRIES = ("cells", "runs", "scratch", "pairs.jsonl", "results.json", "report.md", "val_loss_vs_flops.png",
                 "scores_vs_flops.png", "label_efficiency.png", "scaling_isoflop.png")


def train_overrides(spec: StudySpec, cell: Cell, study_dir: Path) -> list[str]:
    return [*spec.overrides, *cell.run.overrides, f"train.output_dir={study_dir / 'runs' / cell.name}",
            f"train.max_flops={cell.budget:g}"]


def train_command(spec: StudySpec, cell: Cell, study_dir: Path) -> str:
    return shlex.join(["lmssl", "train", cell.run.config, *train_overrides(spec, cell, study_dir),
                       "train.resume=true"])


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


def train_cell(spec: StudySpec, cell: Cell, study_dir: Path) -> dict:
    """Train the cell's run (resuming it when it has a checkpoint); its record, also written to
    cells/<cell>/train.json. A run stopped by a signal stops the study."""
    done = study_dir / "cells" / cell.name / "train.json"
    record = read_json(done)
    if record is not None:
        return record
    out = study_dir / "runs" / cell.name
    overrides = train_overrides(spec, cell, study_dir) + (["train.resume=true"] if latest_checkpoint(out) else [])
    cfg = load_run_config(cell.run.config, overrides)
    print(f"study {spec.name}: training {cell.name} ({cell.run.config}, {cell.budget:.3g} FLOPs)", file=sys.stderr)
    started = time.perf_counter()
    result = train(cfg)
    if "stopped" in result:
        raise RunError(f"study {spec.name}: stopped while training {cell.name} (checkpoint {result['checkpoint']}); "
                       f"the same `lmssl study` command resumes it")
    c = cfg.train
    summary = run_summary(out)
    record = {"cell": cell.name, "run": cell.run.name, "budget": cell.budget, "config": cell.run.config,
              "overrides": overrides, "checkpoint": result["checkpoint"], **summary,
              "tokens": summary["steps"] * c.batch_size * c.grad_accum * cfg.data.seq_len,
              "train_seconds": round(time.perf_counter() - started, 1)}
    write_json(done, record)
    return record


def run_study(spec: StudySpec, print_only: bool = False) -> dict:
    """Train and evaluate every cell (or print the training commands of the unfinished ones); returns the summary
    `lmssl study` prints."""
    study_dir = Path(spec.output_dir)
    refuse_foreign(f"{spec.source}: key 'output_dir'", study_dir, foreign_entries(study_dir, STUDY_ENTRIES),
                   "a study directory", "choose another output_dir")
    cells = cells_of(spec)
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
        record = train_cell(spec, cell, study_dir)
        record["evaluations"] = evaluate_cell(spec, cell, record, study_dir, pairs, largest=cell.budget == max(
            cell.run.budgets))
        records.append(record)
    return write_results(spec, study_dir, records, time.perf_counter() - started)
