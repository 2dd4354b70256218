"""The command line as data (lmssl.cli.registry): every command declared once, with its handler; shared options
declared once; what Ctrl-C prints comes from the command's declaration."""
from __future__ import annotations

import dataclasses
import re

from helpers import REPO_ROOT, cli

from lmssl.cli import build_parser
from lmssl.cli.registry import COMMANDS, DEVICE


def test_every_command_is_declared_once_with_its_own_handler():
    words = [c.words for c in COMMANDS]
    assert len(words) == len(set(words)) == 16
    assert len({c.handler for c in COMMANDS}) == len(COMMANDS)
    assert {" ".join(w) for w in words} >= {"train", "eval ppl", "eval pppl", "eval compare", "eval pairs", "eval sts",
                                            "finetune", "predict", "export", "import", "study", "pairs make"}
    parser = build_parser()
    for c in COMMANDS:  # each declaration is what the parser runs
        args = [*c.words, *(["x"] * sum(1 for a in c.args if not a.names[0].startswith("-")))]
        if c.words == ("eval", "compare"):
            args += ["--data", "x", "--out", "y"]
        assert parser.parse_args(args).command_spec is c


def test_shared_options_are_declared_once():
    source = "".join(p.read_text() for p in (REPO_ROOT / "lmssl" / "cli").glob("*.py"))
    assert len(re.findall(r'"--device"', source)) == 1
    with_device = [c for c in COMMANDS if any("--device" in a.names for a in c.args)]
    assert len(with_device) == 8 and all(DEVICE in c.args for c in with_device)


def test_ctrl_c_prints_the_commands_declared_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    def interrupted(args):
        raise KeyboardInterrupt

    declared = list(COMMANDS)
    COMMANDS[:] = [dataclasses.replace(c, handler=interrupted) for c in declared]
    try:
        code, out, err = cli(capsys, "study", "anything.yaml")
        assert code == 130 and err.startswith("interrupted; the same command again reuses the finished runs")
        code, out, err = cli(capsys, "export", "a", "b")
        assert code == 130 and err == ""  # nothing to say: export writes all or nothing
        # train: Ctrl-C reaches the command only outside the loop (tokenizing, building: the loop checkpoints on
        # SIGINT itself); whether there is anything to resume depends on the output directory
        run = tmp_path / "run"
        code, out, err = cli(capsys, "train", "configs/mlm.yaml", f"train.output_dir={run}")
        assert code == 130 and err == ("interrupted before the run wrote a checkpoint: there is nothing to resume; the "
                                       "same command starts it\n")
        (run / "checkpoints" / "step-0000040").mkdir(parents=True)
        code, out, err = cli(capsys, "train", "configs/mlm.yaml", f"train.output_dir={run}")
        assert code == 130 and err == (f"interrupted; resume with train.resume=true (the latest checkpoint, "
                                       f"{run}/checkpoints/step-0000040, is intact)\n")
    finally:
        COMMANDS[:] = declared
