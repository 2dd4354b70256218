"""A study's results.json and report.md (a table of every cell, its validation loss under the objective's own name,
its scores beside the majority / TF-IDF / from-scratch references, the label-efficiency table, the scaling fit); the
figures are lmssl.study.plots'. report.md is rendered from results.json alone (`render_report`)."""
from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import torch

from lmssl.config.study import StudySpec
from lmssl.storage.atomic import write_text
from lmssl.study.scaling import fit_scaling_law


def machine() -> str:
    return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}").replace("  ", " ")


def headline(record: dict) -> dict[str, float]:
    """The cell's scores as flat columns: likelihood, probe and fine-tuning scores, STS, minimal pairs."""
    ev, row = record["evaluations"], {}
    if "likelihood" in ev:
        lk = ev["likelihood"]
        row.update({"ppl": lk["ppl"], "bits_per_byte": lk["bits_per_byte"]} if "ppl" in lk else
                   {"pppl": lk["pppl"], "pseudo_bits_per_byte": lk["pseudo_bits_per_byte"]})
    for kind in ("probe", "finetune"):
        scores = {key: value["metrics"]["score"] for key, value in ev.items() if key.startswith(f"{kind}_")}
        row.update(scores)
        if len(scores) > 1:  # the GLUE-subset average, as glue.md's (a task's score: the mean of its metrics)
            row[f"{kind}_avg"] = float(np.mean(list(scores.values())))
    if "sts" in ev:
        row.update({f"sts_{k}": v for k, v in ev["sts"].items() if k not in ("seconds", "settings")})
    if "pairs" in ev:
        row["pairs_accuracy"] = ev["pairs"]["accuracy"]
    return row


# the references a probe / fine-tuning score is read against, and where a cell's evaluation holds each
REFERENCES = {"majority": ("baselines", "majority"), "TF-IDF": ("baselines", "bow"), "from scratch": ("scratch",)}


def reference_headline(record: dict, label: str) -> dict[str, float]:
    """The reference's scores in the headline's probe / fine-tuning columns (and their averages), where known."""
    row = {}
    for kind in ("probe", "finetune"):
        scores, tasks = {}, [key for key in record["evaluations"] if key.startswith(f"{kind}_")]
        for key in tasks:
            found = record["evaluations"][key]
            for step in REFERENCES[label]:
                found = found.get(step, {}) if isinstance(found, dict) else {}
            score = found.get("metrics", found).get("score")
            if isinstance(score, (int, float)) and math.isfinite(score):  # a regression's majority has none
                scores[key] = score
        row.update(scores)
        if len(tasks) > 1 and len(scores) == len(tasks):
            row[f"{kind}_avg"] = float(np.mean(list(scores.values())))
    return row


