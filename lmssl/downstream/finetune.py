"""Fine-tuning and linear probing of one task with one setting from any pretrained checkpoint (`lmssl finetune`;
lmssl.downstream.search runs grids and scratch comparisons around it, lmssl.downstream.finetune_command is the command).

For each seed: the pretrained encoder (`Objective.encoder()`: MLM/CLM/SimCSE trunk, ELECTRA
discriminator) gets a pooled-representation head (lmssl.model.classifier), trains for
`finetune.epochs` (at least `finetune.min_steps` steps) with AdamW, linear warmup over the first 10% of the
steps and linear decay to 0 (BERT §A.3; the TorchEngine of pretraining), is evaluated on the dev set(s)
after each epoch (or every `finetune.eval_every` steps), stops early after `finetune.patience` evaluations
without a better score, and keeps its best evaluation (the task score on the first dev set). Results are
the mean and sample std over seeds of the best evaluations' dev metrics; the best weights over all seeds
and evaluations are written to `output_dir/best`. Dev-set selection and reporting is what BERT/ELECTRA
report as "dev" results; it is optimistic for small dev sets (RTE, MRPC, WNLI). Metrics:
lmssl.downstream.task_metrics (scikit-learn / scipy).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lmssl.checkpoint.format import save_finetuned
from lmssl.checkpoint.model_dir import ModelDir, resolve_device
from lmssl.config import Config, FinetuneConfig, TrainConfig
from lmssl.data.paths import root_dir
from lmssl.data.tokenizer import TextTokenizer
from lmssl.downstream.encoding import EncodedSet, encode_texts
from lmssl.downstream.probe import (
    FeatureSet,
    LinearProbe,
    compute_features,
    fit_linear_head,
    fold_standardization,
    freeze,
    standardize,
)
from lmssl.downstream.task_metrics import mean_std
from lmssl.downstream.tasks import TaskCard, infer_labels, read_task_file, resolve_file
from lmssl.engine import TorchEngine
from lmssl.engine.rng import seed_everything
from lmssl.engine.skip_guard import SkipGuard
from lmssl.engine.torch_engine import autocast
from lmssl.errors import ConfigError, RunError
from lmssl.evaluate_modules import load_metric
from lmssl.model.classifier import SequenceClassifier, predictions
from lmssl.storage.atomic import write_text

FINETUNE_ADAM = dict(adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-6, clip_grad=1.0)  # BERT's fine-tuning optimizer


@dataclass
class EncoderSource:
    """What fine-tuning needs from a checkpoint: the architecture, tokenizer and encoder weights."""
    path: str  # as given (a checkpoint, a run directory, ...)
    checkpoint_dir: str  # the checkpoint directory read
    cfg: Config
    tokenizer: TextTokenizer
    causal: bool
    encoder_state: dict  # Objective.encoder() weights
    pooler_state: dict | None  # the objective's pretrained pooler (MLM with NSP/SOP), else None
    sentence_pooling: str = "cls"  # the objective's own sentence vector (Objective.sentence_pooling): cls or mean


def load_source(path: str | Path, opened: ModelDir | None = None) -> EncoderSource:
    """The encoder (and pretrained pooler) of the model directory `path` names (`opened`, when it is open)."""
    opened = opened or ModelDir.open(path)
    objective = opened.objective()
    pooler = objective.pretrained_pooler()
    return EncoderSource(str(path), str(opened.path), opened.config, opened.tokenizer, objective.causal,
                         copy.deepcopy(objective.encoder().state_dict()),
                         copy.deepcopy(pooler.state_dict()) if pooler is not None else None,
                         "cls" if objective.causal else objective.sentence_pooling())


def mean_pooled(source: EncoderSource, fcfg: FinetuneConfig) -> bool:
    """finetune.pooling: mean, or model where the checkpoint's own pooling is the mean (a causal model's own
    sentence vector for classification stays its last token)."""
    return fcfg.pooling == "mean" or (fcfg.pooling == "model" and source.sentence_pooling == "mean")


def build_classifier(source: EncoderSource, card: TaskCard, fcfg: FinetuneConfig) -> SequenceClassifier:
    """The task model of one seed (call after seeding): pretrained encoder (and pooler) unless from_scratch."""
    mean = mean_pooled(source, fcfg)
    use_pooler = not source.causal and not fcfg.probe and not mean
    shape = dataclasses.replace(source.cfg.model, dropout=fcfg.dropout, attention_dropout=fcfg.dropout)
    model = SequenceClassifier(shape, source.causal, card.num_outputs, card.regression, use_pooler, mean)
    if not fcfg.from_scratch:
        model.encoder.load_state_dict(source.encoder_state)
        if use_pooler and source.pooler_state is not None and fcfg.reuse_pooler:
            model.pooler.load_state_dict(source.pooler_state)
    return model


@torch.no_grad()
def evaluate(model, dataset, card: TaskCard, batch_size: int, device: torch.device,
             precision: str = "fp32") -> dict[str, float]:
    """The card's metrics (x 100) and their mean `score` on one dataset, without dropout, through the lmssl_glue
    `evaluate` module (lmssl.evaluate_modules)."""
    model.eval()
    order = dataset.eval_order()
    out = torch.empty(len(dataset), dtype=torch.float32 if card.regression else torch.long)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        with autocast(device, precision):
            logits = model.logits(dataset.batch(rows).to(device))
        out[torch.from_numpy(rows)] = predictions(logits, card.regression).cpu()
    metric = load_metric("lmssl_glue", "regression" if card.regression else "classification")
    return metric.compute(predictions=out.numpy(), references=dataset.targets.numpy(), metrics=card.metrics)


def _flat(dev: dict[str, dict[str, float]]) -> dict[str, float]:
    """{metric: v} for one dev set, {f"{set}_{metric}": v} for several (MNLI: matched_accuracy, ...)."""
    if len(dev) == 1:
        return dict(next(iter(dev.values())))
    return {f"{name}_{k}": v for name, metrics in dev.items() for k, v in metrics.items()}


def schedule(examples: int, fcfg: FinetuneConfig) -> tuple[int, int, int]:
    """(steps per epoch, epochs, total steps): finetune.epochs, raised until there are finetune.min_steps."""
    per_epoch = math.ceil(examples / fcfg.batch_size)
    epochs = max(fcfg.epochs, math.ceil(fcfg.min_steps / per_epoch))
    return per_epoch, epochs, per_epoch * epochs


def layer_lr_scales(model: SequenceClassifier, decay: float) -> dict[int, float]:
    """Layer-wise lr decay (ELECTRA, BEiT): the head, pooler and final norm at the full lr, block i of L at
    decay ** (L - i), the embeddings at decay ** (L + 1); {} for decay 1."""
    if decay == 1.0:
        return {}
    encoder, depth = model.encoder, len(model.encoder.layers)
    scales = {id(p): decay ** (depth + 1) for p in encoder.parameters()}  # embeddings (and their projection)
    for i, block in enumerate(encoder.layers):
        scales.update((id(p), decay ** (depth - i)) for p in block.parameters())
    if encoder.final_norm is not None:  # at the full lr, with the head: absent from the scales
        for p in encoder.final_norm.parameters():
            del scales[id(p)]
    return scales


def finetune_engine(model, fcfg: FinetuneConfig, total: int, seed: int, device: torch.device) -> TorchEngine:
    """The TorchEngine of one seed: AdamW (BERT's fine-tuning betas and epsilon, clipping at 1), linear warmup over
    warmup_ratio of `total` steps, then linear decay to 0; finetune.layer_lr_decay scales the encoder's lr by depth."""
    tcfg = TrainConfig(max_steps=total, batch_size=fcfg.batch_size, lr=fcfg.probe_lr if fcfg.probe else fcfg.lr,
                       weight_decay=fcfg.weight_decay, warmup_steps=round(fcfg.warmup_ratio * total),
                       schedule="linear", final_lr_ratio=0.0, seed=seed, precision=fcfg.precision, **FINETUNE_ADAM)
    scales = layer_lr_scales(model, fcfg.layer_lr_decay) if isinstance(model, SequenceClassifier) else {}
    return TorchEngine(model, tcfg, device=device, lr_scales=scales)


def train_seed(model, train_set, dev_sets: dict, card: TaskCard, fcfg: FinetuneConfig, seed: int,
               device: torch.device) -> tuple[list[dict], dict]:
    """Train `model` (a SequenceClassifier, or a LinearProbe on features), evaluating on dev after every epoch (or
    every finetune.eval_every steps) and stopping after finetune.patience evaluations without a better score.
    Returns the evaluation records and the best one's (record, state_dict)."""
    per_epoch, epochs, total = schedule(len(train_set), fcfg)
    every = fcfg.eval_every or per_epoch
    engine = finetune_engine(model, fcfg, total, seed, device)
    order_rng = np.random.default_rng(seed)
    records, best, losses, step, waited = [], None, [], 0, 0
    guard = SkipGuard(fcfg.max_skipped_steps)  # pretraining's: non-finite steps are skipped, too many in a row stop
    with tqdm(total=total, desc=f"{card.name} seed {seed}", unit="step", dynamic_ncols=True, leave=False) as bar:
        for epoch in range(1, epochs + 1):
            for rows in train_set.epoch_batches(order_rng, fcfg.batch_size, fcfg.group_by_length):
                stats = engine.train_step([train_set.batch(rows)])
                step += 1
                guard.update(step, stats)
                check_diverged(guard.diverged(step, "finetune.max_skipped_steps"), fcfg, seed)
                losses.append(stats["loss"].item())
                bar.update()
                bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.3f}")
                if step % every and step < total:
                    continue
                dev = {name: evaluate(model, data, card, fcfg.eval_batch_size, engine.device, fcfg.precision)
                       for name, data in dev_sets.items()}
                at = step / per_epoch
                record = {"step": step, "epoch": int(at) if at.is_integer() else round(at, 3),
                          "train_loss": float(np.mean(losses)), "train_loss_first_steps": float(np.mean(losses[:10])),
                          "train_loss_last_steps": float(np.mean(losses[-10:])), **_flat(dev)}
                records.append(record)
                losses = []
                score = selectable(next(iter(dev.values()))["score"])
                if best is None or score > best[0]["score_selection"]:
                    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    check_diverged(non_finite_weights(state, step), fcfg, seed)  # never a NaN best/
                    best, waited = ({**record, "score_selection": score}, state), 0
                else:
                    waited += 1
                if fcfg.patience and waited >= fcfg.patience:
                    records[-1]["stopped_early"] = True  # the linear decay was planned for `total` steps
                    return records, best
    return records, best


