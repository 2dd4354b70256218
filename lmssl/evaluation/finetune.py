"""GLUE-style fine-tuning and linear probing from any pretrained checkpoint (`lmssl finetune`).

For each seed: the pretrained encoder (`Objective.encoder()`: MLM/CLM/SimCSE trunk, ELECTRA
discriminator) gets a pooled-representation head (lmssl.evaluation.classifier), trains for
`finetune.epochs` with AdamW, linear warmup over the first 10% of the steps and linear decay to 0 (BERT
§A.3; the TorchEngine of pretraining), is evaluated on the dev set(s) after each epoch, and keeps its
best epoch (the task score on the first dev set). Results are the mean and sample std over seeds of the
best-epoch dev metrics; the best weights over all seeds and epochs are written to `output_dir/best`.
Dev-set selection and reporting is what BERT/ELECTRA report as "dev" results; it is optimistic for small
dev sets (RTE, MRPC, WNLI). Metrics: lmssl.evaluation.task_metrics (scikit-learn / scipy).
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from lmssl.checkpoint import load_checkpoint_config, load_pretrained, load_weights, write_model_files
from lmssl.config import Config, ConfigError, DataConfig, TrainConfig, _suggest, build_section, data_root, parse_override
from lmssl.data.tokenizer import TextTokenizer
from lmssl.engine import TorchEngine
from lmssl.engine.torch_engine import autocast
from lmssl.evaluation.classifier import SequenceClassifier, collate, encode_texts, predictions
from lmssl.evaluation.likelihood import resolve_checkpoint
from lmssl.evaluation.probe import LinearProbe, compute_features, fold_standardization, freeze, standardize
from lmssl.evaluation.task_metrics import compute_metrics, glue_table, mean_std
from lmssl.evaluation.tasks import GLUE_TASKS, TaskCard, glue_card, missing_files, read_task_file, resolve_file


@dataclass
class FinetuneConfig:
    epochs: int = 3  # passes over the training set (BERT §4.1: 3 for GLUE)
    lr: float = 1e-4  # peak learning rate. BERT-base searches 2e-5..5e-5; its small models (google-research/bert README) 3e-5..3e-4 and ELECTRA-Small uses 3e-4: small models take larger steps, so the top of BERT's range
    probe_lr: float = 1e-3  # peak learning rate with probe=true (only a linear head trains, on fixed features)
    batch_size: int = 32  # examples per optimizer step (BERT: 32)
    max_length: int = 128  # tokens per example after truncation (BERT's GLUE runs: 128), at most model.max_positions
    warmup_ratio: float = 0.1  # share of the steps with linear warmup, then linear decay to 0 (BERT)
    weight_decay: float = 0.01  # AdamW decay, never on norms, biases and embeddings (BERT)
    seeds: int = 1  # runs with seeds seed, seed+1, ...; results give their mean and std
    seed: int = 0  # the first seed (head initialisation, dropout, example order)
    max_train_examples: int = 0  # 0 = all; else a uniform random subsample of this size (data_seed), stated in results.json
    data_seed: int = 0  # seed of that subsample: every training seed sees the same examples
    probe: bool = False  # linear probing: freeze the encoder, train a linear head on its pooled hidden state
    from_scratch: bool = False  # the same architecture and tokenizer with random weights (the no-pretraining baseline)
    reuse_pooler: bool = True  # encoders: start from the checkpoint's pretrained BERT pooler when it has one (MLM with NSP/SOP); false = a fresh one
    output_dir: str = ""  # results.json and best/ go here; "" = runs/finetune/<task> (glue: runs/finetune/glue)
    overwrite: bool = False  # allow an output_dir that already holds results
    data_root: str = ""  # GLUE folders and relative task files; "" = $LMSSL_DATA, else ../shared/data
    eval_batch_size: int = 64  # examples per forward pass in evaluation
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    device: str = "auto"  # cpu, cuda, ...; auto = cuda when available
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast in training and evaluation, weights fp32 (~2x faster on GPUs and CPUs with AVX-512 BF16)


FINETUNE_ADAM = dict(adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-6, clip_grad=1.0)  # BERT's fine-tuning optimizer


def finetune_config(overrides: list[str], source: str = "overrides") -> FinetuneConfig:
    """`finetune.key=value` overrides -> FinetuneConfig; unknown keys suggest the nearest one."""
    raw = {}
    for text in overrides:
        if "=" in text and "." not in text.split("=", 1)[0]:
            raise ConfigError(f"override '{text}': keys have the form finetune.field, e.g. finetune.epochs=3")
        (section, key), value = parse_override(text)
        if section != "finetune":
            raise ConfigError(f"override '{text}': `lmssl finetune` takes finetune.* keys, not '{section}.*'"
                              + _suggest(f"finetune.{key}", [f"finetune.{f}" for f in FinetuneConfig.__dataclass_fields__]))
        raw[key] = value
    cfg = build_section(FinetuneConfig, raw, "finetune", source)
    for key in ("epochs", "batch_size", "seeds", "eval_batch_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{source}: key 'finetune.{key}': must be positive")
    for key in ("seed", "max_train_examples", "data_seed", "num_threads"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{source}: key 'finetune.{key}': must be >= 0")
    if not (cfg.lr > 0 and cfg.probe_lr > 0):
        raise ConfigError(f"{source}: key 'finetune.{'lr' if cfg.lr <= 0 else 'probe_lr'}': must be positive")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise ConfigError(f"{source}: key 'finetune.warmup_ratio': must be in [0, 1)")
    if cfg.max_length < 8:
        raise ConfigError(f"{source}: key 'finetune.max_length': must be at least 8")
    if cfg.probe and cfg.from_scratch:
        print("note: probe with from_scratch probes a random encoder (a baseline for probing)", file=sys.stderr)
    return cfg


@dataclass
class Pretrained:
    """What fine-tuning needs from a checkpoint: the architecture, tokenizer and encoder weights."""
    path: str  # as given (a checkpoint, a run directory, ...)
    checkpoint_dir: str  # the checkpoint directory read
    cfg: Config
    tokenizer: TextTokenizer
    causal: bool
    encoder_state: dict  # Objective.encoder() weights
    pooler_state: dict | None  # the pretrained BERT pooler (MLM with NSP/SOP), else None


def load_source(path: str | Path) -> Pretrained:
    cfg, tokenizer, objective = load_pretrained(Path(path))
    pooler = getattr(objective, "pooler", None)  # MaskedLM with a sentence task: BERT's pretrained pooler
    resolved = resolve_checkpoint(str(path))
    return Pretrained(str(path), str(resolved), cfg, tokenizer, objective.causal, copy.deepcopy(objective.encoder().state_dict()),
                      copy.deepcopy(pooler.state_dict()) if pooler is not None else None)


def build_classifier(source: Pretrained, card: TaskCard, fcfg: FinetuneConfig) -> SequenceClassifier:
    """The task model of one seed (call after seeding): pretrained encoder (and pooler) unless from_scratch."""
    use_pooler = not source.causal and not fcfg.probe
    model = SequenceClassifier(source.cfg.model, source.causal, card.num_outputs, card.regression, use_pooler)
    if not fcfg.from_scratch:
        model.encoder.load_state_dict(source.encoder_state)
        if use_pooler and source.pooler_state is not None and fcfg.reuse_pooler:
            model.pooler.load_state_dict(source.pooler_state)
    return model


class EncodedSet:
    """Tokenized examples; `batch(rows)` pads them into a TaskBatch."""

    def __init__(self, ids, types, targets: np.ndarray, pad_id: int, causal: bool, use_types: bool):
        self.ids, self.types, self.pad_id, self.causal, self.use_types = ids, types, pad_id, causal, use_types
        self.targets = torch.from_numpy(targets)

    def __len__(self) -> int:
        return len(self.ids)

    def eval_order(self) -> np.ndarray:
        """Longest first, so evaluation batches hold similar lengths (less padding)."""
        return np.argsort([-len(x) for x in self.ids], kind="stable")

    def batch(self, rows: np.ndarray):
        return collate([self.ids[i] for i in rows], [self.types[i] for i in rows], self.targets[torch.from_numpy(np.asarray(rows))],
                       self.pad_id, self.causal, self.use_types)


@torch.no_grad()
def evaluate(model, dataset, card: TaskCard, batch_size: int, device: torch.device,
             precision: str = "fp32") -> dict[str, float]:
    """The card's metrics (x 100) and their mean `score` on one dataset, without dropout."""
    model.eval()
    order = dataset.eval_order()
    out = torch.empty(len(dataset), dtype=torch.float32 if card.regression else torch.long)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        with autocast(device, precision):
            logits = model.logits(dataset.batch(rows).to(device))
        out[torch.from_numpy(rows)] = predictions(logits, card.regression).cpu()
    return compute_metrics(card.metrics, out.numpy(), dataset.targets.numpy())


