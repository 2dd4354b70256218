"""The outer loop of `lmssl finetune` on one task: a grid of settings searched on dev, from the pretrained
checkpoint and (finetune.compare_scratch) from random weights, and the baselines beside them.

Layout of the task's output directory:
  one cell                   results.json, best/                       (as lmssl.downstream.finetune writes)
  a grid                     grid/<cell>/{results.json,best/} per cell, grid.md, results.json (the chosen cell)
  compare_scratch            pretrained/ and scratch/, each one of the above; results.json with both
A cell is one (lr, epochs, batch_size) run over every seed; the chosen cell has the best mean dev score over
seeds (the task score of the card's first dev set). A finished cell is reused when the same checkpoint and
settings run again, so an interrupted search resumes at the first unfinished cell. Choosing on dev and then
reporting dev is optimistic on small dev sets (as choosing the best epoch is); grid.md lists every cell.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import asdict
from pathlib import Path

from lmssl.checkpoint.model_dir import ModelDir
from lmssl.config import FinetuneConfig, Grid
from lmssl.config.finetune import GRID_KEYS
from lmssl.data.paths import root_dir
from lmssl.downstream.finetune import (
    EncodedTask,
    EncoderSource,
    check_output,
    encode_task,
    finite,
    load_source,
    run_task,
    selectable,
)
from lmssl.downstream.task_baselines import task_baselines
from lmssl.downstream.task_metrics import mean_std
from lmssl.downstream.tasks import TaskCard, infer_labels
from lmssl.storage.atomic import write_text

RUN_ONLY_KEYS = ("output_dir", "overwrite", "num_threads", "device", "eval_batch_size")  # change speed, not results


def finished_result(out: Path, fcfg: FinetuneConfig, checkpoint_dir: str, axes: dict | None = None) -> dict | None:
    """The results.json in `out` when it came from the same checkpoint, settings and grid axes (an interrupted
    run picks up where it stopped); None when `out` holds none (or overwrite is set); else refuse as
    `check_output` does."""
    path = out / "results.json"
    if path.exists() and not fcfg.overwrite:
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        same = {k: v for k, v in asdict(fcfg).items() if k not in RUN_ONLY_KEYS}
        # a key an older lmssl did not write had its default's behaviour then
        defaults, written = asdict(FinetuneConfig()), old.get("finetune", {})
        stored = {k: written.get(k, defaults[k]) for k in same}
        if old.get("checkpoint_dir") == checkpoint_dir and stored == same and old["finetune"].get("grid") == axes:
            return old
    check_output(out, fcfg)
    return None


def cell_name(cfg: FinetuneConfig) -> str:
    return f"lr{cfg.lr:g}-ep{cfg.epochs}-bs{cfg.batch_size}"


def score_key(dev: dict) -> str:
    """The metric a selection maximises: the task score of the first of a card's dev sets."""
    return "score" if len(dev) == 1 else f"{next(iter(dev))}_score"


def grid_axes(cells: list[FinetuneConfig]) -> dict[str, list] | None:
    """{key: values} of the keys that vary over the cells; None for a single cell."""
    if len(cells) == 1:
        return None
    return {k: list(dict.fromkeys(getattr(c, k) for c in cells)) for k in GRID_KEYS}


def run_cells(source: EncoderSource, card: TaskCard, cells: list[FinetuneConfig], out: Path, checkpoint_dir: str,
              data: EncodedTask) -> dict:
    """Every cell of one variant (pretrained or from scratch) into out/grid/<cell>, then the chosen cell's results
    with the grid's table; the cells already finished with these settings are reused."""
    ranked = []
    for cell in cells:
        cell_out = out / "grid" / cell_name(cell)
        result = finished_result(cell_out, cell, checkpoint_dir)
        if result is not None:
            sys.stderr.write(f"{card.name}: reusing cell {cell_out} (same checkpoint and settings)\n")
        else:
            result = run_task(source, card, dataclasses.replace(cell, output_dir=str(cell_out)), cell_out, data)
        ranked.append((cell, result))
    key = score_key(card.dev)
    chosen_cell, chosen = max(ranked, key=lambda pair: selectable(pair[1]["metrics"][key]))
    table = [{"cell": cell_name(c), **{k: getattr(c, k) for k in GRID_KEYS}, "metrics": r["metrics"], "std": r["std"],
              "seeds": len(r["seeds"]), "elapsed_s": r["elapsed_s"], "chosen": c is chosen_cell}
             for c, r in ranked]
    write_text(out / "grid.md", grid_markdown(card, table, key))
    return {**chosen, "grid": table, "chosen": {k: getattr(chosen_cell, k) for k in GRID_KEYS},
            "selection": f"the cell with the best mean {key} over seeds on dev, then its best evaluation per seed",
            "elapsed_s": round(sum(r["elapsed_s"] for _, r in ranked), 1)}


