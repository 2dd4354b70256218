"""`lmssl finetune CKPT TASK`: a GLUE task, a task card, or `glue` (every GLUE task under the data root, a
table, resumable per task and grid cell), around the per-task search of lmssl.downstream.search."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from lmssl.checkpoint.model_dir import ModelDir
from lmssl.config import FinetuneConfig, Grid, finetune_grid
from lmssl.data.paths import root_dir
from lmssl.downstream.finetune import check_output, finite, load_source
from lmssl.downstream.search import finished_result, grid_axes, run_finetune, score_key
from lmssl.downstream.task_metrics import glue_table
from lmssl.downstream.tasks import GLUE_TASKS, glue_card, missing_files, task_card
from lmssl.errors import ConfigError
from lmssl.storage.atomic import write_text
from lmssl.storage.lock import owning


def summary_line(results: dict, out: Path) -> dict:
    """The CLI's last line: the task, mean dev metrics (x 100), their std over seeds, the chosen cell of a grid,
    from scratch and the baselines' task scores, and where it all is."""
    finite_results = finite(results)
    line = {"task": results["task"], **{k: _round(v) for k, v in finite_results["metrics"].items()}}
    if len(results["seeds"]) > 1:
        line.update({f"{k}_std": _round(v) for k, v in finite_results["std"].items()})
    key = score_key(results["card"]["dev"])
    if "chosen" in results:
        line["chosen"] = results["chosen"]
    if "scratch" in results:
        line["scratch_" + key] = _round(finite_results["scratch"]["metrics"][key])
        line["scratch_difference"] = _round(finite_results["scratch_difference"]["mean"])
    for kind in ("majority", "bow"):
        if "baselines" in results:
            line[f"{kind}_{key}"] = _round(finite_results["baselines"][kind][key])
    line.update(seeds=len(results["seeds"]), train_examples=results["train_examples"], mode=results["mode"],
                output_dir=str(out))
    return finite(line)


def run_glue(checkpoint: str, fcfg: FinetuneConfig, grid: Grid, root: Path, out: Path) -> dict:
    """Every GLUE task present under the data root (a task already done with the same checkpoint and settings is
    reused, an unfinished grid resumes at its first unfinished cell), then glue.md and glue.json."""
    present, absent = [], {}
    for name in GLUE_TASKS:
        missing = missing_files(glue_card(name), root)
        if missing:
            absent[name] = f"{', '.join(missing)} not found"
        else:
            present.append(name)
    if not present:
        raise ConfigError(f"no GLUE task under the data root {root} (expected glue/<TASK>/train.tsv and dev.tsv); "
                          f"set LMSSL_DATA or finetune.data_root")
    opened = ModelDir.open(checkpoint)  # outputs are checked before the weights load
    checkpoint_dir, results, source = str(opened.path), {}, None
    for name in present:
        card = glue_card(name)
        done = finished_result(out / name, fcfg, checkpoint_dir, grid_axes(grid.cells(fcfg, card.grid)))
        if done is not None:
            sys.stderr.write(f"{name}: reusing {out / name / 'results.json'} (same checkpoint and settings)\n")
            results[name] = done
            continue
        source = source or load_source(checkpoint, opened)
        results[name] = run_finetune(checkpoint, opened, card, fcfg, grid, out / name, source)
    title = (f"GLUE dev: {checkpoint} (data root {root})" + (" (random init)" if fcfg.from_scratch else "")
             + (" (linear probe)" if fcfg.probe else ""))
    markdown, table = glue_table(results, absent, title)
    write_text(out / "glue.md", markdown)
    tasks = {name: {"metrics": r["metrics"], "std": r["std"]} for name, r in results.items()}
    write_text(out / "glue.json", json.dumps(finite({"checkpoint": checkpoint, **table, "tasks": tasks}), indent=1)
               + "\n")
    sys.stderr.write(markdown)
    return finite({"task": "glue", **{k: v for k, v in table.items() if k not in ("absent", "rows")},
                   "absent": sorted(absent), "table": str(out / "glue.md")})


def _round(value):
    return None if value is None else round(value, 2)


def finetune(checkpoint: str, task: str, overrides: list[str]) -> dict:
    """`lmssl finetune CKPT TASK [finetune.key=value ...]`: TASK is a GLUE task, `glue`, or a task card path."""
    fcfg, grid = finetune_grid(overrides)
    if fcfg.num_threads:
        torch.set_num_threads(fcfg.num_threads)
    root = root_dir(fcfg.data_root)
    if task.lower() == "glue":
        out = Path(fcfg.output_dir or "runs/finetune/glue")
        check_output(out, fcfg)
        with owning(out, "finetune.output_dir"):  # two runs into one directory would replace each other's results
            return run_glue(checkpoint, fcfg, grid, root, out)
    card = task_card(task, root)
    out = Path(fcfg.output_dir or f"runs/finetune/{card.name}")
    check_output(out, fcfg)
    with owning(out, "finetune.output_dir"):
        return summary_line(run_finetune(checkpoint, ModelDir.open(checkpoint), card, fcfg, grid, out), out)
