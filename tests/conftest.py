"""Shared fixtures: the real data root, a per-session tokenization cache, tiny configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lmssl.config import REPO_ROOT
from lmssl.resolve import load_run_config

DATA_ROOT = Path(os.environ.get("LMSSL_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "wikitext-2" / "valid.txt").exists():
        pytest.skip(f"real data not found under {DATA_ROOT} (set LMSSL_DATA)")
    return DATA_ROOT


@pytest.fixture(autouse=True, scope="session")
def _session_env(tmp_path_factory):
    os.environ.setdefault("LMSSL_DATA", str(DATA_ROOT))
    os.environ["LMSSL_CACHE"] = str(tmp_path_factory.mktemp("lmssl-cache"))
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf-datasets"))


def tiny_config(objective: str, output_dir: Path, *extra: str):
    """A tiny model on the WikiText-2 validation split (fast to tokenize and train on CPU)."""
    path = REPO_ROOT / "configs" / f"{objective}.yaml"
    return load_run_config(path, [
        "model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.ffn_size=128",
        "data.seq_len=64", "data.train=wikitext-2/valid.txt", "data.valid=wikitext-2/test.txt",
        f"train.output_dir={output_dir}", "train.batch_size=8", "train.log_every=1", "train.tensorboard=false",
        "train.warmup_steps=5", "eval.max_batches=4", *extra])
