"""`lmssl finetune`'s settings: the `finetune.*` keys, parsed and validated like the pretraining config."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Literal

from lmssl.config.parse import build_section, parse_override
from lmssl.errors import ConfigError, did_you_mean


@dataclass
class FinetuneConfig:
    epochs: int = 3  # passes over the training set (BERT §4.1: 3 for GLUE)
    # peak learning rate: BERT's small models search 3e-5..3e-4 and ELECTRA-Small uses 3e-4 (small models, big steps)
    lr: float = 1e-4
    probe_lr: float = 1e-3  # peak learning rate with probe=true (only a linear head trains, on fixed features)
    batch_size: int = 32  # examples per optimizer step (BERT: 32)
    max_length: int = 128  # tokens per example after truncation (BERT's GLUE runs: 128), at most model.max_positions
    warmup_ratio: float = 0.1  # share of the steps with linear warmup, then linear decay to 0 (BERT)
    weight_decay: float = 0.01  # AdamW decay, never on norms, biases and embeddings (BERT)
    dropout: float = 0.1  # hidden, attention and head dropout while fine-tuning (BERT: 0.1), whatever pretraining used
    seeds: int = 1  # runs with seeds seed, seed+1, ...; results give their mean and std
    seed: int = 0  # the first seed (head initialisation, dropout, example order)
    max_train_examples: int = 0  # 0 = all; else a uniform random subsample of this size (data_seed)
    data_seed: int = 0  # seed of that subsample: every training seed sees the same examples
    probe: bool = False  # linear probing: freeze the encoder, train a linear head on its pooled hidden state
    from_scratch: bool = False  # the same architecture and tokenizer with random weights (the no-pretraining baseline)
    reuse_pooler: bool = True  # start from the checkpoint's pretrained BERT pooler when it has one; false = fresh
    output_dir: str = ""  # results.json and best/ go here; "" = runs/finetune/<task> (glue: runs/finetune/glue)
    overwrite: bool = False  # allow an output_dir that already holds results
    data_root: str = ""  # GLUE folders and relative task files; "" = $LMSSL_DATA, else ../shared/data
    eval_batch_size: int = 64  # examples per forward pass in evaluation
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    device: str = "auto"  # cpu, cuda, ...; auto = cuda when available
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast in training and evaluation, weights fp32


def finetune_config(overrides: list[str], source: str = "overrides") -> FinetuneConfig:
    """`finetune.key=value` overrides -> FinetuneConfig; unknown keys suggest the nearest one."""
    raw = {}
    names = [f"finetune.{f.name}" for f in dataclasses.fields(FinetuneConfig)]
    for text in overrides:
        if "=" in text and "." not in text.split("=", 1)[0]:
            raise ConfigError(f"override '{text}': keys have the form finetune.field, e.g. finetune.epochs=3")
        (section, key), value = parse_override(text)
        if section != "finetune":
            raise ConfigError(f"override '{text}': `lmssl finetune` takes finetune.* keys, not '{section}.*'"
                              + did_you_mean(f"finetune.{key}", names))
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
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"{source}: key 'finetune.dropout': must be in [0, 1)")
    if cfg.max_length < 8:
        raise ConfigError(f"{source}: key 'finetune.max_length': must be at least 8")
    if cfg.probe and cfg.from_scratch:
        print("note: probe with from_scratch probes a random encoder (a baseline for probing)", file=sys.stderr)
    return cfg