def grid_markdown(card: TaskCard, table: list[dict], key: str) -> str:
    lines = [f"# {card.name}: grid searched on dev ({key}: mean ± std over seeds)", "",
             "| cell | lr | epochs | batch | " + key + " | chosen |", "|---|---:|---:|---:|---:|:---:|"]
    for row in table:
        mean, std = row["metrics"][key], row["std"][key]
        value = "nan" if mean is None or mean != mean else f"{mean:.2f} ± {std:.2f}"
        lines.append(f"| {row['cell']} | {row['lr']:g} | {row['epochs']} | {row['batch_size']} | {value} | "
                     f"{'yes' if row['chosen'] else ''} |")
    return "\n".join(lines) + "\n"


def scratch_difference(pretrained: dict, scratch: dict, key: str) -> dict:
    """Pretrained minus scratch task score, paired by seed (both ran the same seeds), and its spread."""
    pairs = zip(pretrained["seeds"], scratch["seeds"])
    diffs = [p["metrics"][key] - s["metrics"][key] for p, s in pairs]
    mean, std = mean_std(diffs)
    return {"metric": key, "mean": mean, "std": std, "per_seed": diffs,
            "what": "pretrained minus from-scratch dev score of each one's chosen cell, paired by seed"}


def run_finetune(checkpoint: str, opened: ModelDir, card: TaskCard, fcfg: FinetuneConfig, grid: Grid, out: Path,
                 source: EncoderSource | None = None) -> dict:
    """One task: the grid (or one setting) from the checkpoint (`opened`, the model directory it names), from
    scratch too with compare_scratch, the baselines; writes out/results.json and returns it. `source`: its
    encoder already loaded (else loaded here)."""
    card = infer_labels(card, root_dir(fcfg.data_root))
    cells = grid.cells(fcfg, card.grid)
    checkpoint_dir = str(opened.path)
    source = source or load_source(checkpoint, opened)
    data = encode_task(source, card, fcfg)  # shared by every cell and variant
    extra = {}
    if fcfg.baselines:
        targets = {"train": data.train.targets.numpy(), **{n: d.targets.numpy() for n, d in data.dev.items()}}
        extra["baselines"] = task_baselines(card, data.texts, targets)
    variants = {"pretrained": False, "scratch": True} if fcfg.compare_scratch else {"": fcfg.from_scratch}
    results = {}
    for name, scratch in variants.items():
        variant_cells = [dataclasses.replace(c, from_scratch=scratch) for c in cells]
        variant_out = out / name if name else out
        if len(cells) == 1:
            single = dataclasses.replace(variant_cells[0], output_dir=str(variant_out))
            done = finished_result(variant_out, single, checkpoint_dir) if name else None
            results[name] = done or run_task(source, card, single, variant_out, data, None if name else extra)
        else:
            results[name] = run_cells(source, card, variant_cells, variant_out, checkpoint_dir, data)
    if "" in results and len(cells) == 1:
        return results[""]  # one setting: run_task wrote results.json with the baselines
    combined = dict(results.get("") or results["pretrained"])
    if fcfg.compare_scratch:
        difference = scratch_difference(results["pretrained"], results["scratch"], score_key(card.dev))
        combined.update(scratch=results["scratch"], scratch_difference=difference)
    combined.update(extra, finetune={**asdict(fcfg), "lr_used": combined["finetune"]["lr_used"],
                                     "grid": grid_axes(cells)})
    write_text(out / "results.json", json.dumps(finite(combined), indent=1) + "\n")
    return combined
