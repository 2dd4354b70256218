"""bench/gpu/check.py --dry-run: every step of the prepared GPU check runs on CPU at tiny shapes, so the script
that gets one short GPU window cannot rot."""
import json
import os
import subprocess
import sys

from helpers import DATA_ROOT, REPO_ROOT


def test_the_gpu_check_dry_run_passes_every_step(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "LMSSL_DATA": str(DATA_ROOT), "LMSSL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "bench/gpu/check.py", "--dry-run", "--out", str(out)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert report["dry_run"] and report["ok"], json.dumps(steps, indent=1)[-3000:]
    assert list(steps) == ["environment", "gpu_tests", "mfu", "zero2", "pppl", "finetune"]
    assert sum(report["budgets_s"].values()) <= 8 * 60
    env_found = steps["environment"]["result"]
    assert env_found["torch"] and env_found["auto_backend"] == "sdpa"  # no CUDA here
    assert steps["gpu_tests"]["result"]["skipped"] >= 4 and "failed" not in steps["gpu_tests"]["result"]
    for model in ("gpt2", "bert"):  # ours and transformers' SDPA, each with its MFU
        assert {"ours", "hf"} <= set(steps["mfu"]["result"][model])
    zero2 = steps["zero2"]["result"]
    assert zero2["loss_falls"] and zero2["steps_after_resume"] == list(range(31, 41))
    assert zero2["checkpoints"][-1] == "step-0000040"
    pppl = steps["pppl"]["result"]["summary"][0]
    assert pppl["ours_tokens_per_s"] > 0 and pppl["pll_max_abs_diff"] < 1e-3
    finetuned = steps["finetune"]["result"]
    assert finetuned["train_examples"] == 64 and finetuned["train_examples_per_s"] > 0
    assert 0 <= finetuned["metrics"]["accuracy"] <= 100


def test_the_gpu_scripts_parse():
    for script in ("bench/gpu/run.sh", "bench/gpu/wheels.sh"):
        proc = subprocess.run(["bash", "-n", script], cwd=REPO_ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