def _flat(dev: dict[str, dict[str, float]]) -> dict[str, float]:
    """{metric: v} for one dev set, {f"{set}_{metric}": v} for several (MNLI: matched_accuracy, ...)."""
    if len(dev) == 1:
        return dict(next(iter(dev.values())))
    return {f"{name}_{k}": v for name, metrics in dev.items() for k, v in metrics.items()}


def train_seed(model, train_set, dev_sets: dict, card: TaskCard, fcfg: FinetuneConfig, seed: int,
               device: torch.device) -> tuple[list[dict], dict]:
    """Train `model` (a SequenceClassifier, or a LinearProbe on features); evaluate after every epoch.
    Returns the per-epoch records and the best epoch's (record, state_dict)."""
    steps = math.ceil(len(train_set) / fcfg.batch_size)
    total = steps * fcfg.epochs
    tcfg = TrainConfig(max_steps=total, batch_size=fcfg.batch_size, lr=fcfg.probe_lr if fcfg.probe else fcfg.lr,
                       weight_decay=fcfg.weight_decay, warmup_steps=round(fcfg.warmup_ratio * total),
                       schedule="linear", final_lr_ratio=0.0, seed=seed, precision=fcfg.precision, **FINETUNE_ADAM)
    engine = TorchEngine(model, tcfg, device=device)
    order_rng = np.random.default_rng(seed)
    records, best = [], None
    bar = tqdm(total=total, desc=f"{card.name} seed {seed}", unit="step", dynamic_ncols=True, leave=False)
    for epoch in range(1, fcfg.epochs + 1):
        order, losses = order_rng.permutation(len(train_set)), []
        for start in range(0, len(order), fcfg.batch_size):
            stats = engine.train_step([train_set.batch(order[start:start + fcfg.batch_size])])
            losses.append(stats["loss"])
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.3f}")
        dev = {name: evaluate(model, data, card, fcfg.eval_batch_size, engine.device, fcfg.precision)
               for name, data in dev_sets.items()}
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "train_loss_first_steps": float(np.mean(losses[:10])),
                  "train_loss_last_steps": float(np.mean(losses[-10:])), **_flat(dev)}
        records.append(record)
        score = _selectable(next(iter(dev.values()))["score"])
        if best is None or score > best[0]["score_selection"]:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best = ({**record, "score_selection": score}, state)
    bar.close()
    return records, best


