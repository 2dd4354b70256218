"""The README.md (a Hugging Face model card) every `lmssl export` writes into the export: what the model is (its
config), what it was trained on, the metrics the run measured (the run's metrics.jsonl up to the exported step;
a fine-tuned model's results.json with its majority / bag-of-words baselines), and how to load it with
transformers. Only what lmssl knows is written: a section without a source says so instead of guessing."""
from __future__ import annotations

import json
from pathlib import Path

from lmssl.checkpoint.format import CHECKPOINT_NAME
from lmssl.checkpoint.model_dir import ModelDir
from lmssl.storage.metrics_log import read_metrics

# transformers' Auto class for each exported architecture's task
AUTO_CLASS = {"ForMaskedLM": "AutoModelForMaskedLM", "LMHeadModel": "AutoModelForCausalLM",
              "ForCausalLM": "AutoModelForCausalLM", "ForPreTraining": "AutoModelForPreTraining",
              "ForSequenceClassification": "AutoModelForSequenceClassification"}
MODEL_KEYS = ("preset", "hidden_size", "num_layers", "num_heads", "ffn_size", "max_positions", "vocab_size",
              "position", "norm", "mlp", "activation", "dropout")
DATA_KEYS = ("train", "valid", "tokenizer", "seq_len", "document_mask", "doc_split")
TRAIN_KEYS = ("max_steps", "batch_size", "grad_accum", "lr", "schedule", "warmup_steps", "optimizer", "precision",
              "seed")


def auto_class(architecture: str) -> str:
    return next((auto for suffix, auto in AUTO_CLASS.items() if architecture.endswith(suffix)), "AutoModel")


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match else None


def run_of(checkpoint: Path) -> tuple[Path, int] | None:
    """(the run directory, the step) of a checkpoint inside a run: checkpoints/step-N, or best/ (its best.json)."""
    step = checkpoint_step(checkpoint)
    if step is not None and checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent, step
    best = checkpoint / "best.json"
    if checkpoint.name == "best" and best.is_file():
        return checkpoint.parent, int(json.loads(best.read_text())["step"])
    return None


def run_metrics(checkpoint: Path) -> tuple[dict, dict]:
    """(the last training row, the last validation row) of the run's metrics.jsonl at or before the checkpoint's
    step; empty when the checkpoint is not inside a run directory."""
    found = run_of(checkpoint)
    if found is None:
        return {}, {}
    train, valid = {}, {}
    for row in read_metrics(found[0])[0]:  # a line a crash cut short is left out, as resume does
        if row["step"] <= found[1]:
            if "val_loss" in row:
                valid = row
            elif "loss" in row:
                train = row
    return train, valid


def number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "(none)" if value == "" else str(value)


def table(rows: list[tuple[str, object]], head: tuple[str, str] = ("key", "value")) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *(f"| `{k}` | {number(v)} |" for k, v in rows)]


def pretraining_sections(source: ModelDir) -> list[str]:
    cfg = source.config
    out = ["## Training data", ""]
    if source.kind == "hf":
        out += [f"Imported from the Hugging Face directory `{source.path}`; lmssl does not know its training data.", ""]
        return out + ["## Metrics", "", "None measured by lmssl (an imported model).", ""]
    out += table([(f"data.{k}", getattr(cfg.data, k)) for k in DATA_KEYS]
                 + [(f"train.{k}", getattr(cfg.train, k)) for k in TRAIN_KEYS]) + [""]
    train, valid = run_metrics(source.path)
    out += ["## Metrics", ""]
    if not valid and not train:
        return out + [f"No metrics.jsonl beside `{source.path}` (not inside a run directory).", ""]
    if valid:
        out += [f"Validation on `data.valid` at step {valid['step']} (the run's metrics.jsonl):", ""]
        out += table([(k, v) for k, v in valid.items() if k.startswith("val_") or k == "flops"], ("metric", "value"))
    if train:
        out += ["", f"Last logged training step {train['step']}: loss {number(train['loss'])}."]
    return out + [""]


