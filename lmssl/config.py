"""Dataclass configs: YAML files plus `key=value` overrides, validated strictly before any work.

Every field carries a one-line comment. Unknown keys, wrong types and bad values raise
`ConfigError` naming the key (and the nearest valid one); the CLI prints it without a traceback.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A user-facing configuration problem; the message says which key/file and what is valid."""


@dataclass
class ModelConfig:
    preset: Literal["bert", "gpt2"] = "bert"  # architecture family; sets the defaults of the fields below (see MODEL_PRESETS)
    vocab_size: int = 0  # 0 = the tokenizer's vocabulary size
    hidden_size: int = 256  # width of the residual stream
    num_layers: int = 4  # transformer blocks
    num_heads: int = 4  # attention heads; must divide hidden_size
    ffn_size: int = 1024  # inner width of the feed-forward block
    max_positions: int = 512  # rows of the learned position table (upper bound on sequence length)
    embedding_size: int = 0  # factorised embedding width (ELECTRA); 0 = hidden_size
    type_vocab_size: int = 2  # token-type (segment) embeddings; 0 = none
    norm: Literal["post", "pre"] = "post"  # LayerNorm placement: post-LN as BERT, pre-LN (+ final LN) as GPT-2
    norm_eps: float = 1e-12  # LayerNorm epsilon (BERT 1e-12, GPT-2 1e-5)
    position: Literal["learned", "rope"] = "learned"  # absolute learned positions, or rotary embeddings
    rope_theta: float = 10000.0  # RoPE base frequency
    activation: Literal["gelu", "gelu_tanh"] = "gelu"  # exact GELU (BERT) or tanh approximation (GPT-2)
    dropout: float = 0.1  # dropout on embeddings and residual branches
    attention_dropout: float = 0.1  # dropout on attention probabilities
    tie_embeddings: bool = True  # output projection shares the input embedding matrix
    init_std: float = 0.02  # std of the normal initialisation
    attention_backend: Literal["auto", "sdpa", "flash"] = "auto"  # attention kernel: sdpa (PyTorch, CPU/GPU), flash (flash-attn varlen: CUDA, fp16/bf16; pip install -e .[gpu]), auto = flash when CUDA and flash_attn are there, else sdpa
    init_from: str = ""  # lmssl checkpoint, run directory or Hugging Face model directory whose encoder initialises the trunk (its tokenizer replaces data.tokenizer; unset model keys default to its shape); "" = random init


# ModelConfig fields that may differ from the model.init_from source: regularisation and execution choices,
# and the output head's tying; every other field shapes or defines the trunk and must match the source.
INIT_FREE_FIELDS = ("preset", "dropout", "attention_dropout", "init_std", "attention_backend", "tie_embeddings",
                    "init_from")

# Architecture families. Values here are defaults: keys written in the config win.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "bert": dict(norm="post", norm_eps=1e-12, activation="gelu", type_vocab_size=2, position="learned"),
    "gpt2": dict(norm="pre", norm_eps=1e-5, activation="gelu_tanh", type_vocab_size=0, position="learned"),
}


@dataclass
class ObjectiveConfig:
    name: str = "mlm"  # registered objective: see lmssl.objectives.OBJECTIVES


@dataclass
class DataConfig:
    root: str = ""  # data root for relative paths; "" = $LMSSL_DATA, else ../shared/data beside the repo
    train: str = "wikitext-2/train.txt"  # training corpus (text, .jsonl or .parquet), relative to the data root
    valid: str = "wikitext-2/valid.txt"  # validation corpus; "" = none
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"  # corpus format; auto = from the file suffix
    doc_split: Literal["auto", "blank_line", "line", "wikitext"] = "auto"  # how plain text splits into documents
    text_field: str = "text"  # column holding the text in JSONL/Parquet
    tokenizer: str = "wikitext2-wordpiece"  # name under tokenizers/ or path to a tokenizer.json
    tokenizer_type: Literal["wordpiece", "bpe", "unigram"] = "wordpiece"  # recipe if the tokenizer must be trained
    tokenizer_vocab_size: int = 8192  # vocabulary size if the tokenizer must be trained
    seq_len: int = 128  # tokens per training sequence
    document_mask: bool = False  # stop attention at document boundaries inside packed sequences
    streaming: bool = False  # read and tokenize the corpus on the fly (corpora larger than memory)
    shuffle_buffer: int = 10000  # sequences in the shuffle buffer when streaming
    cache_dir: str = ""  # tokenization cache; "" = $LMSSL_CACHE, else ~/.cache/lmssl


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"  # metrics, TensorBoard logs and checkpoints go here
    max_steps: int = 300  # optimizer steps
    batch_size: int = 32  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01  # AdamW decay (never applied to norms, biases, embeddings)
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.98  # AdamW beta2
    adam_eps: float = 1e-6  # AdamW epsilon
    warmup_steps: int = 30  # linear warmup steps
    schedule: Literal["linear", "cosine", "constant"] = "linear"  # decay after warmup
    final_lr_ratio: float = 0.0  # learning rate at max_steps as a fraction of lr
    clip_grad: float = 1.0  # max global gradient norm; 0 = no clipping
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # torch engine: bf16 autocast (fp32 weights); deepspeed: its bf16/fp16 mixed precision (fp16 = deepspeed only)
    seed: int = 0  # seeds python, numpy, torch and the data order
    log_every: int = 10  # steps between metrics.jsonl lines
    save_every: int = 100  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # most recent checkpoints kept (0 = all)
    resume: bool = False  # continue from the latest checkpoint in output_dir
    tensorboard: bool = True  # also write TensorBoard event files
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    engine: Literal["torch", "deepspeed"] = "torch"  # training engine: plain PyTorch (DDP under torchrun) or DeepSpeed
    zero_stage: int = 0  # deepspeed: ZeRO stage 0-3 (optimizer states / + gradients / + parameters partitioned)
    offload_optimizer: bool = False  # deepspeed: keep optimizer states in CPU memory (ZeRO stage >= 1)
    offload_params: bool = False  # deepspeed: keep parameters in CPU memory (ZeRO stage 3)
    deepspeed: str = ""  # deepspeed: JSON file whose keys are added to the generated config (a contradiction is an error)


