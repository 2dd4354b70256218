"""The objective registry: one ObjectiveSpec per objective. Its config section and Hugging Face adapter are
declared here; what it can do at run time (score text, give an encoder, pool) its Objective class declares.
A new objective is one file plus one `register(...)` line."""
from __future__ import annotations

from dataclasses import dataclass

from lmssl.config import (
    CLMConfig,
    Config,
    ElectraConfig,
    MLMConfig,
    ObjectiveConfig,
    SimCSEConfig,
    register_objective_config,
)
from lmssl.data.tokenizer import TextTokenizer
from lmssl.errors import ConfigError
from lmssl.interop.hf.adapter import HFAdapter
from lmssl.objectives.base import Objective
from lmssl.objectives.clm import CausalLM, CausalLMAdapter
from lmssl.objectives.electra import Electra, ElectraAdapter
from lmssl.objectives.mlm import MaskedLM, MaskedLMAdapter
from lmssl.objectives.simcse import SimCSE, SimCSEAdapter


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str  # objective.name
    objective: type[Objective]  # built with (config, tokenizer)
    config: type[ObjectiveConfig] = ObjectiveConfig  # its `objective:` section
    hf: HFAdapter | None = None  # Hugging Face export/import; None = `lmssl export` refuses it


OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Make an objective available to configs (objective.name), training, evaluation and export."""
    OBJECTIVES[spec.name] = spec
    register_objective_config(spec.name, spec.config)
    return spec


def objective_spec(name: str) -> ObjectiveSpec:
    if name not in OBJECTIVES:
        raise ConfigError(f"key 'objective.name': unknown objective {name!r}; "
                          f"choose one of {', '.join(map(repr, OBJECTIVES))}")
    return OBJECTIVES[name]


def build_objective(cfg: Config, tokenizer: TextTokenizer) -> Objective:
    """The objective (with its trunk and heads) for a config whose vocab_size is resolved."""
    return objective_spec(cfg.objective.name).objective(cfg, tokenizer)


def hf_adapter(name: str) -> HFAdapter:
    """The objective's Hugging Face adapter; ConfigError naming the missing capability when it declares none."""
    adapter = objective_spec(name).hf
    if adapter is None:
        raise ConfigError(f"cannot export objective '{name}': it declares no Hugging Face adapter "
                          f"(ObjectiveSpec.hf is None), so no transformers architecture is mapped for it")
    return adapter


# the built-in objectives; their config sections live in lmssl.config so that a YAML parses without torch
register(ObjectiveSpec("mlm", MaskedLM, MLMConfig, MaskedLMAdapter()))
register(ObjectiveSpec("clm", CausalLM, CLMConfig, CausalLMAdapter()))
register(ObjectiveSpec("electra", Electra, ElectraConfig, ElectraAdapter()))
register(ObjectiveSpec("simcse", SimCSE, SimCSEConfig, SimCSEAdapter()))
