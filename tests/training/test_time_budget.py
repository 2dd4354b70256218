"""train.max_minutes: max_steps decided once from the first steps' speed on a controlled clock (no timing is asserted:
the clock advances only where the test says), recorded in the checkpoint and kept by a resumed run."""
from __future__ import annotations

import contextlib
import io
import shutil

import pytest
import torch
from helpers import metrics_rows, tiny_config
from safetensors.torch import load_file

import lmssl.training.time_budget as time_budget
from lmssl.checkpoint.format import latest_checkpoint, load_checkpoint_config, load_trainer_state
from lmssl.engine.torch_engine import TorchEngine, lr_multiplier
from lmssl.training.loop import train
from lmssl.training.prepare import prepare_run

pytestmark = pytest.mark.slow
COMMON = ["train.max_minutes=2.5", "train.save_every=4", "train.keep_checkpoints=0", "eval.likelihood_max_words=0",
          "objective.sentence_task=none", "train.warmup_steps=3"]
# the first step takes 100 s (it would compile), every later one 3 s: at step 9 (steps 2-9 timed) 124 s are spent,
# and the 150 s budget leaves floor(26 / 3) = 8 steps: max_steps = 17
FIRST, EVERY, DECIDED = 100.0, 3.0, 17


def clocked(monkeypatch, first: float, every: float, crash_at: int | None = None) -> dict:
    """A clock that stands still except in the engine's steps (the first `first` seconds, the others `every`);
    with `crash_at`, that step raises KeyboardInterrupt."""
    clock = {"t": 0.0, "steps": 0}
    real_step = TorchEngine.train_step

    def step(self, batches):
        if clock["steps"] == crash_at:
            raise KeyboardInterrupt
        clock["t"] += first if clock["steps"] == 0 else every
        clock["steps"] += 1
        return real_step(self, batches)

    monkeypatch.setattr(time_budget, "clock", lambda: clock["t"])
    monkeypatch.setattr(TorchEngine, "train_step", step)
    return clock


def trajectory(out) -> list[tuple]:
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in metrics_rows(out) if "loss" in r]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_root):
    """The uninterrupted run on the controlled clock, and what it printed."""
    out = tmp_path_factory.mktemp("budget") / "straight"
    with pytest.MonkeyPatch.context() as monkeypatch:
        clocked(monkeypatch, FIRST, EVERY)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            result = train(tiny_config("mlm", out, *COMMON))
    return out, result, err.getvalue()


def test_max_minutes_decides_max_steps_from_the_first_steps(straight):
    out, result, err = straight
    assert result["step"] == DECIDED and [s for s, *_ in trajectory(out)] == list(range(1, DECIDED + 1))
    line = [x[x.index("train.max_minutes="):] for x in err.splitlines() if "train.max_minutes=" in x]  # after the bar
    assert line == [f"train.max_minutes=2.5: train.max_steps={DECIDED} (the median of steps 2-9: 3 s/step; 2.07 min "
                    f"spent before; evaluations and checkpoints from now on are not counted)"]
    checkpoint = latest_checkpoint(out)
    assert checkpoint.name == f"step-{DECIDED:07d}" and load_checkpoint_config(checkpoint).train.max_steps == DECIDED
    assert load_trainer_state(checkpoint)["time_budget"] == {"max_minutes": 2.5, "at_step": 9, "elapsed_s": 124.0,
                                                             "seconds_per_step": 3.0, "max_steps": DECIDED}
    # before the decision no checkpoint records one (it is resumed by measuring again)
    assert "time_budget" not in load_trainer_state(out / "checkpoints" / "step-0000008")
    # the schedule: warmup (3 steps), then the linear decay of a 17-step run once decided (the lr of step 10 was set
    # by step 9's scheduler step, before the decision: an endless run's, about the peak)
    cfg = load_checkpoint_config(checkpoint).train
    lrs = [lr for _, _, lr, _ in trajectory(out)]
    assert lrs[:3] == pytest.approx([cfg.lr / 3, 2 * cfg.lr / 3, cfg.lr])
    assert lrs[9] == pytest.approx(cfg.lr, rel=1e-6)
    assert lrs[10:] == pytest.approx([cfg.lr * lr_multiplier(step - 1, cfg) for step in range(11, DECIDED + 1)])
    assert lrs[-1] == pytest.approx(cfg.lr / 14)


def test_a_resumed_run_keeps_the_recorded_max_steps_whatever_its_clock(straight, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        clocked(m, FIRST, EVERY, crash_at=14)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config("mlm", out, *COMMON))
    assert latest_checkpoint(out).name == "step-0000012"
    capsys.readouterr()
    clocked(monkeypatch, 1000.0, 1000.0)  # a much slower machine: no new measurement, the same schedule
    result = train(tiny_config("mlm", out, *COMMON, "train.resume=true"))
    assert "train.max_minutes=" not in capsys.readouterr().err
    assert result["step"] == DECIDED and trajectory(out) == trajectory(straight[0])  # bit for bit
    a, b = load_file(latest_checkpoint(out) / "model.safetensors"), load_file(latest_checkpoint(straight[0]) /
                                                                              "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_another_max_minutes_on_resume_decides_again_from_the_recorded_speed(straight, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(straight[0], out)
    shutil.rmtree(out / "checkpoints" / f"step-{DECIDED:07d}")  # resume from step 16
    cfg = tiny_config("mlm", out, *COMMON, "train.resume=true", "train.max_minutes=3")
    with prepare_run(cfg) as run:
        # 180 s - the 124 s spent by step 9, at the recorded 3 s/step: 18 more steps
        assert run.cfg.train.max_steps == 27 and run.state.step == 16
        assert run.state.time_budget == {"max_minutes": 3.0, "at_step": 9, "elapsed_s": 124.0,
                                         "seconds_per_step": 3.0, "max_steps": 27}
    assert "train.max_minutes=3 (was 2.5): train.max_steps=27, from the checkpoint's measured 3 s/step" in \
        capsys.readouterr().err


def test_a_checkpoint_before_the_decision_resumes_by_measuring_again(straight, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    shutil.copytree(straight[0], out)
    for checkpoint in (out / "checkpoints").iterdir():
        if checkpoint.name != "step-0000008":
            shutil.rmtree(checkpoint)
    # the resumed run's clock: step 9 untimed (10 s), steps 10-17 timed (5 s each): 50 s spent, 100 s left = 20 steps
    clocked(monkeypatch, 10.0, 5.0)
    result = train(tiny_config("mlm", out, *COMMON, "train.resume=true", "train.save_every=0"))
    assert "train.max_minutes=2.5: train.max_steps=37 (the median of steps 10-17: 5 s/step; 0.83 min spent" in \
        capsys.readouterr().err
    assert result["step"] == 37 and load_checkpoint_config(latest_checkpoint(out)).train.max_steps == 37


@pytest.mark.parametrize("warmup, window", [(3, 8), (30, 28), (100, 50)])
def test_the_warmup_buys_a_longer_measurement_and_the_decision_stays_inside_it(warmup, window):
    budget = time_budget.TimeBudget(tiny_config("mlm", "unused", f"train.warmup_steps={warmup}",
                                                "train.max_minutes=1"))
    assert budget.window == window  # between 8 and 50 steps, decided before the warmup's last step where it can be
