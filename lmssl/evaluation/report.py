"""`lmssl eval compare`: PPL of causal checkpoints and pseudo-PPL of masked ones on the same text, in a
Markdown table and a PNG, with each run's training curves from its metrics.jsonl.

PPL and pseudo-PPL are different quantities, so the report keeps them apart: the table says which
quantity each row is and is never sorted by it, and the figure gives each quantity its own column.
"""
from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

from lmssl.checkpoint.model_dir import ModelDir
from lmssl.data.corpus import Corpus
from lmssl.errors import ConfigError
from lmssl.evaluation.likelihood import evaluate_text, likelihood_kind
from lmssl.evaluation.text import read_documents, resolve_text_file
from lmssl.storage.atomic import write_bytes, write_text
from lmssl.storage.metrics_log import METRICS_FILE, read_metrics

CAVEAT = (
    "**PPL and pseudo-PPL are different quantities; this report does not rank one against the other.** "
    "Perplexity (causal models) is exp of the mean negative log-likelihood of each token given the tokens before "
    "it: a proper probability of the text. Pseudo-perplexity (masked models, Salazar et al. 2020) is exp of the "
    "mean negative log-probability of each token given all the other tokens, on both sides: it is not a "
    "probability of the text. It may come out lower than a causal model's PPL (well-trained masked models see "
    "context on both sides) or higher (briefly trained ones learn from only the masked 15% of tokens per step); "
    "neither says which model is better. Compare PPL with "
    "PPL and pseudo-PPL with pseudo-PPL, on the same text. Per-word values (total negative log-likelihood / "
    "whitespace words) make models with different tokenizers comparable within one quantity.")
LABELS = {"perplexity": "PPL", "pseudo-perplexity": "pseudo-PPL"}
VALIDATION_CURVES = {"perplexity": "val_sliding_ppl", "pseudo-perplexity": "val_pppl"}


def run_directory(checkpoint: Path) -> Path:
    """The training run a checkpoint belongs to (runs/NAME/checkpoints/step-N -> runs/NAME)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint


def run_metrics(run_dir: Path) -> list[dict]:
    """The logged lines of a run's metrics.jsonl; a line a killed run cut short is left out with a note, a line
    that is not a logged step is refused (file and line)."""
    rows, cut = read_metrics(run_dir, strict=True)
    if cut:
        print(f"note: {Path(run_dir) / METRICS_FILE}: left out {cut} unreadable line(s), cut short by a crash; the "
              f"curves use the {len(rows)} complete one(s)", file=sys.stderr)
    return rows


def read_curves(metrics: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of a run's metrics.jsonl lines: training loss, validation loss and likelihood metrics."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in metrics:
        for key in ("loss", "val_loss", *VALIDATION_CURVES.values()):
            if isinstance(row.get(key), (int, float)):
                curves.setdefault(key, []).append((row["step"], row[key]))
    return curves


def loss_terms(metrics: list[dict]) -> list[str]:
    """What a run's training loss combines, from its first training row: ["MLM", "NSP"], ["GEN", "DISC"], ..."""
    first = next((row for row in metrics if "loss" in row), {})
    return [k.removesuffix("_loss").upper() for k in first if k.endswith("_loss")]


def loss_label(row: dict) -> str:
    """A training-loss curve's legend: the run, and what its loss sums where that is more than one term."""
    terms = row.get("loss_terms", [])
    return f"{row['name']}: {' + '.join(terms)}" if len(terms) > 1 else row["name"]


def readable_axes(ax, log_y: bool) -> None:
    """Integer step ticks; a log axis spanning less than a decade gets a few evenly placed, plainly written ticks
    (its powers of ten may all lie outside it, and matplotlib would then label nothing)."""
    from matplotlib.ticker import MaxNLocator, NullFormatter, NullLocator, ScalarFormatter

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if log_y:
        low, high = ax.get_ylim()
        if low > 0 and high / low < 10:
            plain = ScalarFormatter(useOffset=False)
            plain.set_scientific(False)
            ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(low, high)  # the locator must not widen the view


