"""lmssl's metrics as `evaluate` modules (lmssl/evaluate_modules/), loaded from the package, offline: the metric
interface a user shares with the rest of the Hugging Face stack, computed by the code lmssl itself uses."""
from __future__ import annotations

import functools
import os
from pathlib import Path

MODULES = Path(__file__).resolve().parent
NAMES = ("lmssl_glue", "lmssl_perplexity", "lmssl_pseudo_perplexity", "lmssl_sts")


@functools.lru_cache(maxsize=None)
def load_metric(name: str, config: str = "default"):
    """evaluate.load of one of NAMES from this package (nothing downloaded), loaded once per process."""
    if name not in NAMES:
        raise ValueError(f"unknown lmssl metric {name!r}; choose one of {', '.join(NAMES)}")
    os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
    import evaluate

    return evaluate.load(str(MODULES / name), config, keep_in_memory=True)  # no arrow files in a cache per call