@dataclass
class EvalConfig:
    every: int = 0  # evaluate on data.valid every N steps; 0 = only at the end
    max_batches: int = 0  # validation batches per evaluation; 0 = the whole split
    batch_size: int = 32  # sequences per validation batch
    likelihood_max_words: int = 500  # PPL (causal) / pseudo-PPL (masked) on the first N words of data.valid; 0 = off


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)  # the trunk
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # pretraining objective
    data: DataConfig = field(default_factory=DataConfig)  # corpora, tokenizer, packing
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation and checkpoints
    eval: EvalConfig = field(default_factory=EvalConfig)  # validation during and after training

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "objective": ObjectiveConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------

def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: invalid value {value!r}; choose one of {', '.join(map(repr, choices))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def build_section(cls: type, raw: dict[str, Any], prefix: str, source: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"{source}: unknown key '{prefix}.{key}'" + _suggest(f"{prefix}.{key}", [f"{prefix}.{n}" for n in names]))
        kwargs[key] = _coerce(value, hints[key], f"{source}: key '{prefix}.{key}'")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.max_steps=100")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override '{text}': keys have the form section.field, e.g. train.max_steps")
    return parts, (yaml.safe_load(value) if value.strip() else "")


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """Read YAML, apply `section.key=value` overrides, fill presets and validate. Raises ConfigError."""
    raw: dict[str, dict[str, Any]] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(SECTIONS)})")
        for section, body in loaded.items():
            if section not in SECTIONS:
                raise ConfigError(f"{path}: unknown section '{section}'" + _suggest(section, list(SECTIONS)))
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: section '{section}' must be a mapping of keys")
            raw[section] = dict(body)
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"override '{text}': unknown section '{section}'" + _suggest(section, list(SECTIONS)))
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw, source if not overrides else f"{source} + overrides")


def config_from_dict(raw: dict[str, dict[str, Any]], source: str = "config") -> Config:
    from lmssl.objectives import objective_config_class  # late: objectives import torch

    model_raw = dict(raw.get("model", {}))
    shape = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in INIT_FREE_FIELDS]
    if model_raw.get("init_from") and not all(k in model_raw for k in shape):
        from lmssl.checkpoint import init_model_fields  # late: checkpoint imports this module

        source = init_model_fields(str(model_raw["init_from"]))
        model_raw = {**{k: source[k] for k in ("preset", *shape)}, **model_raw}  # keys written in the config win
    preset = model_raw.get("preset", ModelConfig.preset)
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"{source}: key 'model.preset': invalid value {preset!r}; choose one of {', '.join(map(repr, MODEL_PRESETS))}")
    model_raw = {**MODEL_PRESETS[preset], **model_raw}
    objective_raw = dict(raw.get("objective", {}))
    try:
        objective_cls = objective_config_class(objective_raw.get("name", ObjectiveConfig.name))
    except KeyError as e:
        raise ConfigError(f"{source}: key 'objective.name': {e.args[0]}") from None
    cfg = Config(
        model=build_section(ModelConfig, model_raw, "model", source),
        objective=build_section(objective_cls, objective_raw, "objective", source),
        data=build_section(DataConfig, raw.get("data", {}), "data", source),
        train=build_section(TrainConfig, raw.get("train", {}), "train", source),
        eval=build_section(EvalConfig, raw.get("eval", {}), "eval", source),
    )
    validate(cfg, source)
    return cfg