def compare(checkpoints: list[str], data: str, out: Path, *, max_words: int = 0, text_field: str = "text",
            batch_size: int = 16, batch_tokens: int = 8192, device: str = "auto", progress: bool = False) -> dict:
    """Score every checkpoint on the same documents; write results.json, report.md and report.png to `out`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file; give a directory for report.md, report.png and results.json")
    rows, file, documents = [], None, None
    sources = [ModelDir.open(value) for value in checkpoints]
    logs = [run_metrics(run_directory(source.path)) for source in sources]  # a bad log is refused before scoring
    for source, metrics in zip(sources, logs):
        path, cfg, tokenizer, objective = source.path, source.config, source.tokenizer, source.objective(device)
        if likelihood_kind(objective) is None:
            raise ConfigError(f"{path}: objective '{cfg.objective.name}' has no language model "
                              f"(Objective.language_model() is None); compare takes causal (PPL) and masked "
                              f"(pseudo-PPL) checkpoints")
        if documents is None:  # read once: the same text for every model, whatever its tokenizer
            file = resolve_text_file(data, cfg)
            documents = read_documents(Corpus(str(file), text_field=text_field), max_words)
        result = evaluate_text(objective, tokenizer, cfg, documents, batch_size=batch_size, batch_tokens=batch_tokens,
                               progress=progress)
        run = run_directory(path)
        step = int(path.name.split("-")[-1]) if path.name.startswith("step-") else None
        name = run.name + (f"@{step}" if step is not None else "")
        if any(r["name"] == name for r in rows):
            name += f" ({len(rows) + 1})"
        rows.append({"name": name, "checkpoint": str(path), "objective": cfg.objective.name,
                     "tokenizer": Path(cfg.data.tokenizer).name, "step": step,
                     "parameters": sum(p.numel() for p in objective.parameters()), **result,
                     "curves": read_curves(metrics), "loss_terms": loss_terms(metrics)})
    text = {"file": str(file), "max_words": max_words, "words": rows[0]["words"], "bytes": rows[0]["bytes"],
            "documents": rows[0]["documents"]}
    report = {"text": text, "models": rows, "caveat": CAVEAT}
    write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
    plot(rows, out / "report.png")
    write_text(out / "report.md", markdown(report, "report.png"))
    return {"report": str(out / "report.md"), "figure": str(out / "report.png"), "results": str(out / "results.json"),
            "models": [{k: r[k] for k in ("name", "quantity", "tokens", "words") if k in r}
                       | {"per_token": per_token(r), "per_word": per_word(r)} for r in rows]}


def per_token(row: dict) -> float:
    return row["ppl"] if row["quantity"] == "perplexity" else row["pppl"]


def per_word(row: dict) -> float:
    return row["word_ppl"] if row["quantity"] == "perplexity" else row["word_pppl"]


def parameter_count(n: int) -> str:
    """12.3M, 1.85M, 274K: three significant figures, whatever the size (a tiny model is not '0.0M')."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            value = n / scale
            return f"{value:.{max(0, 2 - int(math.log10(value)))}f}{unit}"
    return str(n)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | objective | quantity | per token | per word | bits/byte | tokens scored | words | "
             "window / stride | parameters |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:  # in the order given: no ranking
        bpb = _fmt(r.get("bits_per_byte"), 3) if r["quantity"] == "perplexity" else "—"
        window = f"{r['max_length']} / {r['stride']}"
        lines.append(f"| {r['name']} | {r['objective']} | {LABELS[r['quantity']]} | {_fmt(per_token(r))} | "
                     f"{_fmt(per_word(r))} | {bpb} | {r['tokens']:,} | {r['words']:,} | {window} | "
                     f"{parameter_count(r['parameters'])} |")
    return "\n".join(lines)


