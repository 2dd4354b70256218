"""A study's results.json, report.md and plots (validation loss against FLOPs, each downstream score against FLOPs,
label-efficiency curves, and for a scaling grid the fitted law's iso-FLOP curves)."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from lmssl.config.study import StudySpec
from lmssl.storage.atomic import write_bytes, write_text
from lmssl.study.scaling import fit_scaling_law, fitted_loss


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
        row.update({f"sts_{k}": v for k, v in ev["sts"].items() if k != "seconds"})
    if "pairs" in ev:
        row["pairs_accuracy"] = ev["pairs"]["accuracy"]
    return row


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


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e4 or 0 < abs(value) < 1e-2 else f"{value:.2f}"
    return str(value)


def markdown(spec: StudySpec, records: list[dict], fit: dict | None, wall: float, total: float) -> str:
    lines = [f"# Study: {spec.name}", "",
             f"- command: `lmssl study {spec.source}`",
             f"- machine: {machine()}",
             f"- wall time: {total / 60:.1f} min, the cells' training and evaluation summed over every invocation "
             f"(the last one took {wall / 60:.1f} min)", ""]
    columns = score_columns(records)
    lines += ["| cell | run | FLOPs | steps | tokens | final val loss |" + "".join(f" {c} |" for c in columns),
              "|---|---|---:|---:|---:|---:|" + "---:|" * len(columns)]
    for r in records:
        row = headline(r)
        lines.append(f"| {r['cell']} | {r['run']} | {r['flops']:.3g} | {r['steps']} | {r['tokens']:,} | "
                     f"{_fmt(r['final'].get('val_loss', float('nan')))} |" + "".join(f" {_fmt(row.get(c, ''))} |"
                                                                                  for c in columns))
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
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in plot_names(records, fit)), ""]
    return "\n".join(lines)


def plot_names(records: list[dict], fit: dict | None) -> list[str]:
    names = ["val_loss_vs_flops.png"] + (["scores_vs_flops.png"] if score_columns(records) else [])
    if any("label_efficiency" in r["evaluations"] for r in records):
        names.append("label_efficiency.png")
    if fit is not None and "error" not in fit:
        names.append("scaling_isoflop.png")
    return names


def _save(fig, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, buffer.getvalue())


def run_budget(records: list[dict], run: str) -> list[float]:
    return [r["budget"] for r in records if r["run"] == run]


def _score_plots(study_dir: Path, records: list[dict], scores: list[str], runs: list[str], colour, plt) -> None:
    """One panel per headline score: its value against the training FLOPs, a line per run."""
    cols = min(3, len(scores))
    rows = -(-len(scores) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    rows = [(r["run"], r["flops"], headline(r)) for r in records]
    for ax, key in zip(axes.flat, scores):
        for run in runs:
            pts = sorted((flops, row[key]) for name, flops, row in rows if name == run and key in row)
            if pts:
                ax.plot(*zip(*pts), "o-", color=colour[run], label=run)
        ax.set(xscale="log", title=key, xlabel="training FLOPs")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(scores):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, study_dir / "scores_vs_flops.png")
    plt.close(fig)


def plots(study_dir: Path, records: list[dict], fit: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(dict.fromkeys(r["run"] for r in records))
    colour = {run: plt.cm.tab10(i % 10) for i, run in enumerate(runs)}
    # one panel per run: each objective's validation loss is its own quantity (ELECTRA's is generator + 50 x RTD)
    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3.4), squeeze=False)
    for ax, run in zip(axes.flat, runs):
        for r in (r for r in records if r["run"] == run):
            curve = [p for p in r["curve"] if p["flops"]]
            if curve:
                ax.plot([p["flops"] for p in curve], [p["val_loss"] for p in curve], "o-", color=colour[run],
                        alpha=0.4 + 0.6 * (r["budget"] == max(run_budget(records, run))), label=f"{r['budget']:.2g}")
        ax.set(xscale="log", xlabel="training FLOPs", title=run)
        ax.legend(fontsize=7, title="budget", title_fontsize=7)
    axes.flat[0].set_ylabel("validation loss (the objective's own)")
    fig.tight_layout()
    _save(fig, study_dir / "val_loss_vs_flops.png")
    plt.close(fig)
    scores = score_columns(records)
    if scores:
        _score_plots(study_dir, records, scores, runs, colour, plt)
    le = [r for r in records if "label_efficiency" in r["evaluations"]]
    if le:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        drawn = set()
        for r in le:
            curves = r["evaluations"]["label_efficiency"]
            for kind, style in (("pretrained", "o-"), ("scratch", "x--")):
                name = r["cell"] if kind == "pretrained" else f"scratch {curves['scratch_key'][:6]}"
                if name in drawn:
                    continue
                drawn.add(name)
                xs = [v["train_examples"] for v in curves[kind].values()]
                ax.errorbar(xs, [v["metrics"]["score"] for v in curves[kind].values()],
                            yerr=[v["std"].get("score", 0.0) for v in curves[kind].values()], fmt=style,
                            color=colour[r["run"]] if kind == "pretrained" else "grey", label=name, capsize=3)
        ax.set(xscale="log", xlabel="labelled training examples", ylabel=f"{curves['task']} dev score",
               title="Label efficiency: pretrained vs from scratch")
        ticks = sorted({v["train_examples"] for r in le
                        for v in r["evaluations"]["label_efficiency"]["scratch"].values()})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=7)
        _save(fig, study_dir / "label_efficiency.png")
        plt.close(fig)
    if fit is not None and "error" not in fit:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        k, optimal = fit["flops_per_param_token"], fit["compute_optimal"]
        n_all = np.array([p["N"] for p in fit["points"]])
        grid = np.geomspace(n_all.min() / 2, n_all.max() * 2, 100)
        for i, opt in enumerate(optimal):
            budget, c = opt["budget"], plt.cm.viridis(i / max(1, len(optimal) - 1))
            ax.plot(grid, fitted_loss(fit, grid, budget / (k * grid)), "-", color=c, label=f"C = {budget:.2g} (fit)")
            runs = [p for p in fit["points"] if p["budget"] == budget]
            ax.plot([p["N"] for p in runs], [p["loss"] for p in runs], "o", color=c)
            if np.isfinite(opt["N_opt"]):
                ax.axvline(opt["N_opt"], color=c, ls=":", lw=1)
        ax.set(xscale="log", xlabel="parameters N", ylabel="final validation loss",
               title="Iso-FLOP curves of the fitted L(N, D) (dotted: compute-optimal N)")
        ax.legend(fontsize=8)
        _save(fig, study_dir / "scaling_isoflop.png")
        plt.close(fig)


def write_results(spec: StudySpec, study_dir: Path, records: list[dict], wall: float) -> dict:
    """results.json, report.md and the plots; returns the summary line `lmssl study` prints."""
    fit = scaling_fit(spec, records)
    total = sum(r["train_seconds"] + sum(e.get("seconds", 0.0) for e in r["evaluations"].values()) for r in records)
    results = {"study": spec.name, "source": spec.source, "machine": machine(), "seconds_total": round(total, 1),
               "cells": records, "scaling": fit}
    write_text(study_dir / "results.json", json.dumps(results, indent=1, default=float) + "\n")
    report = markdown(spec, records, fit, wall, total)
    write_text(study_dir / "report.md", report)
    plots(study_dir, records, fit)
    print(report, file=sys.stderr)
    return {"study": spec.name, "cells": len(records), "results": str(study_dir / "results.json"),
            "report": str(study_dir / "report.md"), "minutes_total": round(total / 60, 1),
            **({"alpha": fit["alpha"], "beta": fit["beta"]} if fit and "error" not in fit else {})}
