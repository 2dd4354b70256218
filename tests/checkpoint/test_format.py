"""lmssl's checkpoint format (lmssl.checkpoint.format) and the plain-data loader under it (lmssl.model.weights): the
manifest names what changed, checkpoints sort by step, state files load as tensors and plain data only."""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile

import numpy as np
import pytest
import torch

from lmssl.checkpoint.format import damage, latest_checkpoint, list_checkpoints, nonfinite_parameter, seal
from lmssl.errors import ConfigError
from lmssl.model.weights import UnsafeCheckpoint, load_plain_data
from lmssl.storage.atomic import OLD_PREFIX, TMP_PREFIX, remove_stale, write_text


def test_seal_records_every_file_and_damage_names_the_first_change(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("hello")
    seal(tmp_path)
    files = json.loads((tmp_path / "manifest.json").read_text())["files"]
    assert files == {"a.bin": {"bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()},
                     "sub/b.txt": {"bytes": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}}
    assert damage(tmp_path) is None
    (tmp_path / "a.bin").write_bytes(b"abd")  # same size, other bytes
    assert damage(tmp_path) == "a.bin does not match its checksum in manifest.json (damaged)"
    assert damage(tmp_path, names=("sub/b.txt",)) is None  # only the files asked about
    (tmp_path / "sub" / "b.txt").write_text("hi")
    assert damage(tmp_path, names=("sub/b.txt",)) == "sub/b.txt is 2 bytes, manifest.json says 5"
    (tmp_path / "sub" / "b.txt").unlink()
    assert damage(tmp_path, names=("sub/b.txt",)) == "sub/b.txt is missing"
    (tmp_path / "manifest.json").write_text("{not json")
    assert damage(tmp_path).startswith("manifest.json cannot be read")


def test_a_directory_without_manifest_is_not_checked(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"anything")
    assert damage(tmp_path) is None


def test_checkpoints_sort_by_step_number_not_by_name(tmp_path):
    for step in (9, 10, 100):
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
    (tmp_path / "checkpoints" / f"{TMP_PREFIX}step-0000200-x1y2z3w4").mkdir()  # a write in progress is no checkpoint
    (tmp_path / "checkpoints" / "notes").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-9", "step-10", "step-100"]
    assert latest_checkpoint(tmp_path).name == "step-100"
    assert latest_checkpoint(tmp_path / "nowhere") is None


def test_nonfinite_parameter_names_the_first_bad_tensor():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert nonfinite_parameter(model) is None
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    assert nonfinite_parameter(model) == "1.bias"


class RunsCode:
    def __reduce__(self):
        return os.system, ("true",)


def test_state_files_load_as_plain_data_with_numpy_arrays(tmp_path):
    path = tmp_path / "state.pt"
    random.seed(3)
    np.random.seed(3)
    state = {"step": 7, "loader": {"epoch": 1, "position": 64}, "python": random.getstate(),
             "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "lr": [1e-3, 0.0]}
    torch.save(state, path)
    loaded = load_plain_data(path)
    assert loaded["step"] == 7 and loaded["python"] == state["python"] and torch.equal(loaded["torch"], state["torch"])
    assert np.array_equal(loaded["numpy"][1], state["numpy"][1]) and loaded["numpy"][1].dtype == np.uint32


def test_a_state_file_that_would_run_code_is_refused_naming_what_it_imports(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"step": 1, "payload": RunsCode()}, path)
    with pytest.raises(UnsafeCheckpoint, match=r"refused: loading it would import posix\.system, which is not "
                                               r"tensors or plain data; lmssl runs no code from a checkpoint"):
        load_plain_data(path)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(ConfigError, match="cannot be read \\(damaged or truncated\\)") as e:
        load_plain_data(path)
    assert not isinstance(e.value, UnsafeCheckpoint)  # damaged files are passed over on resume; unsafe ones are not


def test_only_lmssls_own_temporaries_are_cleaned(tmp_path, monkeypatch):
    """A stopped writer's leftovers go; a user's files that merely look temporary stay (.tmp-thesis.tex,
    .old-photos/: issue 28's probe lost both to a fresh run)."""
    (tmp_path / ".tmp-thesis.tex").write_text("chapter 1")
    (tmp_path / ".old-photos").mkdir()
    (tmp_path / ".old-photos" / "a.jpg").write_bytes(b"jpg")
    leftovers = [f"{OLD_PREFIX}step-0000005-q1w2e3r4", f"{TMP_PREFIX}metrics.jsonl-k2j3h4g5",
                 f"{TMP_PREFIX}step-0000010-abcd1234"]
    for name in leftovers:
        (tmp_path / name).mkdir()
    assert sorted(p.name for p in remove_stale(tmp_path)) == leftovers
    assert (tmp_path / ".tmp-thesis.tex").read_text() == "chapter 1" and (tmp_path / ".old-photos" / "a.jpg").exists()
    # what lmssl's writer leaves behind when killed carries the marker
    made = []
    mkstemp = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: made.append(mkstemp(*a, **k)) or made[-1])
    write_text(tmp_path / "notes.txt", "x")
    assert os.path.basename(made[0][1]).startswith(f"{TMP_PREFIX}notes.txt-")
