"""Pretraining objectives: one file each, one registry (registry.py) of what each declares."""
from lmssl.objectives.base import IGNORE_INDEX, Batch, LanguageModel, Objective, Output
from lmssl.objectives.registry import OBJECTIVES, ObjectiveSpec, build_objective, hf_adapter, objective_spec, register

__all__ = ["IGNORE_INDEX", "OBJECTIVES", "Batch", "LanguageModel", "Objective", "ObjectiveSpec", "Output",
           "build_objective", "hf_adapter", "objective_spec", "register"]
