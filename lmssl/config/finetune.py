"""`lmssl finetune`'s settings: the `finetune.*` keys, parsed and validated like the pretraining config."""
from __future__ import annotations

import dataclasses
import itertools
import sys
from dataclasses import dataclass
from typing import Literal

from lmssl.config.parse import build_section, parse_override
from lmssl.config.validate import MAX_SEED, non_finite
from lmssl.errors import ConfigError, did_you_mean


@dataclass
class FinetuneConfig:
    epochs: int = 3  # passes over the training set (BERT §4.1: 3 for GLUE); a list [3, 10] makes a grid
    min_steps: int = 0  # at least this many optimizer steps: epochs are added for small training sets
    # peak learning rate: BERT's small models search 3e-5..3e-4 and ELECTRA-Small uses 3e-4 (small models, big steps)
    lr: float = 1e-4  # a list [1e-4, 3e-4] makes a grid searched on dev
    # layer-wise lr decay (ELECTRA: 0.8): block i of L trains at lr x decay ** (L - i), the embeddings at
    # decay ** (L + 1), pooler and head at lr; 1 = one lr for all
    layer_lr_decay: float = 1.0
    probe_lr: float = 1e-3  # peak learning rate with probe=true (only a linear head trains, on fixed features)
    batch_size: int = 32  # examples per optimizer step (BERT: 32); a list makes a grid
    max_length: int = 128  # tokens per example after truncation (BERT's GLUE runs: 128), at most model.max_positions
    # training batches of similar lengths (length-sorted mega-batches of 50 batches, shuffled): less padding
    group_by_length: bool = True
    warmup_ratio: float = 0.1  # share of the steps with linear warmup, then linear decay to 0 (BERT)
    weight_decay: float = 0.01  # AdamW decay, never on norms, biases and embeddings (BERT)
    dropout: float = 0.1  # hidden, attention and head dropout while fine-tuning (BERT: 0.1), whatever pretraining used
    seeds: int = 1  # runs with seeds seed, seed+1, ...; mean and std in results (a grid ranks cells by the mean)
    max_skipped_steps: int = 3  # steps in a row with a non-finite loss or gradient (skipped) that stop a seed
    eval_every: int = 0  # dev evaluation every this many optimizer steps (and at the end); 0 = after every epoch
    patience: int = 0  # early stopping: stop after this many dev evaluations without a better score; 0 = never
    search: bool = False  # run the task card's grid (its lr / epochs / batch_size lists) for the keys not set here
    compare_scratch: bool = False  # also run from_scratch with the same grid and seeds; report the difference
    baselines: bool = True  # majority class (mean) and TF-IDF + logistic regression (ridge) beside the results
    seed: int = 0  # the first seed (head initialisation, dropout, example order)
    max_train_examples: int = 0  # 0 = all; else a uniform random subsample of this size (data_seed)
    max_dev_examples: int = 0  # 0 = all; else a uniform random subsample of each dev set (data_seed)
    data_seed: int = 0  # seed of those subsamples: every training seed sees the same examples
    probe: bool = False  # linear probing: freeze the encoder, train a linear head on its pooled hidden state
    # the probe's solver: lbfgs = scikit-learn's logistic regression (ridge for regression) to its optimum on the
    # standardised features; adamw = the fine-tuning loop with probe_lr, epochs and early stopping
    probe_solver: Literal["lbfgs", "adamw"] = "lbfgs"
    from_scratch: bool = False  # the same architecture and tokenizer with random weights (the no-pretraining baseline)
    reuse_pooler: bool = True  # start from the checkpoint's pretrained BERT pooler when it has one; false = fresh
    # the sentence vector the head reads: cls = the [CLS] state through a pooler (causal: the last token); mean = the
    # mean of the real tokens' states, no pooler; model = the checkpoint's own sentence pooling (a sentence-
    # transformers import or a mean-pooled SimCSE: mean; otherwise cls)
    pooling: Literal["cls", "mean", "model"] = "cls"
    output_dir: str = ""  # results.json and best/ go here; "" = runs/finetune/<task> (glue: runs/finetune/glue)
    overwrite: bool = False  # allow an output_dir that already holds results
    data_root: str = ""  # GLUE folders and relative task files; "" = $LMSSL_DATA, else ../shared/data
    eval_batch_size: int = 64  # examples per forward pass in evaluation
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    device: str = "auto"  # cpu, cuda, ...; auto = cuda when available
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast in training and evaluation, weights fp32


GRID_KEYS = ("lr", "epochs", "batch_size")  # the keys a list turns into a grid (searched on dev)