def non_finite_weights(state: dict, step: int) -> str | None:
    """'after step N, WEIGHT holds non-finite values' for the first such tensor of `state`, else None."""
    name = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    return None if name is None else f"after step {step}, {name} holds non-finite values"


def check_diverged(what: str | None, fcfg: FinetuneConfig, seed: int) -> None:
    """RunError for a fine-tuning seed that diverged (`what` says how; None: it did not): nothing of it is saved."""
    if what is not None:
        key, lr = ("probe_lr", fcfg.probe_lr) if fcfg.probe else ("lr", fcfg.lr)
        raise RunError(f"fine-tuning diverged (seed {seed}): {what}. Try a lower finetune.{key} (now {lr:g}) or more "
                       f"finetune.warmup_ratio; this seed's weights were not saved and results.json was not written")


def fit_probe(probe: LinearProbe, train_set: FeatureSet, dev_sets: dict, card: TaskCard, fcfg: FinetuneConfig,
              seed: int, device: torch.device) -> tuple[list[dict], tuple[dict, dict]]:
    """`train_seed` for finetune.probe_solver=lbfgs: the head fitted by scikit-learn, then one evaluation."""
    fit_linear_head(probe.head, train_set, card.regression, seed)
    probe.to(device).eval()
    with torch.no_grad():
        train_loss = float(probe(train_set.batch(train_set.eval_order()).to(device)).loss)
    dev = {name: evaluate(probe, data, card, fcfg.eval_batch_size, device) for name, data in dev_sets.items()}
    record = {"step": 0, "epoch": 0, "train_loss": train_loss, **_flat(dev)}
    state = {k: v.detach().cpu().clone() for k, v in probe.state_dict().items()}
    return [record], ({**record, "score_selection": selectable(next(iter(dev.values()))["score"])}, state)