def markdown(report: dict, figure: str) -> str:
    text, rows = report["text"], report["models"]
    scope = f"the first {text['max_words']:,} words" if text["max_words"] else "all"
    methods = sorted({(LABELS[r["quantity"]], r["method"]) for r in rows})
    return "\n".join([
        "# PPL and pseudo-PPL report", "",
        f"Text: {scope} of `{text['file']}`: {text['documents']} document(s), {text['words']:,} words, "
        f"{text['bytes']:,} UTF-8 bytes, scored identically by every model.", "",
        report["caveat"], "",
        markdown_table(rows), "",
        "Per token: exp(mean negative (pseudo-)log-likelihood per token of the model's own tokenizer). Per word: "
        "the same total over whitespace words. Bits/byte (PPL only): total negative log-likelihood / ln 2 / bytes.", "",
        *[f"- {label}: {method}." for label, method in methods], "",
        f"![training curves and scores]({figure})", "",
        "Training curves come from each run's `metrics.jsonl` (training loss per logged step; validation "
        "PPL / pseudo-PPL where training logged them, on the first `eval.likelihood_max_words` words of data.valid).",
        ""])


def plot(rows: list[dict], path: Path) -> None:
    """One column per quantity (never a shared axis): scores per token and per word, training loss, validation curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in LABELS if any(r["quantity"] == k for r in rows)]
    fig, axes = plt.subplots(3, len(kinds), figsize=(6.5 * len(kinds), 12), squeeze=False)
    for col, kind in enumerate(kinds):
        group = [r for r in rows if r["quantity"] == kind]
        label = LABELS[kind]
        ax = axes[0][col]
        x = range(len(group))
        # an infinite score (a finite but terrible model's exp overflowed) is drawn to the top, labelled inf
        top = 2 * max((v for r in group for v in (per_token(r), per_word(r)) if math.isfinite(v)), default=5.0)
        for offset, (name, fn) in zip((-0.2, 0.2), (("per token", per_token), ("per word", per_word))):
            values = [fn(r) for r in group]
            bars = ax.bar([i + offset for i in x], [min(v, top) for v in values], width=0.4, label=f"{label} {name}")
            ax.bar_label(bars, labels=[_fmt(v, 1) for v in values], fontsize=8)
        ax.set_xticks(list(x), [r["name"] for r in group])
        ax.set_xlim(-0.75, len(group) - 0.25)
        ax.set_yscale("log")
        # log bars drawn from 1 (a perfect model), so heights compare honestly; headroom for the labels
        ax.set_ylim(1, 4 * max(min(per_word(r), top) for r in group))
        ax.set_ylabel(label)
        ax.set_title(f"{'Causal' if kind == 'perplexity' else 'Masked'} models: {label}")
        ax.legend(fontsize=8)
        for row, key, ylabel in ((1, "loss", "loss"), (2, VALIDATION_CURVES[kind], f"validation {label}")):
            ax = axes[row][col]
            for r in group:
                points = r["curves"].get(key, [])
                if points:
                    name = loss_label(r) if row == 1 else r["name"]
                    line, = ax.plot(*zip(*points), marker="o" if len(points) < 20 else None, label=name)
                    if row == 1 and r["curves"].get("val_loss"):
                        ax.plot(*zip(*r["curves"]["val_loss"]), "s", color=line.get_color(),
                                label=f"{r['name']} validation")
            if row == 2 and not any(r["curves"].get(key) for r in group):
                ax.text(0.5, 0.5, f"no {key} in metrics.jsonl", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            if any(r["curves"].get(key) for r in group):
                ax.legend(fontsize=8)
                if row == 2:
                    ax.set_yscale("log")
                readable_axes(ax, log_y=row == 2)
            title = "training loss (line), validation loss (squares)" if row == 1 else ylabel
            ax.set_title(f"{title} ({'causal' if kind == 'perplexity' else 'masked'})", fontsize=10)
    fig.suptitle("PPL (causal) and pseudo-PPL (masked) are different quantities: compare within a column, "
                 "never across", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, png.getvalue())
