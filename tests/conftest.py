"""Shared fixtures: the real data root, a per-session tokenization cache, tiny configs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lmssl.checkpoint import write_model_files
from lmssl.cli import main
from lmssl.config import REPO_ROOT
from lmssl.data import load_tokenizer
from lmssl.objectives import build_objective
from lmssl.resolve import load_run_config, with_vocab

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


# --- fine-tuning (test_finetune*.py) ----------------------------------------------------------------

TINY = ["finetune.num_threads=1", "finetune.eval_batch_size=32"]

def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fake_glue(root: Path) -> Path:
    """A data root holding two tiny GLUE tasks, RTE and SST-2 (the same rows in train and dev)."""
    rows = "\n".join(f"{i}\tthe {w} is here\tthe {w}\t{lab}" for i, (w, lab) in
                     enumerate([("cat", "entailment"), ("dog", "not_entailment")] * 8))
    for split in ("train", "dev"):
        write(root / "glue" / "RTE" / f"{split}.tsv", "index\tsentence1\tsentence2\tlabel\n" + rows + "\n")
        write(root / "glue" / "SST-2" / f"{split}.tsv", "sentence\tlabel\n" + "good\t1\nbad\t0\n" * 8)
    return root


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


KINDS = {  # objective kind -> tiny_config arguments
    "mlm": ("mlm", "objective.sentence_task=none"),
    "mlm_nsp": ("mlm",),
    "clm": ("clm",),
    "electra": ("electra",),
    "simcse": ("simcse", "data.valid=", "model.init_from=", "data.seq_len=32"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data_root):
    """A tiny random checkpoint of every objective kind (what load_pretrained reads)."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for kind, (objective, *extra) in KINDS.items():
        cfg = tiny_config(objective, root / kind, "model.hidden_size=32", "model.ffn_size=64", *extra)
        tok = load_tokenizer(cfg)
        cfg = with_vocab(cfg, tok.vocab_size)
        torch.manual_seed(0)
        out[kind] = root / kind
        out[kind].mkdir()
        write_model_files(out[kind], build_objective(cfg, tok), cfg, tok)
    return out


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory):
    """A learnable pair task: label 1 when the second text repeats the first word."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    words = ["river", "music", "city", "war", "film", "album", "game", "king"]
    rows = []
    for _ in range(96):
        a, b = rng.choice(words, 2, replace=False)
        same = int(rng.integers(2))
        rows.append(f"the {a} is old\t{a if same else b}\t{same}")
    write(root / "train.tsv", "first\tsecond\tlabel\n" + "\n".join(rows[:64]) + "\n")
    write(root / "dev.tsv", "first\tsecond\tlabel\n" + "\n".join(rows[64:]) + "\n")
    return write(root / "toy.yaml", "name: toy\ntrain: train.tsv\ndev: dev.tsv\ntext_columns: [first, second]\n"
                                    "label_column: label\nlabels: [0, 1]\nmetrics: [accuracy, f1]\n")
