"""A study's figures: validation loss against FLOPs (a panel per run), each headline score against FLOPs (with the
majority / TF-IDF / from-scratch references where the cells hold them), label-efficiency curves, and for a scaling
grid the fitted law's iso-FLOP curves. FLOP axes carry a few round, compact labels so that they never overlap."""
from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np

from lmssl.storage.atomic import write_bytes
from lmssl.study.report import REFERENCES, headline, loss_kind, reference_columns, score_columns
from lmssl.study.scaling import fitted_loss

# round mantissas for log-axis ticks, finest first: the finest series that gives 2 to MAX_TICKS ticks wins
MANTISSAS = ((1, 1.5, 2, 3, 4, 5, 6, 8), (1, 2, 5), (1, 3), (1,))
MAX_TICKS = 4
REFERENCE_STYLE = {"majority": ":", "TF-IDF": "--", "from scratch": "-."}


def log_ticks(low: float, high: float, max_ticks: int = MAX_TICKS) -> list[float]:
    """Round values in [low, high] for a log axis, 2 to max_ticks of them (the ends when no round value fits)."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for mantissas in MANTISSAS:
        ticks = [m * 10.0 ** k for k in range(first, last + 1) for m in mantissas if low <= m * 10.0 ** k <= high]
        if 2 <= len(ticks) <= max_ticks:
            return ticks
    if len(ticks) > max_ticks:  # many decades: every n-th power of ten
        return ticks[::-(-len(ticks) // max_ticks)]
    return sorted({low, high})


def compact(value: float) -> str:
    """1.5e13, 2e9, 300: short enough for narrow panels."""
    return re.sub(r"e\+?0*(\d)", r"e\1", f"{value:.2g}")


def budget_text(record: dict) -> str:
    """A cell's budget in a legend: 1.5e13 (FLOPs) or 10 min (a wall-clock study)."""
    minutes = record.get("budget_unit") == "minutes"
    return f"{record['budget']:g} min" if minutes else compact(record["budget"])


def flops_axis(ax, values: list[float]) -> None:
    """Log x axis over the values with at most MAX_TICKS round, compactly written ticks, no minor labels."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    values = [v for v in values if v and v > 0]
    if values:
        ticks = log_ticks(min(values), max(values))
        ax.set_xticks(ticks, [compact(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training FLOPs")


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, buffer.getvalue())


def val_loss_figure(records: list[dict], runs: list[str], colour, plt):
    """One panel per run: each objective's validation loss is its own quantity (ELECTRA's is generator + λ × RTD)."""
    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3.4), squeeze=False)
    for ax, run in zip(axes.flat, runs):
        mine = [r for r in records if r["run"] == run]
        largest = max(r["budget"] for r in mine)
        xs = []
        for r in mine:
            curve = [p for p in r["curve"] if p["flops"]]
            if curve:
                xs += [p["flops"] for p in curve]
                ax.plot([p["flops"] for p in curve], [p["val_loss"] for p in curve], "o-", color=colour[run],
                        alpha=0.4 + 0.6 * (r["budget"] == largest), label=budget_text(r))
        flops_axis(ax, xs)
        ax.set_title(f"{run} ({loss_kind(mine[0])})")
        ax.legend(fontsize=7, title="budget", title_fontsize=7)
    axes.flat[0].set_ylabel("validation loss (the objective's own)")
    fig.tight_layout()
    return fig


def scores_figure(records: list[dict], runs: list[str], colour, plt):
    """One panel per headline score against the training FLOPs, a line per run, and a horizontal line per reference
    (majority, TF-IDF, from scratch) that the cells hold for that score."""
    scores = score_columns(records)
    references = reference_columns(records)
    cols = min(3, len(scores))
    rows = -(-len(scores) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    points = [(r["run"], r["flops"], headline(r)) for r in records]
    for ax, key in zip(axes.flat, scores):
        for run in runs:
            pts = sorted((flops, row[key]) for name, flops, row in points if name == run and key in row)
            if pts:
                ax.plot(*zip(*pts), "o-", color=colour[run], label=run)
        for label in REFERENCES:
            span = references.get(label, {}).get(key)
            if span:
                ax.axhline(float(np.mean(span)), color="grey", ls=REFERENCE_STYLE[label], lw=1.2, label=label)
        flops_axis(ax, [flops for _, flops, _ in points])
        ax.set_title(key)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(scores):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def label_efficiency_figure(records: list[dict], colour, plt):
    le = [r for r in records if "label_efficiency" in r["evaluations"]]
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
    ticks = sorted({v["train_examples"] for r in le for v in r["evaluations"]["label_efficiency"]["scratch"].values()})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    return fig


def isoflop_figure(fit: dict, plt):
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
    return fig


def figures(records: list[dict], fit: dict | None) -> dict[str, object]:
    """The study's figures by file name (matplotlib Figures; the caller saves and closes them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(dict.fromkeys(r["run"] for r in records))
    colour = {run: plt.cm.tab10(i % 10) for i, run in enumerate(runs)}
    found = {"val_loss_vs_flops.png": val_loss_figure(records, runs, colour, plt)}
    if score_columns(records):
        found["scores_vs_flops.png"] = scores_figure(records, runs, colour, plt)
    if any("label_efficiency" in r["evaluations"] for r in records):
        found["label_efficiency.png"] = label_efficiency_figure(records, colour, plt)
    if fit is not None and "error" not in fit:
        found["scaling_isoflop.png"] = isoflop_figure(fit, plt)
    return found


def plots(study_dir: Path, records: list[dict], fit: dict | None) -> list[str]:
    """Write the figures under study_dir; their names."""
    made = figures(records, fit)
    import matplotlib.pyplot as plt

    for name, fig in made.items():
        _save(fig, study_dir / name)
        plt.close(fig)
    return list(made)
