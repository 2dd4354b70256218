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
from lmssl.model.weights import UnsafeCheckpoint, load_plain_data

ACTIVATION_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                      "gelu_fast": "gelu_tanh"}
BASE_PREFIX = {"bert": "bert.", "electra": "electra.", "gpt2": "transformer.", "modernbert": "model.",
               "llama": "model."}  # the base model inside *For* heads


def read_json(path: Path, expected: type = dict):
    """A JSON file of a model directory: an object of settings (config.json, indexes), or `expected` (list: the
    sentence-transformers modules.json)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(raw, expected):
        what = "object of settings" if expected is dict else "list"
        raise ConfigError(f"{path}: expected a JSON {what}, found a JSON {type(raw).__name__}")
    return raw


def weight_map(index: Path) -> dict[str, str]:
    """A sharded safetensors index's tensor name -> shard file."""
    found = read_json(index).get("weight_map")
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        raise ConfigError(f"{index}: no \"weight_map\" of tensor names to shard files")
    return found


def read_pickled_weights(path: Path) -> dict[str, torch.Tensor]:
    """pytorch_model.bin read as plain data (weights_only): a file whose pickle would import anything else is refused
    in one line (lmssl never runs code from a model file), as is one that holds no mapping of tensors."""
    try:
        tensors = load_plain_data(path)
    except UnsafeCheckpoint as e:
        raise ConfigError(f"{path}: refused: its pickle holds code or objects ({', '.join(e.imports[:4])}), not only "
                          f"tensors, and lmssl will not load it; use the model's model.safetensors (e.g. "
                          f"save_pretrained(..., safe_serialization=True) where you trust the file)") from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise ConfigError(f"{path}: holds a {type(tensors).__name__}, not a mapping of tensor names to tensors")
    return tensors


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
    if mt == "modernbert":
        return modernbert_fields(hf, where, activation("hidden_activation", "gelu"))
    if mt == "llama":
        return llama_fields(hf, where)
    raise ConfigError(f"{where}: model_type {mt!r} is not supported; lmssl imports bert, electra, gpt2, modernbert "
                      f"and llama models")


def one_bias(hf: dict, where: Path, keys: tuple[str, ...], default: bool) -> bool:
    """lmssl's one model.bias from a config's several bias switches, which must agree."""
    values = {key: bool(hf.get(key, default)) for key in keys}
    if len(set(values.values())) > 1:
        raise ConfigError(f"{where}: {', '.join(f'{k}={v}' for k, v in values.items())} differ; lmssl has one "
                          f"model.bias for every linear layer and norm")
    return next(iter(values.values()))


def rope_theta(hf: dict, where: Path, layer_type: str | None, legacy_key: str, default: float) -> float:
    params = hf.get("rope_parameters") or {}
    if layer_type is not None:
        params = params.get(layer_type) or {}
    if params.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise ConfigError(f"{where}: rope_type {params.get('rope_type')!r} (RoPE scaling) is not supported; lmssl has "
                          f"plain rotary embeddings")
    return float(params.get("rope_theta", hf.get(legacy_key, default)))


