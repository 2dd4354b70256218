"""Objective registry: name -> (Objective class, its config dataclass). A new objective is one file plus one line here."""
from __future__ import annotations

from lmssl.config import Config
from lmssl.data.tokenizer import TextTokenizer
from lmssl.objectives.base import IGNORE_INDEX, Batch, Objective, Output
from lmssl.objectives.clm import CausalLM, CLMConfig
from lmssl.objectives.electra import Electra, ElectraConfig
from lmssl.objectives.mlm import MaskedLM, MLMConfig
from lmssl.objectives.simcse import SimCSE, SimCSEConfig

OBJECTIVES: dict[str, tuple[type[Objective], type]] = {
    "mlm": (MaskedLM, MLMConfig),
    "clm": (CausalLM, CLMConfig),
    "electra": (Electra, ElectraConfig),
    "simcse": (SimCSE, SimCSEConfig),
}

__all__ = ["IGNORE_INDEX", "OBJECTIVES", "Batch", "Objective", "Output", "build_objective", "objective_config_class"]


def objective_config_class(name: str) -> type:
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; choose one of {', '.join(map(repr, OBJECTIVES))}")
    return OBJECTIVES[name][1]


def build_objective(cfg: Config, tokenizer: TextTokenizer) -> Objective:
    """The objective (with its trunk and heads) for a config whose vocab_size is resolved."""
    return OBJECTIVES[cfg.objective.name][0](cfg, tokenizer)