def finetuned_sections(source: ModelDir) -> list[str]:
    info, card = source.finetune_info, source.finetune_info["card"]
    out = ["## Training data", "",
           f"Fine-tuned ({info.get('mode', 'finetune')}) on the task `{card['name']}` (train: `{card.get('train')}`, "
           f"dev: `{card.get('dev')}`, labels: {card.get('labels') or 'regression'}), from the pretrained checkpoint "
           f"`{info.get('checkpoint')}` (objective '{source.config.objective.name}'); seed {info.get('seed')}, "
           f"epoch {info.get('epoch')}.", "", "## Metrics", ""]
    results_file = source.path.parent / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if results.get("task") != card["name"]:
        results = {}
    if results:
        seeds = len(results.get("seeds", []))
        out += [f"Dev metrics, mean over {seeds} seed(s) (results.json, {results.get('train_examples')} training "
                f"examples):", ""]
        out += table(list(results["metrics"].items()), ("metric", "value"))
    else:
        out += ["Dev metrics of the exported (best) evaluation (finetune.json):", ""]
        out += table(list(info.get("metrics", {}).items()), ("metric", "value"))
    baselines = results.get("baselines")
    if baselines:
        out += ["", "Baselines on the same dev set (what the model must beat):", "",
                "| metric | majority | bag of words (TF-IDF + logistic regression) |", "|---|---|---|"]
        bow = baselines["bow"]
        out += [f"| `{k}` | {number(v)} | {number(bow.get(k))} |" for k, v in baselines["majority"].items()]
    elif results:
        out += ["", "No baselines in results.json (finetune.baselines=false)."]
    return out + [""]


def loading_section(out_dir: Path, architectures: dict[str, str], sentence_transformers: bool) -> list[str]:
    lines = ["## Load with transformers", "", "```python", "import transformers", ""]
    for subdir, architecture in architectures.items():
        path = out_dir if subdir == "." else out_dir / subdir
        name = "model" if subdir == "." else subdir
        lines += [f"tokenizer = transformers.AutoTokenizer.from_pretrained({str(path)!r})",
                  f"{name} = transformers.{auto_class(architecture)}.from_pretrained({str(path)!r})  # {architecture}"]
    lines += ["```", ""]
    if sentence_transformers:
        lines += ["The directory is also a sentence-transformers model (modules.json, its pooling):", "", "```python",
                  "from sentence_transformers import SentenceTransformer", "",
                  f"embeddings = SentenceTransformer({str(out_dir)!r}).encode(['a sentence', 'another one'])",
                  "```", ""]
    return lines


def model_card(source: ModelDir, out_dir: Path, architectures: dict[str, str], sentence_transformers: bool) -> str:
    """README.md for the export of `source` into `out_dir` (architectures: subdirectory -> HF architecture)."""
    cfg, finetuned = source.config, source.kind == "finetuned"
    what = (f"a {source.finetune_info['card']['name']} classifier" if finetuned
            else f"a '{cfg.objective.name}' model")
    front = ["---", "library_name: transformers", "tags:", "- lmssl", f"- {cfg.objective.name}"]
    front += ["- sentence-transformers"] if sentence_transformers else []
    lines = [*front, "---", "", f"# {out_dir.name}", "",
             f"{what.capitalize()} exported by `lmssl export` from `{source.path}` as "
             + ", ".join(f"{a} (`{d}`)" for d, a in architectures.items()) + ".", "", "## Model", ""]
    lines += table([(f"model.{k}", getattr(cfg.model, k)) for k in MODEL_KEYS]
                   + [(f"objective.{k}", v) for k, v in cfg.to_dict()["objective"].items()]) + [""]
    lines += finetuned_sections(source) if finetuned else pretraining_sections(source)
    lines += loading_section(out_dir, architectures, sentence_transformers)
    return "\n".join(lines)
