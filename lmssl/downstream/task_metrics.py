"""Downstream task metrics with the GLUE definitions, the GLUE average and the GLUE table.

The formulas are not hand-rolled: Hugging Face `evaluate`'s GLUE metric is a script on the hub
(unreachable offline), and that script itself calls scikit-learn and scipy, so the same functions
are called here directly:
  accuracy  sklearn.metrics.accuracy_score
  f1        sklearn.metrics.f1_score, binary, positive class = the task's second label (MRPC/QQP: 1)
  mcc       sklearn.metrics.matthews_corrcoef (CoLA)
  pearson   scipy.stats.pearsonr, spearman scipy.stats.spearmanr (STS-B)
Every value is x 100, as in GLUE tables. A correlation of constant predictions is undefined (NaN;
written as null in JSON).

Task score and GLUE average, as papers compute them:
  - a task with two metrics scores their mean (MRPC and QQP (acc + F1) / 2, STS-B (Pearson + Spearman)
    / 2: the GLUE leaderboard's rule; Wang et al. 2019, §4);
  - MNLI counts as two columns, matched and mismatched, each averaged like any other task: the arithmetic
    of BERT's Table 1 (Devlin et al. 2019), whose "Average" 79.6 (BERT-base) is the mean of 9 columns with
    MNLI-m and MNLI-mm separate and WNLI left out;
  - `glue_average` averages every column (WNLI included, as the leaderboard); `glue_average_no_wnli`
    leaves WNLI out, as BERT and most papers ("the problematic WNLI set"). Both are over the columns
    present: a data root without QQP/MNLI gives an average over fewer tasks, which the table states.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")
SHORT = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "P", "spearman": "S"}

# GLUE table columns in the GLUE paper's order: (column, task, dev set of the task card)
GLUE_COLUMNS = (("CoLA", "cola", "dev"), ("SST-2", "sst2", "dev"), ("MRPC", "mrpc", "dev"), ("STS-B", "stsb", "dev"),
                ("QQP", "qqp", "dev"), ("MNLI-m", "mnli", "matched"), ("MNLI-mm", "mnli", "mismatched"),
                ("QNLI", "qnli", "dev"), ("RTE", "rte", "dev"), ("WNLI", "wnli", "dev"))


def compute_metric(name: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """One metric x 100. Classification: predicted and gold class indices; regression: scores."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if name == "accuracy":
        value = accuracy_score(labels, predictions)
    elif name == "f1":
        value = f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0)
    elif name == "mcc":
        value = matthews_corrcoef(labels, predictions)
    elif name in REGRESSION_METRICS:
        if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
            return math.nan  # undefined for a constant input (scipy would warn and return NaN)
        value = (pearsonr if name == "pearson" else spearmanr)(predictions, labels)[0]
    else:
        valid = ", ".join(CLASSIFICATION_METRICS + REGRESSION_METRICS)
        raise ValueError(f"unknown metric {name!r}; choose from {valid}")
    return 100.0 * float(value)


