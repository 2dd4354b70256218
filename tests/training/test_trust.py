"""Nothing a checkpoint brings runs: a trainer_state.pt (or a DeepSpeed partition) whose unpickling would call
os.system is refused in one line on resume, before anything of it executes, and is never passed over for an
older checkpoint as if it were merely damaged."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT

from lmssl.checkpoint.format import latest_checkpoint, seal

pytestmark = pytest.mark.slow

TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_size=64", "data.seq_len=32",
        "data.train=wikitext-2/valid.txt", "data.valid=wikitext-2/test.txt", "train.batch_size=4",
        "train.tensorboard=false", "train.num_threads=1", "train.warmup_steps=1", "train.save_every=2",
        "train.keep_checkpoints=0", "eval.max_batches=1", "eval.likelihood_max_words=0", "train.max_steps=4"]


class RunsAShellCommand:
    """What a hostile checkpoint holds: unpickling it calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "train.py", "configs/clm.yaml", *TINY, f"train.output_dir={out}", *extra]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def plant(file: Path, marker: Path) -> None:
    """Add the hostile object to a torch.save file and re-seal its checkpoint: the manifest does not protect
    against whoever supplies the checkpoint."""
    state = torch.load(file, weights_only=False)  # our own file, just written by the run above
    state["payload"] = RunsAShellCommand(marker)
    torch.save(state, file)
    checkpoint = next(p for p in file.parents if p.name.startswith("step-"))
    seal(checkpoint)


def assert_refused(done: subprocess.CompletedProcess, file: Path, marker: Path) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {file}: refused: loading it would import posix.system"), last
    assert "lmssl runs no code from a checkpoint" in last and "Traceback" not in done.stderr
    assert not marker.exists()


def test_resume_refuses_a_trainer_state_that_would_run_code(tmp_path, data_root):
    out, marker = tmp_path / "run", tmp_path / "marker"
    assert train(out).returncode == 0
    state = latest_checkpoint(out) / "trainer_state.pt"
    plant(state, marker)
    assert_refused(train(out, "train.resume=true", "train.max_steps=6"), state, marker)


deepspeed_available = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import deepspeed"], capture_output=True).returncode != 0,
    reason="deepspeed is not installed (.ci/setup installs it)")


@deepspeed_available
def test_deepspeed_resume_refuses_a_partition_that_would_run_code(tmp_path, data_root):
    out, marker = tmp_path / "run", tmp_path / "marker"
    engine = ["train.engine=deepspeed", "train.zero_stage=1"]
    assert train(out, *engine).returncode == 0
    partitions = sorted((latest_checkpoint(out) / "deepspeed" / "state").glob("*model_states.pt"))
    plant(partitions[0], marker)
    assert_refused(train(out, *engine, "train.resume=true", "train.max_steps=6"), partitions[0], marker)
