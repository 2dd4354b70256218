"""What a trained model does with text: continue it (causal models: generate.py, sampling with a key/value cache)
and fill in its [MASK]s (masked models, ELECTRA's generator: fill_mask.py)."""
from __future__ import annotations

from lmssl.errors import ConfigError


def language_model(objective, kind: str, command: str):
    """(trunk, head) of the objective's language model of `kind`; ConfigError naming the capability otherwise."""
    lm = objective.language_model()
    if lm is None or lm.kind != kind:
        has = f"a {lm.kind} one" if lm is not None else "none (Objective.language_model() is None)"
        use = {"causal": "lmssl generate", "masked": "lmssl fill-mask"}.get(lm.kind if lm else "", "")
        raise ConfigError(f"`{command}` needs a {kind} language model; objective '{objective.cfg.objective.name}' "
                          f"has {has}" + (f": use `{use}`" if use else ""))
    return lm.trunk, lm.head
