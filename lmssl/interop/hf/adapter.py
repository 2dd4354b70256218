"""The contract between an objective and Hugging Face: which architectures it is exported as and imported
from, and how its parameters are named there. Each objective's own file defines its adapter from the shared
rules (rules.py); export.py and importer.py only follow what the adapters say."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lmssl.config import Config, ModelConfig
from lmssl.errors import ConfigError
from lmssl.interop.hf.rules import Rule, bert_trunk_rules, masked_lm_head_rules
from lmssl.interop.hf.source import HFSource


@dataclass
class Target:
    """One HF model directory: its architecture, the trunk config it describes and the renames."""
    subdir: str  # "" = the output directory itself; ELECTRA writes discriminator/ and generator/
    architecture: str  # config.json "architectures"[0]
    model_type: str  # bert | gpt2 | electra | modernbert | llama
    model: ModelConfig  # the trunk described by config.json
    rules: list[Rule]


@dataclass
class ImportPart:
    """Weights to load from one HF directory: `rules` read from `source` (`what` names the part in errors)."""
    source: HFSource
    rules: list[Rule]
    what: str


class HFAdapter:
    """What an objective declares about Hugging Face. Subclasses implement the four methods."""
    exports: tuple[str, ...] = ()  # architectures it is exported as (documentation and messages)
    imports: tuple[str, ...] = ()  # architectures it is imported from
    fallback: bool = False  # recognised only when no other objective's adapter recognises a directory
    import_data: dict[str, Any] = {}  # data.* keys of an imported model's config (SimCSE: no data.valid)

    def export_targets(self, cfg: Config) -> list[Target]:
        """The HF directories the objective is written as; ConfigError names an option a target cannot express."""
        raise NotImplementedError

    def extra_files(self, cfg: Config, target: Target) -> dict[str, str]:
        """Files written beside a target's config.json (relative path -> text)."""
        return {}

    def recognise(self, sources: dict[str, HFSource]) -> dict[str, Any] | None:
        """The objective section (with its name) that `sources` (see source.read_sources) import as, None when
        they are not this objective's."""
        return None

    def trunk_source(self, sources: dict[str, HFSource]) -> HFSource:
        """The directory whose config.json shapes the trunk and whose tokenizer is read."""
        return sources[""] if "" in sources else next(iter(sources.values()))

    def import_parts(self, cfg: Config, sources: dict[str, HFSource]) -> list[ImportPart]:
        """The weights to load into the objective built from `cfg`, with the prefixes found in the files."""
        raise NotImplementedError

    def import_notes(self, cfg: Config, sources: dict[str, HFSource]) -> list[str]:
        """What the user should know about an import (a part that stays freshly initialised)."""
        return []


def refuse(cond: bool, key: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"cannot export: key '{key}' is {value!r} but {why}")