def _check(cond: bool, source: str, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{source}: key '{key}': {message}")


def validate(cfg: Config, source: str) -> None:
    m, d, t, e = cfg.model, cfg.data, cfg.train, cfg.eval
    for key in ("hidden_size", "num_layers", "num_heads", "ffn_size", "max_positions"):
        _check(getattr(m, key) > 0, source, f"model.{key}", "must be positive")
    _check(m.hidden_size % m.num_heads == 0, source, "model.num_heads", f"must divide model.hidden_size={m.hidden_size}")
    _check(m.position != "rope" or (m.hidden_size // m.num_heads) % 2 == 0, source, "model.position", "rope needs an even head size")
    for key in ("vocab_size", "embedding_size", "type_vocab_size"):
        _check(getattr(m, key) >= 0, source, f"model.{key}", "must be >= 0")
    for key in ("dropout", "attention_dropout"):
        _check(0.0 <= getattr(m, key) < 1.0, source, f"model.{key}", "must be in [0, 1)")
    _check(d.seq_len >= 4, source, "data.seq_len", "must be at least 4")
    _check(d.seq_len <= m.max_positions or m.position == "rope", source, "data.seq_len",
           f"{d.seq_len} exceeds model.max_positions={m.max_positions}")
    _check(d.tokenizer_vocab_size >= 100, source, "data.tokenizer_vocab_size", "must be at least 100")
    _check(bool(d.train), source, "data.train", "a training corpus is required")
    for key in ("max_steps", "batch_size", "grad_accum", "log_every"):
        _check(getattr(t, key) > 0, source, f"train.{key}", "must be positive")
    for key in ("warmup_steps", "save_every", "keep_checkpoints", "num_threads", "seed"):
        _check(getattr(t, key) >= 0, source, f"train.{key}", "must be >= 0")
    _check(t.lr > 0, source, "train.lr", "must be positive")
    _check(0.0 <= t.final_lr_ratio <= 1.0, source, "train.final_lr_ratio", "must be in [0, 1]")
    _check(t.clip_grad >= 0, source, "train.clip_grad", "must be >= 0 (0 = no clipping)")
    _check(bool(t.output_dir), source, "train.output_dir", "must not be empty")
    _check(0 <= t.zero_stage <= 3, source, "train.zero_stage", f"must be 0, 1, 2 or 3, got {t.zero_stage}")
    if t.engine == "torch":
        for key, value, default in (("zero_stage", t.zero_stage, 0), ("offload_optimizer", t.offload_optimizer, False),
                                    ("offload_params", t.offload_params, False), ("deepspeed", t.deepspeed, "")):
            _check(value == default, source, f"train.{key}", "is a DeepSpeed option; set train.engine=deepspeed")
        _check(t.precision != "fp16", source, "train.precision",
               "fp16 needs loss scaling, which the torch engine does not do: use bf16, or train.engine=deepspeed")
    else:
        _check(not t.offload_optimizer or t.zero_stage >= 1, source, "train.offload_optimizer",
               f"needs train.zero_stage >= 1 (got {t.zero_stage})")
        _check(not t.offload_params or t.zero_stage == 3, source, "train.offload_params",
               f"needs train.zero_stage=3 (got {t.zero_stage})")
        _check(t.precision == "fp32" or t.zero_stage >= 1, source, "train.zero_stage",
               f"train.precision={t.precision} with deepspeed needs zero_stage >= 1 (its fp32 master weights are then "
               f"what the consolidated checkpoint holds); zero_stage=1 costs nothing on one GPU")
    _check(e.every >= 0 and e.max_batches >= 0, source, "eval.every", "must be >= 0")
    _check(e.batch_size > 0, source, "eval.batch_size", "must be positive")
    _check(e.likelihood_max_words >= 0, source, "eval.likelihood_max_words", "must be >= 0 (0 = off)")
    check = getattr(cfg.objective, "check", None)
    if check is not None:
        check(cfg, lambda cond, key, message: _check(cond, source, key, message))


# ---------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------

def data_root(cfg: Config) -> Path:
    if cfg.data.root:
        return Path(cfg.data.root).expanduser()
    if os.environ.get("LMSSL_DATA"):
        return Path(os.environ["LMSSL_DATA"]).expanduser()
    return REPO_ROOT.parent / "shared" / "data"


def resolve_data_path(cfg: Config, value: str, key: str) -> Path:
    """A corpus path: absolute, relative to the working directory if it exists there, else to the data root."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        candidate = p
    else:
        candidate = data_root(cfg) / p
    if not candidate.exists():
        raise ConfigError(
            f"key '{key}': file not found: {value} (looked in the working directory and the data root "
            f"{data_root(cfg)}; set LMSSL_DATA or data.root)")
    return candidate


def cache_dir(cfg: Config) -> Path:
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir).expanduser()
    if os.environ.get("LMSSL_CACHE"):
        return Path(os.environ["LMSSL_CACHE"]).expanduser()
    return Path.home() / ".cache" / "lmssl"


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