def probe_features(model: SequenceClassifier, data: EncodedTask, fcfg: FinetuneConfig, device: torch.device):
    """(training features, {dev set: features}, (mean, std)) of the frozen encoder, standardised by the training
    features' mean and std."""
    features = compute_features(model, data.train, fcfg.eval_batch_size, device, fcfg.precision)
    dev = {n: compute_features(model, d, fcfg.eval_batch_size, device, fcfg.precision) for n, d in data.dev.items()}
    return features, dev, standardize(features, list(dev.values()))


def selectable(score: float) -> float:
    """A score to maximise: an undefined one (NaN: constant predictions) ranks below every defined one."""
    return score if math.isfinite(score) else -math.inf


def finite(value):
    """NaN -> None, recursively, so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def check_output(out: Path, fcfg: FinetuneConfig) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"key 'finetune.output_dir': {out} is a file, not a directory")
    if (out / "results.json").exists() and not fcfg.overwrite:
        raise ConfigError(f"key 'finetune.output_dir': {out} already holds results.json; set finetune.overwrite=true "
                          f"or choose another finetune.output_dir")


def subsample_rows(total: int, size: int, data_seed: int) -> np.ndarray:
    """Indices of a uniform random subsample of `size` of `total` examples (all when size is 0 or >= total),
    in file order; a pure function of data_seed."""
    if not size or size >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(data_seed).choice(total, size, replace=False))


@dataclass
class EncodedTask:
    """A task's encoded training subsample and dev sets, and how they were drawn."""
    train: EncodedSet
    dev: dict[str, EncodedSet]
    total: int  # training examples in the file
    subsample: dict | None  # how the training subsample was drawn (None = all examples)
    max_length: int  # tokens per example after truncation
    texts: dict[str, list[tuple[str, ...]]]  # the raw examples of "train" (the subsample) and of each dev set


