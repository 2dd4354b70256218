"""Cross-field validation of a typed Config: every rule names its key and what would be valid."""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from lmssl.config.sections import Config
from lmssl.errors import ConfigError

PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
PLAIN_NAME_RULE = "a plain name (letters, digits and _ . + -, not starting with . or -)"


def is_plain_name(name: str) -> bool:
    """A name that becomes one directory under lmssl's own (tokenizers/NAME/, OUT/TASK/): never `..` or a path."""
    return bool(PLAIN_NAME.fullmatch(name)) and name not in (".", "..")


def _check(cond: bool, source: str, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{source}: key '{key}': {message}")


# numpy's global seed (lmssl.engine.rng) takes 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1


def non_finite(section: object) -> tuple[str, float] | None:
    """The first float field of a config dataclass that is inf or NaN (YAML's .inf / .nan), as (field, value)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            return f.name, value
    return None


def validate(cfg: Config, source: str) -> None:
    m, d, t, e = cfg.model, cfg.data, cfg.train, cfg.eval
    for name in ("model", "objective", "data", "train", "eval"):  # before the range rules: nan > 0 is merely False
        found = non_finite(getattr(cfg, name))
        if found is not None:
            _check(False, source, f"{name}.{found[0]}", f"must be a finite number, got {found[1]}")
    for key in ("hidden_size", "num_layers", "num_heads", "ffn_size", "max_positions"):
        _check(getattr(m, key) > 0, source, f"model.{key}", "must be positive")
    _check(m.init_std > 0, source, "model.init_std", "must be positive")
    _check(m.hidden_size % m.num_heads == 0, source, "model.num_heads",
           f"must divide model.hidden_size={m.hidden_size}")
    _check(m.position != "rope" or (m.hidden_size // m.num_heads) % 2 == 0, source, "model.position",
           "rope needs an even head size")
    for key in ("vocab_size", "embedding_size", "type_vocab_size"):
        _check(getattr(m, key) >= 0, source, f"model.{key}", "must be >= 0")
    for key in ("dropout", "attention_dropout"):
        _check(0.0 <= getattr(m, key) < 1.0, source, f"model.{key}", "must be in [0, 1)")
    _check(d.seq_len >= 4, source, "data.seq_len", "must be at least 4")
    _check(d.seq_len <= m.max_positions or m.position == "rope", source, "data.seq_len",
           f"{d.seq_len} exceeds model.max_positions={m.max_positions}")
    given = Path(d.tokenizer).expanduser()
    a_path = d.tokenizer.endswith(".json") or "/" in d.tokenizer or given.is_file() or \
        (given / "tokenizer.json").is_file()
    _check(a_path or is_plain_name(d.tokenizer), source, "data.tokenizer",
           f"{d.tokenizer!r} is neither a tokenizer.json path nor {PLAIN_NAME_RULE} for tokenizers/NAME/")
    _check(d.tokenizer_vocab_size >= 100, source, "data.tokenizer_vocab_size", "must be at least 100")
    _check(bool(d.train), source, "data.train", "a training corpus is required")
    _check(0.0 < d.valid_fraction < 1.0, source, "data.valid_fraction", "must be in (0, 1)")
    for key in ("max_steps", "batch_size", "grad_accum", "log_every", "max_skipped_steps"):
        _check(getattr(t, key) > 0, source, f"train.{key}", "must be positive")
    for key in ("warmup_steps", "save_every", "keep_checkpoints", "num_threads", "seed"):
        _check(getattr(t, key) >= 0, source, f"train.{key}", "must be >= 0")
    _check(t.seed <= MAX_SEED, source, "train.seed", f"must be at most {MAX_SEED} (2**32 - 1), got {t.seed}")
    _check(t.max_flops >= 0, source, "train.max_flops", "must be >= 0 (0 = train.max_steps sets the length)")
    _check(t.max_minutes >= 0, source, "train.max_minutes", "must be >= 0 (0 = train.max_steps sets the length)")
    _check(not (t.max_minutes and t.max_flops), source, "train.max_minutes",
           "and train.max_flops both set the run's length: set one of them to 0")
    _check(t.lr > 0, source, "train.lr", "must be positive")
    _check(t.muon_lr > 0, source, "train.muon_lr", "must be positive")
    _check(0.0 <= t.muon_momentum < 1.0, source, "train.muon_momentum", "must be in [0, 1)")
    _check(0.0 <= t.decay_fraction <= 1.0, source, "train.decay_fraction", "must be in [0, 1]")
    _check(0.0 <= t.final_lr_ratio <= 1.0, source, "train.final_lr_ratio", "must be in [0, 1]")
    _check(t.clip_grad >= 0, source, "train.clip_grad", "must be >= 0 (0 = no clipping)")
    _check(bool(t.output_dir), source, "train.output_dir", "must not be empty")
    _check(not (t.resume and t.overwrite), source, "train.overwrite", "and train.resume=true contradict each other: "
           "continue the run (resume) or replace it (overwrite)")
    _check(0 <= t.zero_stage <= 3, source, "train.zero_stage", f"must be 0, 1, 2 or 3, got {t.zero_stage}")
    if t.engine == "torch":
        for key, value, default in (("zero_stage", t.zero_stage, 0), ("offload_optimizer", t.offload_optimizer, False),
                                    ("offload_params", t.offload_params, False), ("deepspeed", t.deepspeed, "")):
            _check(value == default, source, f"train.{key}", "is a DeepSpeed option; set train.engine=deepspeed")
        _check(t.precision != "fp16", source, "train.precision",
               "fp16 needs loss scaling, which the torch engine does not do: use bf16, or train.engine=deepspeed")
    else:
        _check(t.optimizer == "adamw", source, "train.optimizer",
               f"{t.optimizer} runs with train.engine=torch only; DeepSpeed steps lmssl's AdamW (set "
               f"train.optimizer=adamw)")
        _check(not t.offload_optimizer or t.zero_stage >= 1, source, "train.offload_optimizer",
               f"needs train.zero_stage >= 1 (got {t.zero_stage})")
        _check(not t.offload_params or t.zero_stage == 3, source, "train.offload_params",
               f"needs train.zero_stage=3 (got {t.zero_stage})")
        _check(t.precision == "fp32" or t.zero_stage >= 1, source, "train.zero_stage",
               f"train.precision={t.precision} with deepspeed needs zero_stage >= 1 (its fp32 master weights are then "
               f"what the consolidated checkpoint holds); zero_stage=1 costs nothing on one GPU")
    _check(e.every >= 0, source, "eval.every", "must be >= 0 (0 = only at the end)")
    _check(e.max_batches >= 0, source, "eval.max_batches", "must be >= 0 (0 = the whole split)")
    _check(e.batch_size > 0, source, "eval.batch_size", "must be positive")
    _check(e.likelihood_max_words >= 0, source, "eval.likelihood_max_words", "must be >= 0 (0 = off)")
    _check(e.probe_examples > 0, source, "eval.probe_examples", "must be positive")
    cfg.objective.check(cfg, lambda cond, key, message: _check(cond, source, key, message))
