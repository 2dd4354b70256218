"""Files lmssl writes have the modes a plain open() would give them (0666 minus the umask), weights included: the
safetensors writer's private temporary (0600) must not survive the rename into place."""
from __future__ import annotations

import os
import stat

from helpers import cli, tiny_config

from lmssl.storage.atomic import atomic_directory, write_text
from lmssl.training.loop import train


def modes(root) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


def test_every_file_of_a_run_an_export_and_an_import_follows_the_umask(tmp_path, data_root, capsys):
    old = os.umask(0o027)  # not the usual 022: what lmssl writes must follow the umask, not a fixed 0644
    try:
        run = tmp_path / "run"
        train(tiny_config("clm", run, "train.max_steps=2", "train.save_every=2", "eval.max_batches=1",
                          "eval.likelihood_max_words=0", "train.tensorboard=true"))
        ckpt = run / "checkpoints" / "step-0000002"
        assert cli(capsys, "export", ckpt, tmp_path / "hf")[0] == 0
        assert cli(capsys, "import", tmp_path / "hf", tmp_path / "back")[0] == 0
        with atomic_directory(tmp_path / "atomic") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "a.txt").write_text("a")
        write_text(tmp_path / "one.txt", "x")
    finally:
        os.umask(old)
    found = modes(tmp_path)
    weights = [name for name in found if name.endswith("model.safetensors")]
    assert len(weights) == 3, weights  # the checkpoint's, the export's, the import's
    assert {"one.txt", "atomic/sub/a.txt", "run/metrics.jsonl"} < found.keys()
    assert any(name.startswith("run/tensorboard/") for name in found)
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (0o750 if (tmp_path / name).is_dir() else 0o640)}
    assert not wrong, wrong
