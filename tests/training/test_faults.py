"""Faults a run survives: SIGKILL at any moment (mid-save included), SIGTERM / SIGINT, a loss that turns NaN, a
second run on the same output directory, a full disk at every write site, a damaged checkpoint. Each resumed
run must reproduce the uninterrupted run's logged losses and final weights bit for bit."""
from __future__ import annotations

import dataclasses
import errno
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, open_model, tiny_config
from safetensors.torch import load_file

from lmssl.checkpoint.format import latest_checkpoint, list_checkpoints, nonfinite_parameter
from lmssl.errors import ConfigError, RunError
from lmssl.storage.atomic import TMP_PREFIX
from lmssl.training.loop import train

pytestmark = pytest.mark.slow

TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_size=64", "data.seq_len=32",
        "model.max_positions=64", "data.train=wikitext-2/valid.txt", "data.valid=wikitext-2/test.txt",
        "train.batch_size=4", "train.log_every=1", "train.tensorboard=false", "train.num_threads=1",
        "train.warmup_steps=2", "train.save_every=2", "train.keep_checkpoints=0", "eval.max_batches=1",
        "eval.likelihood_max_words=0"]
PER_OBJECTIVE = {"mlm": [], "clm": [], "electra": [],
                 "simcse": ["data.valid=", "model.init_from=", "objective.sts_eval=", "data.seq_len=32"]}
STEPS = 8


def command(objective: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "train.py", f"configs/{objective}.yaml", *TINY, *PER_OBJECTIVE[objective],
            f"train.max_steps={STEPS}", f"train.output_dir={out}", *extra]


def run(objective: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(objective, out, *extra), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)


def trajectory(out: Path) -> list[dict]:
    """Every logged line but its timing."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(out) / "model.safetensors")


def assert_same_run(got: Path, want: Path) -> None:
    assert trajectory(got) == trajectory(want)
    a, b = final_weights(got), final_weights(want)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in (got / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_root):
    """The uninterrupted run of each objective."""
    root = tmp_path_factory.mktemp("straight")
    for objective in PER_OBJECTIVE:
        done = run(objective, root / objective)
        assert done.returncode == 0, done.stderr[-2000:]
    return root


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """SIGKILL `proc` as soon as ready() holds; False if it finished first."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.001)
    proc.kill()
    raise AssertionError("the run neither finished nor reached the moment to kill it")


def logged_lines(out: Path) -> int:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def saving(out: Path) -> bool:
    root = out / "checkpoints"
    return root.is_dir() and any(p.name.startswith(TMP_PREFIX) for p in root.iterdir())


