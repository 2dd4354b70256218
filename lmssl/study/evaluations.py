"""The evaluations of a study cell's final checkpoint, each cached in cells/<cell>/<name>.json once finished (with the
settings it was made with: other settings today redo it):
its size, text likelihood (PPL / pseudo-PPL, bits per byte), GLUE tasks by linear probe and by fine-tuning, STS,
minimal pairs, and label efficiency (fine-tuning on 250 / 1k / 4k ... labels, beside the same architecture from
scratch, which cells of one architecture share under study_dir/scratch/)."""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path

from lmssl.checkpoint.model_dir import ModelDir
from lmssl.config import Config
from lmssl.config.study import NAME, StudySpec
from lmssl.data.corpus import Corpus
from lmssl.data.minimal_pair_maker import write_pairs
from lmssl.data.paths import data_root
from lmssl.downstream.finetune_command import finetune
from lmssl.downstream.sts import evaluate_sts
from lmssl.downstream.tasks import glue_card, glue_task_name, load_task_card
from lmssl.errors import ConfigError
from lmssl.evaluation.likelihood import evaluate_text
from lmssl.evaluation.minimal_pairs import read_pairs, score_pairs
from lmssl.evaluation.text import read_documents, resolve_text_file
from lmssl.study.cells import Cell, changed_settings, read_json, write_json

# model fields a from-scratch fine-tuning ignores (it sets its own dropout) or that do not shape the trunk
SCRATCH_IRRELEVANT_FIELDS = ("dropout", "attention_dropout", "init_std", "attention_backend", "init_from")


def task_names(spec: StudySpec) -> dict[str, dict]:
    """Each probe / fine-tuning / label-efficiency task as given -> its name (a GLUE task's, or the card's own `name`,
    which names its columns and directories: a path never does) and what scores depend on (the card, less its
    path)."""
    e, found = spec.evaluate, {}
    for key, tasks in (("probe.tasks", e.probe.tasks), ("finetune.tasks", e.finetune.tasks),
                       ("label_efficiency.task", [e.label_efficiency.task] if e.label_efficiency.task else [])):
        names: dict[str, str] = {}
        for i, task in enumerate(tasks):
            where = f"{spec.source}: key 'evaluate.{key}" + (f"[{i}]'" if key.endswith("tasks") else "'")
            glue = glue_task_name(task)
            card = glue_card(glue) if glue else load_task_card(task)
            if not NAME.match(card.name):
                raise ConfigError(f"{where}: the task card {task} is named {card.name!r}, which cannot name a column "
                                  f"and a directory; give the card a plain name (letters, digits, '_', '-', '.')")
            if card.name in names:
                raise ConfigError(f"{where}: {task} and {names[card.name]} are both named {card.name!r}; give the "
                                  f"cards distinct names")
            names[card.name] = task
            shape = {k: v for k, v in card.to_dict().items() if k != "source"}
            found[task] = {"name": card.name, "card": hashlib.sha256(json.dumps(shape, sort_keys=True).encode())
                           .hexdigest()[:12]}
    return found


def prepare_pairs(spec: StudySpec, study_dir: Path) -> Path | None:
    """The study's minimal pairs: its `evaluate.pairs.file`, or study_dir/pairs.jsonl made from the corpus (again
    when the corpus or per_type changed: pairs.json keeps what it was made from)."""
    p = spec.evaluate.pairs
    if p.file:
        return Path(p.file)
    if not p.corpus:
        return None
    out, made_from = study_dir / "pairs.jsonl", {"corpus": p.corpus, "per_type": p.per_type}
    if not out.is_file() or read_json(study_dir / "pairs.json") != made_from:
        _, shortfall = write_pairs(Corpus(str(resolve_text_file(p.corpus, Config()))), out, p.per_type)
        if shortfall:
            print(shortfall, file=sys.stderr)
        write_json(study_dir / "pairs.json", made_from)
    return out


def finetune_results(checkpoint: str, task: str, overrides: list[str], out: Path) -> dict:
    """`lmssl finetune CHECKPOINT TASK overrides` into `out`; its results.json (unrounded metrics, std, baselines)."""
    finetune(checkpoint, task, [*overrides, f"finetune.output_dir={out}", "finetune.overwrite=true"])
    return json.loads((out / "results.json").read_text())


def _scores(results: dict) -> dict:
    found = {"metrics": results["metrics"], "std": results.get("std", {}), "train_examples": results["train_examples"]}
    if "baselines" in results:
        found["baselines"] = {k: results["baselines"][k] for k in ("majority", "bow")}
    if "scratch" in results:  # finetune.compare_scratch=true: the same architecture fine-tuned from random weights
        found["scratch"] = {"metrics": results["scratch"]["metrics"]}
    return found