def save_finetuned(directory: Path, model: SequenceClassifier, source: Pretrained, info: dict) -> None:
    """model.safetensors (encoder.*, pooler.*, head.*), config.yaml (the pretrained architecture),
    tokenizer.json and finetune.json (task card, labels, seed, epoch, metrics); atomically replaced."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-best-", dir=directory.parent))
    write_model_files(tmp, model, source.cfg, source.tokenizer)
    (tmp / "finetune.json").write_text(json.dumps(_finite(info), indent=1) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)


def load_finetuned(directory: str | Path, device: str = "cpu") -> tuple[SequenceClassifier, TextTokenizer, dict]:
    """A fine-tuned model written by `save_finetuned`, in eval mode, with its tokenizer and finetune.json."""
    directory = Path(directory)
    if not (directory / "finetune.json").is_file():
        raise ConfigError(f"{directory}: not a fine-tuned model directory (no finetune.json)")
    info = json.loads((directory / "finetune.json").read_text())
    cfg = load_checkpoint_config(directory)
    card = info["card"]
    regression = card["labels"] is None
    model = SequenceClassifier(cfg.model, info["causal"], 1 if regression else len(card["labels"]), regression,
                               info["use_pooler"])
    load_weights(model, directory)
    return model.to(device).eval(), TextTokenizer.from_file(directory / "tokenizer.json"), info


def _selectable(score: float) -> float:
    """A score to maximise: an undefined one (NaN: constant predictions) ranks below every defined one."""
    return score if math.isfinite(score) else -math.inf


def _finite(value):
    """NaN -> None, recursively, so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def resolve_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def task_root(fcfg: FinetuneConfig) -> Path:
    return data_root(Config(data=DataConfig(root=fcfg.data_root)))


RUN_ONLY_KEYS = ("output_dir", "overwrite", "num_threads", "device", "eval_batch_size")  # change speed, not results


def finished_result(out: Path, fcfg: FinetuneConfig, checkpoint_dir: str) -> dict | None:
    """The results.json in `out` when it came from the same checkpoint and settings (an interrupted `glue`
    run picks up where it stopped); None when `out` holds none (or overwrite is set); else refuse as
    `_check_output` does."""
    path = out / "results.json"
    if path.exists() and not fcfg.overwrite:
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        same = {k: v for k, v in asdict(fcfg).items() if k not in RUN_ONLY_KEYS}
        stored = {k: v for k, v in old.get("finetune", {}).items() if k in same}
        if old.get("checkpoint_dir") == checkpoint_dir and stored == same:
            return old
    _check_output(out, fcfg)
    return None


