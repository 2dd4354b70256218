"""The resolve step: what a parsed config needs from the world before a run can start. `model.init_from` fills
the model keys the user left out (from a checkpoint's config.yaml or a Hugging Face config.json), and the
tokenizer (the init_from source's, else data.tokenizer, trained once if missing) sets model.vocab_size."""
from __future__ import annotations

import dataclasses
import os

from lmssl.config import INIT_FREE_FIELDS, Config, ModelConfig, RawConfig, build_config, read_config
from lmssl.data import load_tokenizer
from lmssl.data.tokenizer import TextTokenizer
from lmssl.errors import ConfigError
from lmssl.pretrained import init_model_fields, init_tokenizer

SHAPE_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in INIT_FREE_FIELDS)


def with_init_from(raw: RawConfig) -> RawConfig:
    """With `model.init_from` set, the model keys not written default to the source's (written keys win)."""
    model = raw.model_keys()
    if not model.get("init_from") or all(k in model for k in SHAPE_FIELDS):
        return raw
    source = init_model_fields(str(model["init_from"]))
    filled = {**{k: source[k] for k in ("preset", *SHAPE_FIELDS)}, **model}
    return dataclasses.replace(raw, sections={**raw.sections, "model": filled})


def load_run_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """`lmssl train`'s config: the YAML and overrides (lmssl.config), completed from `model.init_from`."""
    return build_config(with_init_from(read_config(path, overrides)))


def run_tokenizer(cfg: Config) -> TextTokenizer:
    """The tokenizer a run trains with: model.init_from's (the token ids its encoder knows), else data.tokenizer."""
    return init_tokenizer(cfg) or load_tokenizer(cfg)


def with_vocab(cfg: Config, vocab_size: int) -> Config:
    """model.vocab_size = the tokenizer's when 0; a smaller one than the tokenizer's is an error."""
    if cfg.model.vocab_size == 0:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))
    if cfg.model.vocab_size < vocab_size:
        raise ConfigError(f"key 'model.vocab_size': {cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{vocab_size}")
    return cfg


def resolved_config(sections: dict, source: str = "config") -> Config:
    """The Config of raw sections (as a YAML file holds them), completed from `model.init_from`."""
    return build_config(with_init_from(RawConfig({k: dict(v) for k, v in sections.items()}, source)))