# how an architecture's blocks read in a refusal, field by field
BLOCK_WORDS: dict[str, dict[Any, str]] = {
    "norm_type": {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"},
    "bias": {True: "biases in every linear layer and norm", False: "no biases"},
    "mlp": {"gelu": "a plain (not gated) feed-forward", "geglu": "a GeGLU feed-forward",
            "swiglu": "a SwiGLU feed-forward"},
    "qk_norm": {False: "no QK-norm", True: "QK-norm"},
    "embedding_norm": {True: "a norm on its embeddings", False: "no norm on its embeddings"},
    "final_norm": {True: "a final norm", False: "no final norm"},
    "pooler": {"tanh": "BERT's dense + tanh pooler", "head": "ModernBERT's dense + activation + norm pooler"},
}


def check_blocks(m: ModelConfig, architecture: str, **required: Any) -> None:
    """Refuse, naming the field, the first block field whose value `architecture` cannot express."""
    for field, want in required.items():
        refuse(getattr(m, field) == want, f"model.{field}", getattr(m, field),
               f"{architecture} has {BLOCK_WORDS[field][want]}")


def check_unfactorised(m: ModelConfig, architecture: str) -> None:
    refuse(m.embedding_size in (0, m.hidden_size), "model.embedding_size", m.embedding_size,
           f"{architecture} has no factorised embeddings (only ELECTRA does)")


def check_bert_like(m: ModelConfig, architecture: str, factorised_ok: bool = False) -> None:
    refuse(m.position == "learned", "model.position", m.position, f"{architecture} has learned absolute positions only")
    refuse(m.norm == "post", "model.norm", m.norm, f"{architecture} is post-LN (LayerNorm after each residual)")
    refuse(m.type_vocab_size >= 1, "model.type_vocab_size", m.type_vocab_size, f"{architecture} always has token types")
    check_blocks(m, architecture, norm_type="layernorm", bias=True, mlp="gelu", qk_norm=False, embedding_norm=True,
                 final_norm=False)
    if not factorised_ok:
        check_unfactorised(m, architecture)


def check_gpt2_like(m: ModelConfig, architecture: str) -> None:
    refuse(m.position == "learned", "model.position", m.position, f"{architecture} has learned absolute positions only")
    refuse(m.norm == "pre", "model.norm", m.norm, f"{architecture} is pre-LN (LayerNorm before each sub-block, plus a "
                                                  f"final one)")
    refuse(m.type_vocab_size == 0, "model.type_vocab_size", m.type_vocab_size,
           f"{architecture} has no token-type embeddings (it would add token types through the word embeddings)")
    check_blocks(m, architecture, norm_type="layernorm", bias=True, mlp="gelu", qk_norm=False, embedding_norm=False,
                 final_norm=True)
    check_unfactorised(m, architecture)


def check_modern(m: ModelConfig, architecture: str, **required: Any) -> None:
    """ModernBERT and Llama: pre-norm blocks with RoPE, no token types, as `required` says for the rest."""
    refuse(m.position == "rope", "model.position", m.position, f"{architecture} has rotary position embeddings")
    refuse(m.norm == "pre", "model.norm", m.norm, f"{architecture} normalises before each sub-block (pre-norm)")
    refuse(m.type_vocab_size == 0, "model.type_vocab_size", m.type_vocab_size, f"{architecture} has no token types")
    check_blocks(m, architecture, qk_norm=False, final_norm=True, **required)
    check_unfactorised(m, architecture)


def check_modernbert(m: ModelConfig, architecture: str) -> None:
    check_modern(m, architecture, norm_type="layernorm", mlp="geglu", embedding_norm=True)


def check_llama(m: ModelConfig, architecture: str) -> None:
    check_modern(m, architecture, norm_type="rmsnorm", mlp="swiglu", embedding_norm=False)


def electra_generator_target(g: ModelConfig, ours: str, subdir: str) -> Target:
    """An ElectraForMaskedLM from our MaskedLMHead-on-Transformer at prefix `ours` (ELECTRA's generator, or an MLM
    with factorised embeddings)."""
    arch = "ElectraForMaskedLM"
    check_bert_like(g, arch, factorised_ok=True)
    refuse(g.activation == "gelu", "model.activation", g.activation, f"{arch}'s prediction head always uses exact GELU")
    rules = bert_trunk_rules(g, f"{ours}trunk.", "electra.") + masked_lm_head_rules(
        g, f"{ours}head.", "generator_predictions", "generator_lm_head.bias", "generator_lm_head.weight",
        "electra.embeddings.word_embeddings.weight")
    return Target(subdir, arch, "electra", g, rules)


NORMALIZE_MODULE = "sentence_transformers.models.Normalize"


def sentence_transformers_files(pooling: str, model: ModelConfig, seq_len: int,
                                normalize: bool = False) -> dict[str, str]:
    """modules.json + 1_Pooling/config.json: the export is also a sentence-transformers model with the given
    pooling (the [CLS] state, or the mean over tokens), and with `normalize` its Normalize module (no files of its
    own: sentence-transformers' published models have no 2_Normalize directory either)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": NORMALIZE_MODULE})
    pool = {"word_embedding_dimension": model.hidden_size, "pooling_mode_cls_token": pooling != "mean",
            "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False}
    return {"modules.json": json.dumps(modules, indent=2) + "\n",
            "1_Pooling/config.json": json.dumps(pool, indent=2) + "\n",
            "sentence_bert_config.json": json.dumps({"max_seq_length": seq_len, "do_lower_case": False}) + "\n"}
