"""A Hugging Face model directory read for import: config.json as lmssl model fields, the tensor names (the
tensors themselves on first use), and the base model's key prefix."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lmssl.errors import ConfigError

ACTIVATION_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                      "gelu_fast": "gelu_tanh"}
BASE_PREFIX = {"bert": "bert.", "electra": "electra.", "gpt2": "transformer."}  # base model inside *For* heads


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it as JSON ({e})") from None


def model_fields(hf: dict, where: Path) -> dict[str, Any]:
    """ModelConfig fields equivalent to a HF config.json (bert, electra or gpt2); ConfigError otherwise."""
    mt = hf.get("model_type")

    def activation(key: str, default: str) -> str:
        name = hf.get(key, default)
        if name not in ACTIVATION_FROM_HF:
            raise ConfigError(f"{where}: {key}={name!r} is not supported; lmssl has {', '.join(ACTIVATION_FROM_HF)}")
        return ACTIVATION_FROM_HF[name]

    if mt == "gpt2":
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if hf.get(flag):
                raise ConfigError(f"{where}: {flag}=true is not supported by lmssl's attention")
        if not hf.get("scale_attn_weights", True):
            raise ConfigError(f"{where}: scale_attn_weights=false is not supported by lmssl's attention")
        hidden = hf.get("n_embd", 768)
        return dict(preset="gpt2", vocab_size=hf.get("vocab_size", 50257), hidden_size=hidden,
                    num_layers=hf.get("n_layer", 12), num_heads=hf.get("n_head", 12),
                    ffn_size=hf.get("n_inner") or 4 * hidden, max_positions=hf.get("n_positions", 1024),
                    embedding_size=0, type_vocab_size=0, norm="pre", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                    position="learned", activation=activation("activation_function", "gelu_new"),
                    dropout=hf.get("resid_pdrop", 0.1), attention_dropout=hf.get("attn_pdrop", 0.1),
                    tie_embeddings=hf.get("tie_word_embeddings", True), init_std=hf.get("initializer_range", 0.02))
    if mt in ("bert", "electra"):
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"{where}: position_embedding_type={hf['position_embedding_type']!r} is not supported; "
                              f"lmssl imports absolute position embeddings")
        hidden = hf.get("hidden_size", 768 if mt == "bert" else 256)
        embedding = hf.get("embedding_size", hidden) if mt == "electra" else hidden
        return dict(preset="bert", vocab_size=hf.get("vocab_size", 30522), hidden_size=hidden,
                    num_layers=hf.get("num_hidden_layers", 12), num_heads=hf.get("num_attention_heads", 12),
                    ffn_size=hf.get("intermediate_size", 4 * hidden),
                    max_positions=hf.get("max_position_embeddings", 512),
                    embedding_size=0 if embedding == hidden else embedding,
                    type_vocab_size=hf.get("type_vocab_size", 2),
                    norm="post", norm_eps=hf.get("layer_norm_eps", 1e-12), position="learned",
                    activation=activation("hidden_act", "gelu"), dropout=hf.get("hidden_dropout_prob", 0.1),
                    attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                    tie_embeddings=hf.get("tie_word_embeddings", True), init_std=hf.get("initializer_range", 0.02))
    raise ConfigError(f"{where}: model_type {mt!r} is not supported; lmssl imports bert, electra and gpt2 models")


def weight_names(directory: Path) -> set[str]:
    """The tensor names of a weights directory, without reading the tensors when they are safetensors."""
    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").is_file():
        with safe_open(str(directory / "model.safetensors"), "pt") as f:
            return set(f.keys())
    if index.is_file():
        return set(read_json(index)["weight_map"])
    return set(read_weights(directory))


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors (possibly sharded) or pytorch_model.bin, as float32 CPU tensors."""
    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").is_file():
        tensors = load_file(str(directory / "model.safetensors"))
    elif index.is_file():
        tensors = {}
        for shard in sorted(set(read_json(index)["weight_map"].values())):
            tensors.update(load_file(str(directory / shard)))
    elif (directory / "pytorch_model.bin").is_file():
        tensors = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ConfigError(f"{directory}: no weights (model.safetensors or pytorch_model.bin)")
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


@dataclass
class HFSource:
    """A HF model directory read for import; its tensors are read on first use."""
    directory: Path
    config: dict  # config.json
    model: dict[str, Any]  # ModelConfig fields
    names: set[str]  # tensor names in the weights file(s)
    prefix: str  # the base model's key prefix in `names` ("" for a bare BertModel / GPT2Model)
    _tensors: dict[str, torch.Tensor] | None = None

    @classmethod
    def read(cls, directory: Path) -> "HFSource":
        config = read_json(directory / "config.json")
        model = model_fields(config, directory / "config.json")
        names = weight_names(directory)
        prefix = BASE_PREFIX[config["model_type"]]
        return cls(directory, config, model, names, prefix if any(k.startswith(prefix) for k in names) else "")

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            self._tensors = read_weights(self.directory)
        return self._tensors

    def has(self, key: str) -> bool:
        return key in self.names


def part_dirs(path: Path) -> list[Path]:
    """The parts of a multi-part export (ELECTRA writes discriminator/ and generator/): a directory without
    config.json whose subdirectories, two or more, each hold one. [] for anything else."""
    if (path / "config.json").is_file() or not path.is_dir():
        return []
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    return subdirs if len(subdirs) >= 2 and all((d / "config.json").is_file() for d in subdirs) else []


def is_hf_dir(path: Path) -> bool:
    """A `transformers` model directory (config.json, no lmssl config.yaml), or a multi-part export of them."""
    path = Path(path)
    if (path / "config.yaml").is_file():
        return False
    return (path / "config.json").is_file() or bool(part_dirs(path))


def read_sources(path: Path) -> dict[str, HFSource]:
    """{"": the model} for one directory, {part name: model} for a multi-part export."""
    parts = part_dirs(path)
    if parts:
        return {d.name: HFSource.read(d) for d in parts}
    return {"": HFSource.read(path)}