@pytest.mark.parametrize("objective", list(PER_OBJECTIVE))
def test_sigkill_at_random_moments_and_mid_save_resumes_bit_for_bit(objective, straight, tmp_path):
    rng = random.Random(objective)
    moments = [("mid-save", lambda out: saving(out)),
               *[(f"after {k} steps", lambda out, k=k: logged_lines(out) >= k) for k in rng.sample(range(1, STEPS), 1)]]
    kills = 0
    for name, ready in moments:
        out = tmp_path / name.replace(" ", "-")
        proc = subprocess.Popen(command(objective, out), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        kills += kill_when(proc, lambda: ready(out))
        done = run(objective, out, "train.resume=true")
        assert done.returncode == 0, (name, done.stderr[-2000:])
        assert_same_run(out, straight / objective)
        assert not saving(out)  # the killed save's temporary was cleaned
    assert kills >= 1  # a tiny run may finish before its moment comes


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_checkpoint_the_current_step_and_resume(signum, straight, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(command("clm", out), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while logged_lines(out) < 3 and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr[-2000:]
    step = json.loads(stdout.splitlines()[-1])["step"]
    assert latest_checkpoint(out).name == f"step-{step:07d}" and 3 <= step < STEPS
    assert "resume with: lmssl train configs/clm.yaml" in stderr and "train.resume=true" in stderr
    done = run("clm", out, "train.resume=true")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_run(out, straight / "clm")


def test_a_second_signal_exits_at_once_and_leaves_no_half_written_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(command("clm", out, "train.max_steps=400"), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while logged_lines(out) < 2 and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_nan_stops_the_run_with_only_finite_checkpoints(tmp_path, capsys):
    out = tmp_path / "nan"
    done = run("clm", out, "train.lr=1e6", "train.max_steps=30")
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: training diverged: steps ") and "train.max_skipped_steps=3" in error
    assert "the last finite loss was" in error and "Try a lower train.lr (now 1e+06)" in error
    rows = trajectory(out)
    assert rows[-1]["skipped_steps"] == 3 and all(r["loss"] != r["loss"] for r in rows[-3:])  # NaN
    assert list_checkpoints(out)
    for checkpoint in list_checkpoints(out):
        assert nonfinite_parameter(open_model(checkpoint)[2]) is None
    from lmssl.cli import main

    code = main(["eval", "ppl", str(out), "wikitext-2/test.txt", "--max-words", "30"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "log-likelihood is not finite" in err


def test_a_second_run_on_the_same_output_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(command("clm", out, "train.max_steps=400"), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        while logged_lines(out) < 1:
            assert first.poll() is None
            time.sleep(0.01)
        second = run("clm", out, "train.resume=true")
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert f"{out} is in use by another run (pid {first.pid} on " in second.stderr
        assert first.poll() is None  # the owner goes on undisturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done = run("clm", out, "train.resume=true")  # the dead owner's lock is taken over
    assert done.returncode == 0 and f"was left by process {first.pid}" in done.stderr


# in-process from here: faults injected where each file is written


@pytest.fixture(scope="module")
def straight_in_process(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("in-process") / "straight"
    train(tiny_config("clm", out, *TINY, f"train.max_steps={STEPS}"))
    return out


def full_disk_at(monkeypatch, target, attribute: str, nth: int, when=lambda *a, **k: True):
    """Make `target.attribute` raise ENOSPC on its nth matching call."""
    real, calls = getattr(target, attribute), {"n": 0}

    def failing(*args, **kwargs):
        if when(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == nth:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attribute, failing)


@pytest.mark.parametrize("objective", ["mlm", "electra"])
def test_a_model_too_large_for_the_memory_is_refused_before_it_is_built(objective, tmp_path, monkeypatch):
    """The parameters counted on the meta device are the built model's (tied matrices once); training on a GPU
    needs 16 bytes a parameter free there and the 4-byte weights in host memory, on the CPU 16 bytes in host memory."""
    import lmssl.training.memory as memory
    from lmssl.data import load_tokenizer
    from lmssl.objectives import build_objective
    from lmssl.training.prepare import with_vocab

    cfg = tiny_config(objective, tmp_path, "model.hidden_size=32", "model.ffn_size=64")
    tokenizer = load_tokenizer(cfg)
    cfg = with_vocab(cfg, tokenizer.vocab_size)
    params, vocab = memory.parameter_count(cfg, tokenizer)
    built = {id(p): p for p in build_objective(cfg, tokenizer).parameters()}.values()
    assert params == sum(p.numel() for p in built) and 2 * vocab >= params  # the embeddings dominate a tiny model
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(memory, "host_available", lambda: 16 * params)  # exactly enough on the CPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (16 * params - 1, 80 * 10**9))
    memory.check_fits(cfg, tokenizer, torch.device("cpu"))
    with pytest.raises(ConfigError, match=rf"^key 'model.vocab_size': 8192 makes a model of {params:,} parameters, "
                                          rf"which needs at least .* \(weights, gradients and AdamW's two moments, 16 "
                                          rf"bytes per parameter\) but .* is free on cuda:0; choose a smaller model$"):
        memory.check_fits(cfg, tokenizer, gpu)
    monkeypatch.setattr(memory, "host_available", lambda: 4 * params - 1)
    with pytest.raises(ConfigError, match=r"\(the fp32 weights, built in host memory, 4 bytes per parameter\) but "
                                          r".* of memory is available"):
        memory.check_fits(cfg, tokenizer, gpu)
    # Muon's matrices keep one momentum buffer: 12 bytes a parameter at least, so 12 x params fits and one less not
    muon = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, optimizer="muon"))
    monkeypatch.setattr(memory, "host_available", lambda: 12 * params)
    memory.check_fits(muon, tokenizer, torch.device("cpu"))
    monkeypatch.setattr(memory, "host_available", lambda: 12 * params - 1)
    with pytest.raises(ConfigError, match=r"\(weights, gradients and Muon's momentum, 12 bytes per parameter\) but "):
        memory.check_fits(muon, tokenizer, torch.device("cpu"))


@pytest.mark.parametrize("code, reason, advice", [
    (errno.ENOSPC, "no space left on device", "Free some space and run it again"),
    (errno.EROFS, "read-only file system", "Remount it read-write or choose a directory on a writable file system"),
    (errno.EACCES, "permission denied", "Make the directory writable for this user or choose another one"),
])
def test_a_failed_write_says_what_to_do_about_its_cause(code, reason, advice, tmp_path, monkeypatch):
    """Only a full disk is helped by freeing space: a read-only or forbidden directory gets its own advice."""
    import lmssl.storage.atomic as atomic

    def refused(*args, **kwargs):
        raise OSError(code, "refused")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refused)
    with pytest.raises(RunError) as e:
        atomic.write_text(tmp_path / "out.txt", "text")
    message = str(e.value)
    assert message.startswith(f"{reason} while writing {tmp_path / 'out.txt'} (") and advice in message
    assert ("Free some space" in message) == (code == errno.ENOSPC) and not list(tmp_path.iterdir())


@pytest.mark.parametrize("site", ["weights", "config.yaml", "trainer_state", "manifest", "metrics line"])
def test_a_full_disk_at_each_write_site_loses_nothing(site, straight_in_process, tmp_path, monkeypatch):
    import pathlib

    import lmssl.checkpoint.format
    import lmssl.model.weights
    import lmssl.training.logger

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        if site == "weights":
            full_disk_at(m, lmssl.model.weights, "save_model", 2)
        elif site == "trainer_state":
            full_disk_at(m, lmssl.checkpoint.format.torch, "save", 2)
        elif site == "metrics line":
            full_disk_at(m, lmssl.training.logger.os, "write", 5, when=lambda fd, data: data.startswith(b'{"step"'))
        else:
            name = {"config.yaml": "config.yaml", "manifest": "manifest.json"}[site]
            full_disk_at(m, pathlib.Path, "write_text", 2, when=lambda self, *a, **k: self.name == name)
        with pytest.raises(RunError, match=r"no space left on device while writing .*free\)"):
            train(tiny_config("clm", out, *TINY, f"train.max_steps={STEPS}"))
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    for checkpoint in list_checkpoints(out):  # what was written before the disk filled up is intact
        open_model(checkpoint)
    train(tiny_config("clm", out, *TINY, f"train.max_steps={STEPS}", "train.resume=true"))
    assert_same_run(out, straight_in_process)


def short_write(file, array, *args, **kwargs):
    """What numpy does on a full disk: part of the array lands, then an OSError without errno."""
    Path(file).write_bytes(b"\x93NUMPY" + b"\0" * 100)
    raise OSError(f"{array.nbytes} requested and {array.nbytes // 3} written")


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# numpy's error carries no errno: it reads "no space left on device" only where the disk is nearly full (not here)
@pytest.mark.parametrize("writer, reason", [(short_write, "write failed"), (no_space, "no space left on device")],
                         ids=["numpy-short-write", "enospc"])
def test_a_full_tokenization_cache_is_one_line_and_leaves_nothing(writer, reason, tmp_path, monkeypatch, capsys):
    """LMSSL_CACHE on a full disk: one line naming the cache entry and where the cache can go, exit 1 (a fault, as
    for a run's own writes), no half-written entry in the cache, and no output directory left by the run."""
    import numpy as np

    from lmssl.cli import main

    cache, corpus = tmp_path / "cache", tmp_path / "corpus.txt"
    cache.mkdir()
    corpus.write_text("A few words of text that the tokenizer turns into tokens .\n" * 50)
    monkeypatch.setenv("LMSSL_CACHE", str(cache))
    monkeypatch.setattr(np, "save", writer)
    code = main(["train", "configs/clm.yaml", *TINY, f"data.train={corpus}", "data.valid=",
                 f"train.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.splitlines()[-1]
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"error: {reason} while writing {cache}/corpus.txt-") and err.endswith(
        "; nothing was left half-written. This is the tokenization cache: free some space there, or point "
        "LMSSL_CACHE (or data.cache_dir) at a disk with room, and run it again")
    assert list(cache.iterdir()) == [] and not (tmp_path / "run").exists()


def test_a_truncated_checkpoint_is_named_and_resume_falls_back(straight_in_process, tmp_path, capsys):
    import shutil

    from lmssl.cli import main

    out = tmp_path / "run"
    shutil.copytree(straight_in_process, out)
    last = latest_checkpoint(out)
    weights = last / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    code = main(["eval", "ppl", str(out), "wikitext-2/test.txt", "--max-words", "30"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{last}: damaged: model.safetensors is {weights.stat().st_size} bytes, manifest.json says" in err
    shutil.rmtree(out / "checkpoints" / "step-0000006")  # the fallback then resumes from step 4
    lines = [line for line in (out / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 4]
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines) + '{"step": 5, "lo')  # a cut line
    train(tiny_config("clm", out, *TINY, f"train.max_steps={STEPS}", "train.resume=true"))
    err = capsys.readouterr().err
    assert "passing over a damaged checkpoint: step-0000008: model.safetensors is" in err
    assert "dropped 1 unreadable line(s)" in err and "resumed from" in err and "step-0000004" in err
    assert_same_run(out, straight_in_process)


def test_a_real_full_disk_on_a_small_tmpfs(straight_in_process, tmp_path):
    """The disk really fills up (a 5 MB tmpfs, where this machine lets us mount one): one line, nothing
    half-written, and the run resumes to the same result once there is space."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (the injected-ENOSPC tests above cover every write site)")
    try:
        out = mount / "run"
        with pytest.raises(RunError, match=rf"^no space left on device while writing {out}/checkpoints/step-\d+ "):
            train(tiny_config("clm", out, *TINY, f"train.max_steps={STEPS}"))
        assert list_checkpoints(out) and not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        train(tiny_config("clm", out, *TINY, f"train.max_steps={STEPS}", "train.resume=true"))
        assert_same_run(out, straight_in_process)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
