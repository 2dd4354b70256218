"""Hugging Face model directories as lmssl objectives: `lmssl import`, and what lmssl.checkpoint.model_dir reads when a
path given as a checkpoint (`model.init_from`, `lmssl eval ...`) is a transformers directory.

The objective a directory becomes is the one whose adapter recognises it (lmssl.interop.hf.adapter; the
fallback adapter, SimCSE's encoder, last); weights missing from the files stop the import (never a silently
random layer), weights the objective does not use are listed on stderr.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

from lmssl.checkpoint.format import seal, write_model_files
from lmssl.config import Config, config_from_dict
from lmssl.data.tokenizer import TextTokenizer
from lmssl.errors import ConfigError
from lmssl.interop.hf.adapter import HFAdapter, ImportPart
from lmssl.interop.hf.source import HFSource, read_json, read_sources
from lmssl.objectives import OBJECTIVES, Objective, build_objective
from lmssl.storage.atomic import atomic_directory, check_output_target
from lmssl.storage.ownership import check_model_output

IGNORED_HF_BUFFERS = ("embeddings.position_ids", ".attn.bias", ".attn.masked_bias")  # buffers, not weights
# tied copies some exporters write although they equal the word embeddings / the prediction bias
TIED_COPIES = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "generator_lm_head.weight",
               "lm_head.weight")


def read_tokenizer(directory: Path) -> TextTokenizer:
    """tokenizer.json, else the slow tokenizer's vocabulary files, as a TextTokenizer; truncation and padding
    that a tokenizer.json may carry are removed (our pipelines window and pad themselves)."""
    from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer

    from tokenizers import Tokenizer

    if (directory / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    elif (directory / "vocab.txt").is_file():
        config = directory / "tokenizer_config.json"
        lowercase = read_json(config).get("do_lower_case", True) if config.is_file() else True
        tok = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=lowercase)._tokenizer
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        tok = ByteLevelBPETokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))._tokenizer
    else:
        raise ConfigError(f"{directory}: no tokenizer (tokenizer.json, vocab.txt, or vocab.json + merges.txt)")
    tok.no_truncation()
    tok.no_padding()
    read = TextTokenizer(tok, directory / "tokenizer.json")
    if read.roles.get("eos") is not None and tok.to_str() == read.causal_template().tokenizer.to_str():
        tok.post_processor = None  # the <|endoftext|> template lmssl's causal export adds: the import is as before
    return read


def recognise(path: Path, sources: dict[str, HFSource]) -> tuple[HFAdapter, dict[str, Any]]:
    """The adapter that imports `sources` and the objective section it gives; ConfigError when none does."""
    specs = sorted(OBJECTIVES.values(), key=lambda s: s.hf is not None and s.hf.fallback)
    for spec in specs:
        found = spec.hf.recognise(sources) if spec.hf is not None else None
        if found is not None:
            return spec.hf, found
    kinds = sorted({s.model_type for s in sources.values()})
    raise ConfigError(f"{path}: no lmssl objective imports this directory (model_type {', '.join(kinds)}, parts "
                      f"{', '.join(repr(k) for k in sources)}); objectives import: "
                      + "; ".join(f"{s.name}: {', '.join(s.hf.imports)}" for s in specs if s.hf is not None))


def import_config(path: str | Path, sources: dict[str, HFSource] | None = None) -> Config:
    """The lmssl config of a HF model directory: trunk from config.json, objective from its adapter."""
    path = Path(path)
    sources = sources or read_sources(path)
    adapter, objective = recognise(path, sources)
    model = adapter.trunk_source(sources).model
    data = {"tokenizer": str(path), "tokenizer_type": "bpe" if model["preset"] == "gpt2" else "wordpiece",
            "seq_len": min(model["max_positions"], 512), **adapter.import_data}
    return config_from_dict({"model": model, "objective": objective, "data": data}, f"{path} (Hugging Face import)")


def load_parts(objective: torch.nn.Module, parts: list[ImportPart]) -> None:
    """Set our parameters from each part's source by its rules. Missing tensors or shapes that differ stop the
    import (a partly random model is never returned); tensors left unused are listed on stderr."""
    state = objective.state_dict()
    for part in parts:
        src, rules = part.source, part.rules
        missing = sorted({k for r in rules for k in r.theirs if not src.has(k)})
        if missing:
            more = f" (+{len(missing) - 6} more)" if len(missing) > 6 else ""
            raise ConfigError(f"{src.directory}: {part.what} needs weights the file does not have: "
                              f"{', '.join(missing[:6])}{more}")
        for rule in rules:
            value = rule.to_ours(src.tensors)
            if tuple(value.shape) != tuple(state[rule.ours].shape):
                raise ConfigError(f"{src.directory}: {', '.join(rule.theirs)} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(state[rule.ours].shape)} for {rule.ours}")
            state[rule.ours].copy_(value)
        used = {k for r in rules for k in r.theirs}
        unused = sorted(k for k in src.names if k not in used and not k.endswith(IGNORED_HF_BUFFERS)
                        and not (src.config.get("tie_word_embeddings", True) and k in TIED_COPIES))
        if unused:
            print(f"note: {src.directory}: weights not used by the imported lmssl model: {', '.join(unused[:6])}"
                  + (f" (+{len(unused) - 6} more)" if len(unused) > 6 else ""), file=sys.stderr)


def import_tokenizer(path: Path, cfg: Config, sources: dict[str, HFSource]) -> TextTokenizer:
    """The tokenizer beside the trunk's weights (an ELECTRA export's parts share it)."""
    first = recognise(path, sources)[0].trunk_source(sources)
    tokenizer = read_tokenizer(first.directory)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"{first.directory}: the tokenizer has {tokenizer.vocab_size} tokens but vocab_size is "
                          f"{cfg.model.vocab_size}")
    return tokenizer


def import_objective(path: Path, cfg: Config, tokenizer: TextTokenizer, sources: dict[str, HFSource]) -> Objective:
    """The objective of a HF model directory, with its weights."""
    adapter, _ = recognise(path, sources)
    objective = build_objective(cfg, tokenizer)
    with torch.no_grad():
        load_parts(objective, adapter.import_parts(cfg, sources))
    for note in adapter.import_notes(cfg, sources):
        print(f"note: {note}", file=sys.stderr)
    return objective


def import_model(path: str | Path, out_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """`lmssl import`: a HF model directory as an lmssl checkpoint directory (model.safetensors, config.yaml,
    tokenizer.json), written atomically."""
    out_dir = Path(out_dir)
    check_output_target(out_dir, Path(path), "OUT_DIR")
    check_model_output(out_dir, overwrite)
    sources = read_sources(Path(path))
    cfg = import_config(path, sources)
    tokenizer = import_tokenizer(Path(path), cfg, sources)
    objective = import_objective(Path(path), cfg, tokenizer, sources)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=str(out_dir / "tokenizer.json")))
    with atomic_directory(out_dir) as tmp:
        write_model_files(tmp, objective, cfg, tokenizer)
        seal(tmp)
    return {"out": str(out_dir), "objective": cfg.objective.name,
            "parameters": sum(p.numel() for p in objective.parameters())}