def compute_metrics(names: list[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{metric: value x 100, ..., "score": their mean (the task's GLUE score)}."""
    values = {name: compute_metric(name, predictions, labels) for name in names}
    return {**values, "score": task_score(values)}


def task_score(values: dict[str, float]) -> float:
    """The unweighted mean of a task's metrics (GLUE's rule for tasks with two metrics)."""
    return float(np.mean(list(values.values())))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) over seeds; the deviation of one seed is 0."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def glue_average(columns: dict[str, float]) -> dict[str, float | int]:
    """From {GLUE column (see GLUE_COLUMNS): task score}: the averages over the columns present (an undefined
    score, None or NaN, is left out)."""
    present = {k: v for k, v in columns.items() if v is not None and not math.isnan(v)}
    no_wnli = [v for k, v in present.items() if k != "WNLI"]
    return {"glue_average": float(np.mean(list(present.values()))) if present else math.nan,
            "glue_average_no_wnli": float(np.mean(no_wnli)) if no_wnli else math.nan,
            "columns_present": len(present), "of_columns": len(GLUE_COLUMNS)}


def _cell(metrics: dict, stds: dict, names: list[str], prefix: str) -> str:
    def one(name):
        value, std = metrics.get(prefix + name), stds.get(prefix + name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "nan"
        return f"{value:.1f}" + (f"±{std:.1f}" if std else "")
    return "/".join(one(n) for n in names)


def table_rows(results: dict[str, dict]) -> list[tuple[str, dict[str, dict]]]:
    """The rows of the GLUE table, each {task: {"card", "metrics", "std"}}: the result, every cell of a grid
    (the default settings are one of them), from scratch (compare_scratch), then the baselines."""
    first = next(iter(results.values()), {})
    label = ("linear probe" if first.get("mode") == "probe" else "fine-tuned") + (
        ", from scratch" if first.get("from_scratch") else "")
    searched = any("grid" in r for r in results.values())
    rows = {f"{label}{' (grid: cell chosen on dev)' if searched else ''}": results}
    for task, result in results.items():
        for cell in result.get("grid", []):
            cell_label = f"cell lr {cell['lr']:g}, {cell['epochs']} ep, batch {cell['batch_size']}"
            rows.setdefault(cell_label, {})[task] = {**cell, "card": result["card"]}
    for task, result in results.items():
        if "scratch" in result:
            rows.setdefault("from scratch (same grid and seeds)", {})[task] = result["scratch"]
    for kind, name in (("majority", "majority class / train mean"), ("bow", "TF-IDF + logistic / ridge")):
        for task, result in results.items():
            if "baselines" in result:
                rows.setdefault(name, {})[task] = {"card": result["card"], "metrics": result["baselines"][kind],
                                                   "std": {}}
    return list(rows.items())


def glue_table(results: dict[str, dict], absent: dict[str, str], title: str) -> tuple[str, dict]:
    """(Markdown, JSON summary) of the GLUE table from {task: results.json of `lmssl finetune`} and
    {task: why it is absent}; the summary's scores and averages are the first row's, `rows` has every row's."""
    header = [column for column, _, _ in GLUE_COLUMNS]
    lines = [f"# {title}", "", "| | " + " | ".join(header + ["Avg", "Avg w/o WNLI"]) + " |",
             "|---|" + "---:|" * (len(header) + 2)]
    summaries = {}
    for label, row in table_rows(results):
        cells, scores = [], {}
        for column, task, dev in GLUE_COLUMNS:
            result = row.get(task)
            if result is None:
                cells.append("—")
                scores[column] = None
                continue
            prefix = "" if len(result["card"]["dev"]) == 1 else f"{dev}_"
            cells.append(_cell(result["metrics"], result["std"], result["card"]["metrics"], prefix))
            scores[column] = result["metrics"].get(f"{prefix}score")
        avg = glue_average(scores)
        lines.append(f"| {label} | " + " | ".join(cells + [f"{avg['glue_average']:.1f}",
                                                           f"{avg['glue_average_no_wnli']:.1f}"]) + " |")
        summaries[label] = {"scores": scores, **avg}
    lines.append("")
    metric_names = ", ".join(f"{column}: {'/'.join(SHORT[m] for m in results[task]['card']['metrics'])}"
                             for column, task, _ in GLUE_COLUMNS if task in results)
    main = next(iter(summaries.values()))
    lines.append(f"Dev sets, metrics x 100 ({metric_names}); mean±std over seeds of the best evaluation per seed. "
                 f"A task with two metrics scores their mean; MNLI-m and MNLI-mm are two columns (BERT's Table 1). "
                 f"Averages over the {main['columns_present']} of {main['of_columns']} columns present; an undefined "
                 f"score (nan: a constant prediction has no correlation) is left out of them.")
    for task, result in results.items():
        sub = result.get("subsample")
        used = f"{result['train_examples']} of {result['train_examples_total']} training examples"
        chosen = result.get("chosen")
        setting = (f"chosen lr {chosen['lr']:g}, epochs {chosen['epochs']}, batch {chosen['batch_size']}" if chosen
                   else f"epochs {result['finetune']['epochs']}, lr {result['finetune']['lr_used']:g}")
        lines.append(f"- {task}: {used}" + (f" (seeded subsample, data_seed={sub['data_seed']})" if sub else "")
                     + f", {len(result['seeds'])} seed(s), {setting}, mode {result['mode']}")
    for task, why in absent.items():
        lines.append(f"- {task}: absent ({why})")
    summary = {**main, "absent": absent, "rows": summaries}
    return "\n".join(lines) + "\n", summary
