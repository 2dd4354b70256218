"""Shared fixtures: the real data root, a per-session tokenization cache, one torch thread for tiny models, tiny
checkpoints of every objective kind, a toy task (helpers.py holds what they are built from)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import DATA_ROOT, KINDS, tiny_checkpoint, tiny_config, toy_pair_task


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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models in one torch thread: more only add overhead (and the machine is shared). A module opts in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data_root) -> dict[str, Path]:
    """A tiny random checkpoint of every objective kind (helpers.KINDS)."""
    root = tmp_path_factory.mktemp("ckpts")
    return {kind: tiny_checkpoint(root / kind, tiny_config(objective, root / kind, "model.hidden_size=32",
                                                           "model.ffn_size=64", *extra))
            for kind, (objective, *extra) in KINDS.items()}


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory) -> Path:
    """A learnable pair task card (helpers.toy_pair_task)."""
    return toy_pair_task(tmp_path_factory.mktemp("toy"))