def architecture_key(cfg, tokenizer, causal: bool, task: str, overrides: list[str]) -> str:
    """What from-scratch fine-tuning depends on: the model's shape, tokenizer, pooling kind, task and settings."""
    shape = {k: v for k, v in cfg.to_dict()["model"].items() if k not in SCRATCH_IRRELEVANT_FIELDS}
    text = json.dumps([shape, tokenizer.fingerprint(), causal, task, overrides], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def evaluate_cell(spec: StudySpec, cell: Cell, record: dict, study_dir: Path, pairs: Path | None,
                  tasks: dict[str, dict], largest: bool) -> dict:
    """Every evaluation the study asks for, of the cell's final checkpoint; a cached result made with the same
    settings is reused, one made with others is redone."""
    e = spec.evaluate
    cell_dir = study_dir / "cells" / cell.name
    checkpoint = record["checkpoint"]
    loaded: list = []

    def model():
        if not loaded:
            source = ModelDir.open(checkpoint)
            loaded.extend((source.config, source.tokenizer, source.objective()))
        return loaded

    def cached(name: str, settings: dict, compute) -> dict:
        path = cell_dir / f"{name}.json"
        found = read_json(path)
        settings = {"checkpoint": Path(checkpoint).name, **settings}
        if found is not None:
            changed = changed_settings(found.get("settings"), settings)
            if not changed:
                return found
            print(f"study {spec.name}: {cell.name}: {name}: made with other settings ({'; '.join(changed)}), "
                  f"redoing it", file=sys.stderr)
        print(f"study {spec.name}: {cell.name}: {name}", file=sys.stderr)
        started = time.perf_counter()
        found = {**compute(), "seconds": round(time.perf_counter() - started, 1), "settings": settings}
        write_json(path, found)
        return found

    def size() -> dict:
        _, _, objective = model()
        params = {id(p): p.numel() for p in objective.parameters()}  # tied weights once
        encoder = objective.encoder()
        in_encoder = sum(p.numel() for p in encoder.parameters())
        embeddings = sum(p.numel() for p in encoder.embeddings.parameters())
        return {"parameters": sum(params.values()), "encoder_parameters": in_encoder,
                "encoder_non_embedding_parameters": in_encoder - embeddings}

    out = {"size": cached("size", {}, size)}
    if e.likelihood.file:
        def likelihood() -> dict:
            cfg, tokenizer, objective = model()
            documents = read_documents(Corpus(str(resolve_text_file(e.likelihood.file, cfg))), e.likelihood.max_words)
            result = evaluate_text(objective, tokenizer, cfg, documents)
            if "pll" in result:  # the pseudo-log-likelihood in bits per byte: comparable across tokenizers, not PPL
                result["pseudo_bits_per_byte"] = -result["pll"] / math.log(2) / result["bytes"]
            return result
        out["likelihood"] = cached("likelihood", {"file": e.likelihood.file, "max_words": e.likelihood.max_words},
                                   likelihood)
    for task in e.probe.tasks:
        name = tasks[task]["name"]
        out[f"probe_{name}"] = cached(f"probe_{name}", {"task": task, "card": tasks[task]["card"],
                                                        "examples": e.probe.examples},
                                      lambda task=task, name=name: _scores(finetune_results(
            checkpoint, task, ["finetune.probe=true", f"finetune.max_train_examples={e.probe.examples}",
                               f"finetune.max_dev_examples={e.probe.examples}"], cell_dir / "probe" / name)))
    for task in e.finetune.tasks:
        name = tasks[task]["name"]
        out[f"finetune_{name}"] = cached(f"finetune_{name}", {"task": task, "card": tasks[task]["card"],
                                                              "overrides": e.finetune.overrides},
                                         lambda task=task, name=name: _scores(finetune_results(
            checkpoint, task, e.finetune.overrides, cell_dir / "finetune" / name)))
    if e.sts.sets:
        def sts() -> dict:
            cfg, tokenizer, objective = model()
            return evaluate_sts(objective, tokenizer, data_root(cfg), tuple(e.sts.sets))
        out["sts"] = cached("sts", {"sets": e.sts.sets}, sts)
    if pairs is not None:
        def minimal_pairs() -> dict:
            cfg, tokenizer, objective = model()
            return score_pairs(objective, tokenizer, read_pairs(pairs), word_l2r=e.pairs.word_l2r)[0]
        out["pairs"] = cached("pairs", {"pairs_sha256": hashlib.sha256(pairs.read_bytes()).hexdigest()[:16],
                                        "word_l2r": e.pairs.word_l2r}, minimal_pairs)
    le = e.label_efficiency
    if le.task and (largest or le.budgets == "all"):
        settings = {"task": le.task, "card": tasks[le.task]["card"], "sizes": le.sizes, "seeds": le.seeds,
                    "overrides": le.overrides}
        out["label_efficiency"] = cached("label_efficiency", settings, lambda: label_efficiency(
            spec, checkpoint, model, cell_dir, study_dir, tasks[le.task]))
    return out


def label_efficiency(spec: StudySpec, checkpoint: str, model, cell_dir: Path, study_dir: Path, task: dict) -> dict:
    """Fine-tuning scores at each number of labels, pretrained and from scratch (shared by one architecture)."""
    le = spec.evaluate.label_efficiency
    cfg, tokenizer, objective = model()
    # the card's content and the seeds are part of the key: a scratch curve is reused only for the same task and seeds
    key = architecture_key(cfg, tokenizer, objective.causal, f"{task['name']} {task['card']}",
                           [*le.overrides, f"finetune.seeds={le.seeds}"])
    curves: dict[str, dict] = {"pretrained": {}, "scratch": {}}
    for labels in le.sizes:
        settings = [*le.overrides, f"finetune.max_train_examples={labels}", f"finetune.seeds={le.seeds}",
                    "finetune.baselines=false"]
        curves["pretrained"][str(labels)] = _scores(finetune_results(checkpoint, le.task, settings,
                                                                     cell_dir / "label_efficiency" / str(labels)))
        scratch = study_dir / "scratch" / key / str(labels) / "scores.json"
        if not scratch.is_file():
            write_json(scratch, _scores(finetune_results(checkpoint, le.task, [*settings, "finetune.from_scratch=true"],
                                                         scratch.parent)))
        curves["scratch"][str(labels)] = read_json(scratch)
    return {"task": task["name"], "seeds": le.seeds, "scratch_key": key, **curves}