def _check_output(out: Path, fcfg: FinetuneConfig) -> None:
    if (out / "results.json").exists() and not fcfg.overwrite:
        raise ConfigError(f"key 'finetune.output_dir': {out} already holds results.json; set finetune.overwrite=true "
                          f"or choose another finetune.output_dir")


def subsample_rows(total: int, size: int, data_seed: int) -> np.ndarray:
    """Indices of a uniform random subsample of `size` of `total` examples (all when size is 0 or >= total),
    in file order; a pure function of data_seed."""
    if not size or size >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(data_seed).choice(total, size, replace=False))


def run_task(source: Pretrained, card: TaskCard, fcfg: FinetuneConfig, out: Path) -> dict:
    """Fine-tune (or probe) on one task over `fcfg.seeds` seeds; write results.json and best/; return the results."""
    from lmssl.train import seed_everything

    started, root, device = time.perf_counter(), task_root(fcfg), resolve_device(fcfg.device)
    _check_output(out, fcfg)
    train = read_task_file(card, resolve_file(card, card.train, root))
    devs = {name: read_task_file(card, resolve_file(card, f, root)) for name, f in card.dev.items()}
    total, subsample = len(train), None
    rows = subsample_rows(total, fcfg.max_train_examples, fcfg.data_seed)
    if len(rows) < total:
        subsample = {"max_train_examples": fcfg.max_train_examples, "data_seed": fcfg.data_seed,
                     "method": "uniform without replacement: numpy default_rng(data_seed).choice, file order kept"}
    max_length = fcfg.max_length if source.cfg.model.position == "rope" else min(fcfg.max_length,
                                                                                 source.cfg.model.max_positions)
    tok, use_types = source.tokenizer, source.cfg.model.type_vocab_size >= 2
    pad_id = tok.pad_id if tok.pad_id is not None else 0  # masked out of attention anyway

    def encoded(data, index) -> EncodedSet:
        ids, types = encode_texts(tok, [data.texts[i] for i in index], source.causal, max_length)
        return EncodedSet(ids, types, data.targets[index], pad_id, source.causal, use_types)

    train_set = encoded(train, rows)
    dev_sets = {name: encoded(d, np.arange(len(d))) for name, d in devs.items()}
    seeds, best_overall, cached = [], None, None
    for seed in range(fcfg.seed, fcfg.seed + fcfg.seeds):
        seed_everything(seed)
        model = build_classifier(source, card, fcfg).to(device)
        trained = model
        train_data, dev_data = train_set, dev_sets
        if fcfg.probe:
            freeze(model.encoder)
            if cached is None or fcfg.from_scratch:  # a pretrained frozen encoder gives every seed the same features
                features = compute_features(model, train_set, fcfg.eval_batch_size, device, fcfg.precision)
                dev_features = {n: compute_features(model, d, fcfg.eval_batch_size, device, fcfg.precision)
                                for n, d in dev_sets.items()}
                scale = standardize(features, list(dev_features.values()))
                cached = (features, dev_features, scale)
            train_data, dev_data, scale = cached
            trained = LinearProbe(model.head, card.regression)
        records, (best, state) = train_seed(trained, train_data, dev_data, card, fcfg, seed, device)
        trained.load_state_dict(state)
        if fcfg.probe:
            fold_standardization(model.head, *scale)  # the saved head reads raw features
        metrics = {k: v for k, v in best.items() if k not in ("epoch", "score_selection") and not k.startswith("train_")}
        seeds.append({"seed": seed, "best_epoch": best["epoch"], "metrics": metrics, "epochs": records})
        if best_overall is None or best["score_selection"] > _selectable(best_overall["score"]):
            best_overall = {"seed": seed, "epoch": best["epoch"], "score": best["score_selection"], "dir": str(out / "best")}
            save_finetuned(out / "best", model, source, {
                "card": card.to_dict(), "causal": source.causal, "use_pooler": model.pooler is not None,
                "max_length": max_length, "mode": "probe" if fcfg.probe else "finetune", "from_scratch": fcfg.from_scratch,
                "checkpoint": source.path, "seed": seed, "epoch": best["epoch"], "metrics": metrics})
    keys = list(seeds[0]["metrics"])
    summary = {k: mean_std([s["metrics"][k] for s in seeds]) for k in keys}
    results = {
        "task": card.name, "checkpoint": source.path, "checkpoint_dir": source.checkpoint_dir,
        "objective": source.cfg.objective.name,
        "mode": "probe" if fcfg.probe else "finetune", "from_scratch": fcfg.from_scratch,
        "pooling": ("last token" if source.causal else "[CLS]") + (
            "" if source.causal or fcfg.probe else (" + pretrained pooler" if source.pooler_state is not None and
                                                    fcfg.reuse_pooler and not fcfg.from_scratch else " + fresh pooler")),
        "metrics": {k: m for k, (m, _) in summary.items()}, "std": {k: s for k, (_, s) in summary.items()},
        "train_examples": len(train_set), "train_examples_total": total, "subsample": subsample,
        "dev_examples": {name: len(d) for name, d in dev_sets.items()}, "max_length": max_length,
        "selection": f"best epoch per seed on the {next(iter(card.dev))} set's score (mean of its metrics)",
        "best": best_overall, "seeds": seeds, "card": card.to_dict(),
        "finetune": {**asdict(fcfg), "lr_used": fcfg.probe_lr if fcfg.probe else fcfg.lr},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_finite(results), indent=1) + "\n")
    return results