def modernbert_fields(hf: dict, where: Path, activation: str) -> dict[str, Any]:
    """ModernBertConfig with global attention in every layer, or sliding windows that cover every position."""
    layers = hf.get("num_hidden_layers", 22)
    every = hf.get("global_attn_every_n_layers", 3)
    types = hf.get("layer_types") or ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
    theta = rope_theta(hf, where, "full_attention", "global_rope_theta", 160000.0)
    if "sliding_attention" in types:
        local_theta = rope_theta(hf, where, "sliding_attention", "local_rope_theta", 10000.0)
        window = hf.get("local_attention", 128) // 2
        if window < hf.get("max_position_embeddings", 8192) or local_theta != theta:
            raise ConfigError(f"{where}: layer_types has sliding-window layers (local_attention="
                              f"{hf.get('local_attention', 128)}, their own RoPE base); lmssl's modernbert preset "
                              f"attends globally in every layer with one RoPE base")
    if hf.get("classifier_activation", hf.get("hidden_activation", "gelu")) != hf.get("hidden_activation", "gelu"):
        raise ConfigError(f"{where}: classifier_activation differs from hidden_activation; lmssl has one "
                          f"model.activation")
    if not hf.get("decoder_bias", True):
        raise ConfigError(f"{where}: decoder_bias=false is not supported; lmssl's masked-LM decoder has a bias")
    hidden = hf.get("hidden_size", 768)
    return dict(preset="modernbert", vocab_size=hf.get("vocab_size", 50368), hidden_size=hidden, num_layers=layers,
                num_heads=hf.get("num_attention_heads", 12), ffn_size=hf.get("intermediate_size", 1152),
                max_positions=hf.get("max_position_embeddings", 8192), embedding_size=0, type_vocab_size=0,
                norm="pre", norm_type="layernorm", norm_eps=hf.get("norm_eps", 1e-5), embedding_norm=True,
                final_norm=True, mlp="geglu", qk_norm=False, position="rope", rope_theta=theta,
                bias=one_bias(hf, where, ("norm_bias", "attention_bias", "mlp_bias", "classifier_bias"), False),
                activation=activation, dropout=hf.get("embedding_dropout", 0.0),
                attention_dropout=hf.get("attention_dropout", 0.0), tie_embeddings=hf.get("tie_word_embeddings", True),
                init_std=hf.get("initializer_range", 0.02), pooler="head")


def llama_fields(hf: dict, where: Path) -> dict[str, Any]:
    """LlamaConfig with as many key/value heads as query heads (no grouped-query attention)."""
    hidden, heads = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    if hf.get("num_key_value_heads", heads) != heads:
        raise ConfigError(f"{where}: num_key_value_heads={hf['num_key_value_heads']} differs from "
                          f"num_attention_heads={heads}; lmssl has no grouped-query attention")
    if hf.get("head_dim", hidden // heads) != hidden // heads:
        raise ConfigError(f"{where}: head_dim={hf['head_dim']} is not hidden_size / num_attention_heads; lmssl's "
                          f"heads split the hidden size")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act={hf['hidden_act']!r} is not supported; lmssl's SwiGLU uses silu")
    return dict(preset="llama", vocab_size=hf.get("vocab_size", 32000), hidden_size=hidden,
                num_layers=hf.get("num_hidden_layers", 32), num_heads=heads,
                ffn_size=hf.get("intermediate_size", 11008),
                max_positions=hf.get("max_position_embeddings", 2048), embedding_size=0, type_vocab_size=0,
                norm="pre", norm_type="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), embedding_norm=False,
                final_norm=True, mlp="swiglu", qk_norm=False, position="rope",
                rope_theta=rope_theta(hf, where, None, "rope_theta", 10000.0),
                bias=one_bias(hf, where, ("attention_bias", "mlp_bias"), False), dropout=0.0,
                attention_dropout=hf.get("attention_dropout", 0.0), tie_embeddings=hf.get("tie_word_embeddings", False),
                init_std=hf.get("initializer_range", 0.02))


def weight_names(directory: Path) -> set[str]:
    """The tensor names of a weights directory, without reading the tensors when they are safetensors."""
    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").is_file():
        with safe_open(str(directory / "model.safetensors"), "pt") as f:
            return set(f.keys())
    if index.is_file():
        return set(weight_map(index))
    return set(read_weights(directory))


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors (possibly sharded) or pytorch_model.bin, as float32 CPU tensors."""
    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").is_file():
        tensors = load_file(str(directory / "model.safetensors"))
    elif index.is_file():
        tensors = {}
        for shard in sorted(set(weight_map(index).values())):
            tensors.update(load_file(str(directory / shard)))
    elif (directory / "pytorch_model.bin").is_file():
        tensors = read_pickled_weights(directory / "pytorch_model.bin")
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