@dataclass
class Grid:
    """The grid part of the overrides: lists given for GRID_KEYS, and the keys given one value."""
    lists: dict[str, list] = dataclasses.field(default_factory=dict)  # key -> its values, in the order given
    fixed: tuple[str, ...] = ()  # GRID_KEYS set to a single value: a task card's list does not replace them

    def cells(self, cfg: FinetuneConfig, card_grid: dict[str, list]) -> list[FinetuneConfig]:
        """Every combination (lr varies slowest): the lists given, else with finetune.search the card's lists for
        the keys not fixed, else cfg's single value."""
        axes = {}
        for key in GRID_KEYS:
            if key in self.lists:
                axes[key] = self.lists[key]
            elif cfg.search and key in card_grid and key not in self.fixed:
                axes[key] = card_grid[key]
            else:
                axes[key] = [getattr(cfg, key)]
        return [dataclasses.replace(cfg, **dict(zip(axes, values))) for values in itertools.product(*axes.values())]


def finetune_config(overrides: list[str], source: str = "overrides") -> FinetuneConfig:
    """`finetune.key=value` overrides -> FinetuneConfig (one value per key); unknown keys suggest the nearest one."""
    cfg, grid = finetune_grid(overrides, source)
    if grid.lists:
        key = next(iter(grid.lists))
        raise ConfigError(f"{source}: key 'finetune.{key}': expected one value here, got a list")
    return cfg


def finetune_grid(overrides: list[str], source: str = "overrides") -> tuple[FinetuneConfig, Grid]:
    """`lmssl finetune`'s overrides -> (FinetuneConfig with the first value of each list, Grid); every value of a
    list is checked as a single one would be."""
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
    lists = {k: v for k, v in raw.items() if isinstance(v, list)}
    scalars = {**raw, **{k: v[0] for k, v in lists.items() if v}}
    for key, values in lists.items():
        if key not in GRID_KEYS:
            raise ConfigError(f"{source}: key 'finetune.{key}': expected one value; lists make a grid only for "
                              f"{', '.join(f'finetune.{k}' for k in GRID_KEYS)}")
        if not values or len(set(map(str, values))) != len(values):
            raise ConfigError(f"{source}: key 'finetune.{key}': a grid needs distinct values, got {values}")
        lists[key] = [getattr(check(build_section(FinetuneConfig, {**scalars, key: v}, "finetune", source), source),
                              key) for v in values]
    cfg = check(build_section(FinetuneConfig, scalars, "finetune", source), source)
    if cfg.probe and cfg.from_scratch:
        print("note: probe with from_scratch probes a random encoder (a baseline for probing)", file=sys.stderr)
    return cfg, Grid(lists, tuple(k for k in GRID_KEYS if k in raw and k not in lists))


def check(cfg: FinetuneConfig, source: str) -> FinetuneConfig:
    """Range checks of one setting (also applied to each value of a grid list and of a task card's grid)."""
    found = non_finite(cfg)
    if found is not None:  # before the range rules: nan > 0 is merely False
        raise ConfigError(f"{source}: key 'finetune.{found[0]}': must be a finite number, got {found[1]}")
    for key in ("epochs", "batch_size", "seeds", "eval_batch_size", "max_skipped_steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{source}: key 'finetune.{key}': must be positive")
    for key in ("seed", "max_train_examples", "max_dev_examples", "data_seed", "num_threads", "min_steps",
                "eval_every", "patience"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{source}: key 'finetune.{key}': must be >= 0")
    if cfg.seed + cfg.seeds - 1 > MAX_SEED:  # seeds seed .. seed + seeds - 1 all go to numpy's global seed
        raise ConfigError(f"{source}: key 'finetune.seed': seed + seeds - 1 must be at most {MAX_SEED} (2**32 - 1), "
                          f"got {cfg.seed + cfg.seeds - 1}")
    if not (cfg.lr > 0 and cfg.probe_lr > 0):
        raise ConfigError(f"{source}: key 'finetune.{'lr' if cfg.lr <= 0 else 'probe_lr'}': must be positive")
    if not 0.0 < cfg.layer_lr_decay <= 1.0:
        raise ConfigError(f"{source}: key 'finetune.layer_lr_decay': must be in (0, 1] (1: no decay; ELECTRA: 0.8)")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise ConfigError(f"{source}: key 'finetune.warmup_ratio': must be in [0, 1)")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"{source}: key 'finetune.dropout': must be in [0, 1)")
    if cfg.max_length < 8:
        raise ConfigError(f"{source}: key 'finetune.max_length': must be at least 8")
    if cfg.compare_scratch and cfg.from_scratch:
        raise ConfigError(f"{source}: key 'finetune.compare_scratch': runs both pretrained and from scratch; "
                          f"leave finetune.from_scratch=false")
    return cfg