def summary_line(results: dict) -> dict:
    """The CLI's last line: the task, mean dev metrics (x 100), their std over seeds, and where it all is."""
    line = {"task": results["task"], **{k: round(v, 2) for k, v in results["metrics"].items()}}
    if len(results["seeds"]) > 1:
        line.update({f"{k}_std": round(v, 2) for k, v in results["std"].items()})
    line.update(seeds=len(results["seeds"]), train_examples=results["train_examples"], mode=results["mode"],
                output_dir=str(Path(results["best"]["dir"]).parent))
    return _finite(line)


def _close(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def glue_task_name(task: str) -> str | None:
    """'sst2', 'SST-2', 'sts-b' ... -> the GLUE task name, None if it is not one."""
    name = task.lower().replace("-", "")
    return name if name in GLUE_TASKS else None


def finetune(checkpoint: str, task: str, overrides: list[str]) -> dict:
    """`lmssl finetune CKPT TASK [finetune.key=value ...]`: TASK is a GLUE task, `glue`, or a task card path."""
    fcfg = finetune_config(overrides)
    if fcfg.num_threads:
        torch.set_num_threads(fcfg.num_threads)
    root = task_root(fcfg)
    if task.lower() == "glue":
        out = Path(fcfg.output_dir or "runs/finetune/glue")
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
        checkpoint_dir = str(resolve_checkpoint(checkpoint))  # outputs are checked before the weights load
        done = {name: finished_result(out / name, fcfg, checkpoint_dir) for name in present}
        for name in present:
            if done[name] is not None:
                sys.stderr.write(f"{name}: reusing {out / name / 'results.json'} (same checkpoint and settings)\n")
        source = load_source(checkpoint) if None in done.values() else None
        results = {name: done[name] or run_task(source, glue_card(name), fcfg, out / name) for name in present}
        title = f"GLUE dev: {checkpoint} (data root {root})" + (" (random init)" if fcfg.from_scratch else "") + (" (linear probe)" if fcfg.probe else "")
        markdown, table = glue_table(results, absent, title)
        (out / "glue.md").write_text(markdown)
        (out / "glue.json").write_text(json.dumps(_finite({"checkpoint": checkpoint, **table, "tasks": {
            name: {"metrics": r["metrics"], "std": r["std"]} for name, r in results.items()}}), indent=1) + "\n")
        sys.stderr.write(markdown)
        return _finite({"task": "glue", **{k: v for k, v in table.items() if k != "absent"},
                        "absent": sorted(absent), "table": str(out / "glue.md")})
    name = glue_task_name(task)
    if name is not None:
        card = glue_card(name)
        missing = missing_files(card, root)
        if missing:
            raise ConfigError(f"GLUE task '{name}' is not present under the data root {root}: {', '.join(missing)} "
                              f"not found (standard GLUE layout glue/<TASK>/train.tsv, dev.tsv; set LMSSL_DATA or "
                              f"finetune.data_root)")
    elif task.endswith((".yaml", ".yml")) or os.path.exists(task):
        from lmssl.evaluation.tasks import load_task_card

        card = load_task_card(task)
    else:
        raise ConfigError(f"unknown task {task!r}: choose a GLUE task ({' '.join(GLUE_TASKS)}), glue (all of them), "
                          f"or the path of a task card (.yaml)" + _close(task.lower(), [*GLUE_TASKS, "glue"]))
    out = Path(fcfg.output_dir or f"runs/finetune/{card.name}")
    _check_output(out, fcfg)
    return summary_line(run_task(load_source(checkpoint), card, fcfg, out))