def reference_columns(records: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """reference -> column -> (lowest, highest) over the cells (one value when every cell's subsample agrees)."""
    found: dict[str, dict[str, tuple[float, float]]] = {}
    for label in REFERENCES:
        for r in records:
            for column, value in reference_headline(r, label).items():
                low, high = found.setdefault(label, {}).get(column, (value, value))
                found[label][column] = (min(low, value), max(high, value))
    return found


def loss_kind(record: dict) -> str:
    """What the cell's validation loss sums, from its final validation's terms: CLM, MLM + NSP, GEN + DISC ..."""
    terms = [k[4:-5].upper() for k in record["final"] if k.startswith("val_") and k.endswith("_loss")
             and k != "val_loss"]
    return " + ".join(terms) or "?"


def loss_columns(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(loss_kind(r) for r in records))


COLUMN_ORDER = ("ppl", "bits_per_byte", "pppl", "pseudo_bits_per_byte", "probe_", "finetune_", "sts_", "pairs_")


def score_columns(records: list[dict]) -> list[str]:
    """The headline columns present, likelihood first, then probes, fine-tuning, STS and minimal pairs."""
    found = {k for r in records for k in headline(r)}
    return sorted(found, key=lambda k: (next(i for i, p in enumerate(COLUMN_ORDER) if k.startswith(p)), k))


def scaling_fit(spec: StudySpec, records: list[dict]) -> dict | None:
    if spec.scaling is None:
        return None
    sizes = {z.name for z in spec.scaling.sizes}
    points = [r for r in records if r["run"] in sizes and "val_loss" in r["final"]]
    if len(points) < 5:
        return {"error": f"{len(points)} finished points, fewer than the 5 parameters of L(N, D)"}
    n = [r["evaluations"]["size"]["parameters"] for r in points]
    d = [r["tokens"] for r in points]
    k = float(np.mean([r["flops"] / (nn * dd) for r, nn, dd in zip(points, n, d)]))
    fit = fit_scaling_law(n, d, [r["final"]["val_loss"] for r in points], spec.scaling.budgets, k,
                          spec.scaling.bootstrap, spec.scaling.seed)
    fit["points"] = [{"cell": r["cell"], "budget": r["budget"], "N": nn, "D": dd, "loss": r["final"]["val_loss"],
                      "flops": r["flops"]} for r, nn, dd in zip(points, n, d)]
    return fit


REFERENCE_NOTES = {"majority": "*majority* predicts the training set's most frequent label (mean for regression)",
                   "TF-IDF": "*TF-IDF* is logistic (ridge) regression on TF-IDF word features of the same examples",
                   "from scratch": "*from scratch* fine-tunes the same architecture from random weights "
                                   "(finetune.compare_scratch)"}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e4 or 0 < abs(value) < 1e-2 else f"{value:.2f}"
    return str(value)


def _span(span: tuple[float, float] | None) -> str:
    if span is None:
        return ""
    low, high = span
    return _fmt(low) if _fmt(low) == _fmt(high) else f"{_fmt(low)} to {_fmt(high)}"


def markdown(results: dict) -> str:
    """report.md from results.json's content."""
    records, fit = results["cells"], results["scaling"]
    last = results.get("seconds_last_invocation")
    lines = [f"# Study: {results['study']}", "",
             f"- command: `lmssl study {results['source']}`",
             f"- machine: {results['machine']}",
             f"- wall time: {results['seconds_total'] / 60:.1f} min, the cells' training and evaluation summed over "
             f"every invocation" + (f" (the last one took {last / 60:.1f} min)" if last is not None else ""), ""]
    losses, columns = loss_columns(records), score_columns(records)
    timed = any(r.get("budget_unit") == "minutes" for r in records)  # wall-clock budgets: the minutes each took
    lines += ["| cell | run | FLOPs | steps | tokens |" + (" train min |" if timed else "")
              + "".join(f" final val loss ({k}) |" for k in losses) + "".join(f" {c} |" for c in columns),
              "|---|---|---:|---:|---:|" + "---:|" * (len(losses) + len(columns) + timed)]
    for r in records:
        row, loss = headline(r), r["final"].get("val_loss", float("nan"))
        minutes = f" {r['train_seconds'] / 60:.1f} |" if timed else ""
        lines.append(f"| {r['cell']} | {r['run']} | {r['flops']:.3g} | {r['steps']} | {r['tokens']:,} |{minutes}"
                     + "".join(f" {_fmt(loss) if loss_kind(r) == k else ''} |" for k in losses)
                     + "".join(f" {_fmt(row.get(c, ''))} |" for c in columns))
    references = reference_columns(records)
    for label, spans in references.items():
        lines.append(f"| *{label}* | reference | | | |" + " |" * (len(losses) + timed)
                     + "".join(f" {_span(spans.get(c))} |" for c in columns))
    lines += ["", "Each final val loss column is one objective's own validation loss (the terms it trains, with its "
                  "weights): compare within a column, never across."
              + (" Reference rows: " + "; ".join(REFERENCE_NOTES[k] for k in references) + "." if references
                 else "")]
    le = [r for r in records if "label_efficiency" in r["evaluations"]]
    if le:
        first = le[0]["evaluations"]["label_efficiency"]
        lines += ["", f"## Label efficiency ({first['task']}, dev score, mean ± std over {first['seeds']} seeds)", ""]
        sizes = list(first["pretrained"])
        lines += ["| encoder | " + " | ".join(f"{s if s != '0' else 'all'} labels" for s in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        seen = set()
        for r in le:
            curves = r["evaluations"]["label_efficiency"]
            for kind in ("pretrained", "scratch"):
                name = r["cell"] if kind == "pretrained" else f"scratch ({curves['scratch_key']})"
                if name in seen:
                    continue
                seen.add(name)
                lines.append(f"| {name} | " + " | ".join(
                    f"{v['metrics']['score']:.1f} ± {v['std'].get('score', 0.0):.1f}" for v in curves[kind].values())
                    + " |")
    if fit is not None:
        lines += ["", "## Scaling law", ""]
        if "error" in fit:
            lines.append(f"No fit: {fit['error']}.")
        else:
            iv = fit["intervals"]
            lines += [f"{fit['law']}, fitted to {len(fit['points'])} final validation losses (Huber, delta "
                      f"{fit['huber_delta']}, best of {fit['initialisations']} initialisations; 90% bootstrap "
                      f"intervals from {fit['bootstrap_fits']} refits; largest |log residual| "
                      f"{fit['max_abs_log_residual']:.3g}).",
                      "", "| parameter | value | 90% interval |", "|---|---:|---|"]
            for key in ("E", "A", "B", "alpha", "beta"):
                span = f"{_fmt(iv[key][0])} - {_fmt(iv[key][1])}" if iv[key] else "-"
                lines.append(f"| {key} | {_fmt(fit[key])} | {span} |")
            lines += ["", f"Compute-optimal size with C = {fit['flops_per_param_token']:.2f} N D (the runs' counted "
                          f"FLOPs per parameter and token):", "",
                      "| budget (FLOPs) | N_opt | 90% interval | D_opt (tokens) |", "|---:|---:|---|---:|"]
            lines += [f"| {o['budget']:.3g} | {o['N_opt']:.3g} | "
                      + (f"{o['N_opt_interval'][0]:.3g} - {o['N_opt_interval'][1]:.3g}" if o["N_opt_interval"] else "-")
                      + f" | {o['D_opt']:.3g} |" for o in fit["compute_optimal"]]
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in results["plots"]), ""]
    return "\n".join(lines)


PLOTS = ("val_loss_vs_flops.png", "scores_vs_flops.png", "label_efficiency.png", "scaling_isoflop.png")


def render_report(study_dir: Path) -> str:
    """report.md (and nothing else) from study_dir/results.json, without training or evaluating anything."""
    results = json.loads((study_dir / "results.json").read_text())
    results.setdefault("plots", [name for name in PLOTS if (study_dir / name).is_file()])  # results.json from before
    report = markdown(results)
    write_text(study_dir / "report.md", report)
    return report