def encode_task(source: EncoderSource, card: TaskCard, fcfg: FinetuneConfig) -> EncodedTask:
    root = root_dir(fcfg.data_root)
    train = read_task_file(card, resolve_file(card, card.train, root))
    devs = {name: read_task_file(card, resolve_file(card, f, root)) for name, f in card.dev.items()}
    rows, subsample = subsample_rows(len(train), fcfg.max_train_examples, fcfg.data_seed), None
    if len(rows) < len(train) or any(fcfg.max_dev_examples and len(d) > fcfg.max_dev_examples for d in devs.values()):
        subsample = {"max_train_examples": fcfg.max_train_examples, "max_dev_examples": fcfg.max_dev_examples,
                     "data_seed": fcfg.data_seed,
                     "method": "uniform without replacement: numpy default_rng(data_seed).choice, file order kept"}
    m = source.cfg.model
    max_length = fcfg.max_length if m.position == "rope" else min(fcfg.max_length, m.max_positions)
    tok, use_types = source.tokenizer, m.type_vocab_size >= 2
    pad_id = tok.pad_id if tok.pad_id is not None else 0  # masked out of attention anyway

    def encoded(data, index) -> EncodedSet:
        ids, types = encode_texts(tok, [data.texts[i] for i in index], source.causal, max_length)
        return EncodedSet(ids, types, data.targets[index], pad_id, source.causal, use_types)

    dev_rows = {name: subsample_rows(len(d), fcfg.max_dev_examples, fcfg.data_seed) for name, d in devs.items()}
    texts = {"train": [train.texts[i] for i in rows],
             **{name: [d.texts[i] for i in dev_rows[name]] for name, d in devs.items()}}
    return EncodedTask(encoded(train, rows), {name: encoded(d, dev_rows[name]) for name, d in devs.items()},
                    len(train), subsample, max_length, texts)


def pooling_description(source: EncoderSource, fcfg: FinetuneConfig) -> str:
    if mean_pooled(source, fcfg):
        return "mean of the tokens" + (" (the model's own pooling)" if fcfg.pooling == "model" else "")
    if source.causal:
        return "last token"
    if fcfg.probe:
        return "[CLS]"
    pretrained = source.pooler_state is not None and fcfg.reuse_pooler and not fcfg.from_scratch
    return "[CLS] + " + ("pretrained pooler" if pretrained else "fresh pooler")


def used_lr(fcfg: FinetuneConfig) -> float | None:
    if not fcfg.probe:
        return fcfg.lr
    return fcfg.probe_lr if fcfg.probe_solver == "adamw" else None  # scikit-learn's L-BFGS has no learning rate


