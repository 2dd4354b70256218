"""What tests share, written once: where things are, tiny configs and models, tiny checkpoints, CLI runs, small
data files. Fixtures built from these live in conftest.py."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from lmssl.checkpoint.format import write_model_files
from lmssl.checkpoint.model_dir import ModelDir
from lmssl.cli import main
from lmssl.config import MODEL_PRESETS, Config, ModelConfig
from lmssl.data import load_tokenizer
from lmssl.objectives import build_objective
from lmssl.training.prepare import load_run_config, with_vocab

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("LMSSL_DATA", REPO_ROOT.parent / "shared" / "data"))
VOCAB = 100  # tiny_model_config's vocabulary


# the config each objective's tests start from: for MLM, BERT's recipe (MLM + NSP, AdamW, 15% masking), whose
# mechanics most tests check; the main job's own recipe (configs/mlm.yaml) is trained by test_train and tests/project
TEST_CONFIGS = {"mlm": "mlm-nsp"}


def tiny_config(objective: str, output_dir: Path, *extra: str, config: str = "") -> Config:
    """configs/CONFIG.yaml (default: the objective's, TEST_CONFIGS) with a tiny model on the WikiText-2 validation
    split (fast to tokenize and train)."""
    name = config or TEST_CONFIGS.get(objective, objective)
    return load_run_config(REPO_ROOT / "configs" / f"{name}.yaml", [
        "model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.ffn_size=128",
        "data.seq_len=64", "data.train=wikitext-2/valid.txt", "data.valid=wikitext-2/test.txt",
        f"train.output_dir={output_dir}", "train.batch_size=8", "train.log_every=1", "train.tensorboard=false",
        "train.warmup_steps=5", "eval.max_batches=4", *extra])


def tiny_model_config(preset: str = "bert", **overrides) -> ModelConfig:
    """A tiny trunk with the preset's defaults applied (ModelConfig alone does not apply presets), no dropout."""
    fields = dict(MODEL_PRESETS[preset], preset=preset, vocab_size=VOCAB, hidden_size=32, num_layers=2,
                  num_heads=4, ffn_size=64, max_positions=64, dropout=0.0, attention_dropout=0.0)
    fields.update(overrides)
    return ModelConfig(**fields)


# trunk variants the block tests run on: (preset, ModelConfig overrides); every block kind appears in one
BLOCKS = {
    "bert-learned": ("bert", {}),
    "gpt2-learned": ("gpt2", {}),
    "bert-rope": ("bert", {"position": "rope"}),
    "gpt2-rope": ("gpt2", {"position": "rope"}),
    "modernbert": ("modernbert", {}),
    "llama": ("llama", {}),
    # the other kinds: RMSNorm after each residual with GeGLU, QK-norm and biases; pre-LN with SwiGLU and QK-norm
    "post-rms-geglu-qknorm": ("bert", {"norm_type": "rmsnorm", "mlp": "geglu", "qk_norm": True, "position": "rope"}),
    "pre-ln-swiglu-qknorm": ("llama", {"norm_type": "layernorm", "bias": True, "qk_norm": True,
                                       "embedding_norm": True}),
}
CAUSAL_PRESETS = ("gpt2", "llama")


def block_config(variant: str, **overrides) -> ModelConfig:
    """tiny_model_config of one of BLOCKS."""
    preset, fields = BLOCKS[variant]
    return tiny_model_config(preset, **{**fields, **overrides})


def save_model(directory: Path, model: torch.nn.Module, cfg: Config, tokenizer) -> Path:
    """A model directory as lmssl writes one: weights, config.yaml, tokenizer.json (no manifest: tests may edit it)."""
    directory.mkdir(parents=True)
    write_model_files(directory, model, cfg, tokenizer)
    return directory


def built(cfg: Config, seed: int = 0) -> tuple:
    """(config with its vocabulary size, the objective with seeded random weights, its tokenizer)."""
    tokenizer = load_tokenizer(cfg)
    cfg = with_vocab(cfg, tokenizer.vocab_size)
    torch.manual_seed(seed)
    return cfg, build_objective(cfg, tokenizer), tokenizer


def tiny_checkpoint(directory: Path, cfg: Config, seed: int = 0) -> Path:
    """A checkpoint directory of `cfg`'s objective with random weights, its vocabulary from its tokenizer."""
    cfg, objective, tokenizer = built(cfg, seed)
    return save_model(directory, objective, cfg, tokenizer)


def spread_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Larger random weights (std 0.3, biases 0.1) than the init's 0.02, which makes every token look alike: an
    invariance check then tells a leak far above its tolerance."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
            elif "bias" in name:
                p.normal_(0.0, 0.1)
    return model


def assert_forward_at_is_the_full_forward(model, ids: torch.Tensor, spec, where: torch.Tensor) -> None:
    """Transformer.forward_at(where) equals the full forward's rows at `where`, dropout draws included (same seed,
    same generator state after)."""
    torch.manual_seed(7)
    full = model(ids, spec)[where]
    after_full = torch.get_rng_state()
    torch.manual_seed(7)
    sparse = model.forward_at(ids, spec, where)
    torch.testing.assert_close(sparse, full, rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.get_rng_state(), after_full)


def open_model(path: Path, device: str = "cpu") -> tuple:
    """(config, tokenizer, objective with its weights) of a model directory, through ModelDir."""
    source = ModelDir.open(path)
    return source.config, source.tokenizer, source.objective(device)


def open_finetuned(path: Path) -> tuple:
    """(classifier with its weights, tokenizer, finetune.json) of a fine-tuned model directory."""
    source = ModelDir.open_finetuned(path)
    return source.classifier(), source.tokenizer, source.finetune_info


# objective kinds of the tiny checkpoints (conftest's `checkpoints` fixture): their tiny_config arguments
KINDS = {
    "mlm": ("mlm", "objective.sentence_task=none"),
    "mlm_nsp": ("mlm",),
    "clm": ("clm",),
    "electra": ("electra",),
    "simcse": ("simcse", "data.valid=", "model.init_from=", "data.seq_len=32"),
}

FINETUNE_TINY = ["finetune.num_threads=1", "finetune.eval_batch_size=32"]  # fine-tuning runs of tiny models


def cli(capsys, *argv) -> tuple[int, str, str]:
    """`lmssl ARGV` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_json(capsys, *argv) -> tuple[int, list[dict] | str, str]:
    """`lmssl ARGV`: (exit code, its JSON lines when it succeeded, else its stdout, stderr)."""
    code, out, err = cli(capsys, *argv)
    return code, [json.loads(line) for line in out.splitlines()] if code == 0 else out, err


def cli_result(capsys, *argv) -> tuple[int, dict | None, str]:
    """`lmssl ARGV` of a command that prints one JSON object: (exit code, that object or None, stderr)."""
    code, lines, err = cli_json(capsys, *argv)
    return code, lines[-1] if code == 0 else None, err


def write(path: Path, text: str) -> Path:
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


def toy_pair_task(root: Path) -> Path:
    """A learnable pair task card: label 1 when the second text repeats the first word."""
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


def metrics_rows(run: Path) -> list[dict]:
    """Every line of a run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


_READ_RECORDERS: list = []  # what the audit hook reports to; the hook itself cannot be removed, so it stays inert


def _record_opens(event: str, args: tuple) -> None:
    if event == "open" and _READ_RECORDERS and isinstance(args[0], (str, os.PathLike)):
        for record in _READ_RECORDERS:
            record(Path(os.fsdecode(args[0])).absolute())


sys.addaudithook(_record_opens)


@contextlib.contextmanager
def file_reads(directory: Path) -> Iterator[Counter]:
    """How many times Python code opened each file under `directory` (relative name -> count) in the block."""
    root, counts = Path(directory).absolute(), Counter()

    def record(path: Path) -> None:
        if root in path.parents:
            counts[str(path.relative_to(root))] += 1

    _READ_RECORDERS.append(record)
    try:
        yield counts
    finally:
        _READ_RECORDERS.remove(record)


def count_model_dir_opens(monkeypatch) -> list:
    """The values ModelDir.open is called with from now on (the test's monkeypatch undoes the wrapping)."""
    calls, original = [], ModelDir.open.__func__

    def counted(cls, value, key: str = ""):
        calls.append(Path(value))
        return original(cls, value, key)

    monkeypatch.setattr(ModelDir, "open", classmethod(counted))
    return calls