def run_task(source: EncoderSource, card: TaskCard, fcfg: FinetuneConfig, out: Path, data: EncodedTask | None = None,
             extra: dict | None = None) -> dict:
    """Fine-tune (or probe) on one task over `fcfg.seeds` seeds; write results.json (with `extra`, e.g. the
    baselines) and best/; return the results. `data`: the task already encoded (a grid's cells share it)."""
    started, device = time.perf_counter(), resolve_device(fcfg.device)
    check_output(out, fcfg)
    card = infer_labels(card, root_dir(fcfg.data_root))
    data = data or encode_task(source, card, fcfg)
    per_epoch, epochs, _ = schedule(len(data.train), fcfg)
    mode = "probe" if fcfg.probe else "finetune"
    seeds, best_overall, cached, train_seconds, steps_done = [], None, None, 0.0, 0
    for seed in range(fcfg.seed, fcfg.seed + fcfg.seeds):
        seed_everything(seed)
        model = build_classifier(source, card, fcfg).to(device)
        trained, train_data, dev_data = model, data.train, data.dev
        if fcfg.probe:
            freeze(model.encoder)
            if cached is None or fcfg.from_scratch:  # a pretrained frozen encoder gives every seed the same features
                cached = probe_features(model, data, fcfg, device)
            train_data, dev_data, scale = cached
            trained = LinearProbe(model.head, card.regression)
        seed_started = time.perf_counter()
        fit = fit_probe if fcfg.probe and fcfg.probe_solver == "lbfgs" else train_seed
        records, (best, state) = fit(trained, train_data, dev_data, card, fcfg, seed, device)
        train_seconds += time.perf_counter() - seed_started
        steps_done += records[-1]["step"]
        trained.load_state_dict(state)
        if fcfg.probe:
            fold_standardization(model.head, *scale)  # the saved head reads raw features
        metrics = {k: v for k, v in best.items()
                   if k not in ("epoch", "step", "stopped_early", "score_selection") and not k.startswith("train_")}
        seeds.append({"seed": seed, "best_epoch": best["epoch"], "best_step": best["step"], "metrics": metrics,
                      "stopped_early_at_step": records[-1]["step"] if records[-1].get("stopped_early") else None,
                      "evaluations": records})
        if best_overall is None or best["score_selection"] > selectable(best_overall["score"]):
            best_overall = {"seed": seed, "epoch": best["epoch"], "score": best["score_selection"],
                            "dir": str(out / "best")}
            save_finetuned(out / "best", model, source.cfg, source.tokenizer, finite({
                "card": card.to_dict(), "causal": source.causal, "use_pooler": model.pooler is not None,
                "mean_pooling": model.mean_pooling,
                "max_length": data.max_length, "mode": mode, "from_scratch": fcfg.from_scratch,
                "checkpoint": source.path, "seed": seed, "epoch": best["epoch"], "metrics": metrics}))
    summary = {k: mean_std([s["metrics"][k] for s in seeds]) for k in seeds[0]["metrics"]}
    results = {
        "task": card.name, "checkpoint": source.path, "checkpoint_dir": source.checkpoint_dir,
        "objective": source.cfg.objective.name, "mode": mode, "from_scratch": fcfg.from_scratch,
        "pooling": pooling_description(source, fcfg),
        "metrics": {k: m for k, (m, _) in summary.items()}, "std": {k: s for k, (_, s) in summary.items()},
        "train_examples": len(data.train), "train_examples_total": data.total, "subsample": data.subsample,
        "dev_examples": {name: len(d) for name, d in data.dev.items()}, "max_length": data.max_length,
        "selection": f"best evaluation per seed on the {next(iter(card.dev))} set's score (mean of its metrics)",
        "steps_per_epoch": per_epoch, "epochs_planned": epochs,
        "best": best_overall, "seeds": seeds, "card": card.to_dict(),
        "finetune": {**asdict(fcfg), "lr_used": used_lr(fcfg)},
        "elapsed_s": round(time.perf_counter() - started, 1),
        # training examples per second of the training loops (their per-epoch dev evaluations included)
        "train_examples_per_s": round(len(data.train) * steps_done / per_epoch / max(train_seconds, 1e-9), 1),
        **(extra or {}),
    }
    write_text(out / "results.json", json.dumps(finite(results), indent=1) + "\n")
    return results
