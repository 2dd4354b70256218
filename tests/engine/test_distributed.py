"""Data-parallel training: DDP under torchrun and DeepSpeed ZeRO 1-3 (its CPU accelerator, gloo) follow the
single-process TorchEngine's loss trajectory; a DeepSpeed run resumes exactly from its own checkpoint; its
consolidated model.safetensors loads in the TorchEngine; the DeepSpeed config is generated from lmssl's.

Tolerance: 1e-5 on every logged loss (fp32; dropout off, so the runs differ only by the order of float
reductions), 1e-5 on the consolidated weights. The first DeepSpeed start on a machine JIT-compiles a
communication op (~45 s to 2 min); later starts reuse it."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, open_model
from safetensors.torch import load_file

from lmssl.config import ConfigError, TrainConfig, load_config

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.ffn_size=64", "model.dropout=0",
        "model.attention_dropout=0", "data.seq_len=32", "data.train=wikitext-2/valid.txt",
        "data.valid=wikitext-2/test.txt", "eval.max_batches=2", "eval.likelihood_max_words=0", "train.max_steps=4",
        "train.log_every=1", "train.tensorboard=false", "train.save_every=2", "train.num_threads=1",
        "train.warmup_steps=1", "train.keep_checkpoints=0"]
GLOBAL_BATCH = 8
ATOL = 1e-5


def run(out: Path, processes: int, *extra: str) -> list[float]:
    """Train the tiny CLM config in `processes` processes (0 = plain `python train.py`, else torchrun); the
    per-step losses logged by the main process."""
    per_rank = f"train.batch_size={GLOBAL_BATCH // max(1, processes)}"
    args = ["configs/clm.yaml", *TINY, f"train.output_dir={out}", per_rank, *extra]
    if processes == 0:
        command = [sys.executable, "train.py", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(random.randint(20000, 40000)), "train.py", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return losses(out)


def losses(out: Path) -> list[float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if "loss" in m]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root) -> tuple[Path, list[float]]:
    out = tmp_path_factory.mktemp("ref") / "run"
    trajectory = run(out, 0)
    assert len(trajectory) == 4 and trajectory[-1] < trajectory[0]
    return out, trajectory


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / "step-0000004" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=0, msg=k)


@pytest.mark.slow
def test_ddp_under_torchrun_matches_one_process(reference, tmp_path):
    ref_out, ref = reference
    got = run(tmp_path / "ddp", 2)
    assert got == pytest.approx(ref, abs=ATOL)
    assert_same_weights(final_weights(tmp_path / "ddp"), final_weights(ref_out))


@pytest.mark.slow
def test_ddp_with_muon_matches_one_process(tmp_path, data_root):
    """train.optimizer=muon under DDP: every process orthogonalises the same all-reduced gradient of the blocks'
    matrices (Muon's state is replicated like AdamW's), so two processes follow one. Tolerance: Muon's
    Newton-Schulz iteration runs in bf16, where a gradient that differs in its last fp32 bits (the reduction order)
    can round an entry to the next bf16 value (2^-8 relative); an update entry is at most ~ the adjusted lr
    (0.02 x sqrt(3) for qkv), so 4 steps differ by < 6e-4 in a weight and much less in the loss."""
    one = run(tmp_path / "one", 0, "train.optimizer=muon")
    assert one[-1] < one[0]
    assert run(tmp_path / "ddp", 2, "train.optimizer=muon") == pytest.approx(one, abs=1e-4)
    a, b = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "one")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-3, rtol=0) for k in a)


@pytest.mark.slow
def test_ddp_processes_agree_on_the_max_steps_of_a_time_budget(tmp_path, data_root):
    """train.max_minutes under DDP: the main process's clock decides for all (processes that disagreed would hang in
    their next collective); what it decided is what both trained and recorded. Nothing about the time is asserted."""
    from lmssl.checkpoint.format import latest_checkpoint, load_trainer_state

    out = tmp_path / "ddp"
    trained = run(out, 2, "train.max_minutes=0.05", "train.save_every=0")
    record = load_trainer_state(latest_checkpoint(out))["time_budget"]
    assert record["at_step"] == 9 and record["max_steps"] == len(trained) >= 9
    assert latest_checkpoint(out).name == f"step-{len(trained):07d}"


def run_nodes(out: Path, nodes: int, per_node: int, *extra: str) -> list[float]:
    """Train as `nodes` machines of `per_node` processes: one torchrun agent per "node", all on this machine,
    meeting at a localhost c10d rendezvous (what `torchrun --nnodes N --rdzv-backend c10d --rdzv-endpoint
    HOST:PORT` does across machines); the losses the main process logs."""
    args = ["configs/clm.yaml", *TINY, f"train.output_dir={out}",
            f"train.batch_size={GLOBAL_BATCH // (nodes * per_node)}", *extra]
    endpoint = f"localhost:{random.randint(20000, 40000)}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc_per_node",
               str(per_node), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", out.name,
               "train.py", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agents = [subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(nodes)]
    for agent in agents:
        _, err = agent.communicate(timeout=600)
        assert agent.returncode == 0, err[-3000:]
    return losses(out)


@pytest.mark.slow
def test_two_nodes_match_one_process_and_resume_on_one_node(reference, tmp_path):
    """2 nodes x 1 process give the one-process losses and weights (same global batch); the checkpoint they wrote
    at step 2 resumes on 1 node x 2 processes to the same end."""
    ref_out, ref = reference
    out = tmp_path / "nodes"
    assert run_nodes(out, 2, 1) == pytest.approx(ref, abs=ATOL)
    assert_same_weights(final_weights(out), final_weights(ref_out))
    import shutil

    shutil.rmtree(out / "checkpoints" / "step-0000004")
    assert run_nodes(out, 1, 2, "train.resume=true") == pytest.approx(ref, abs=ATOL)  # steps 3-4 retrained
    assert_same_weights(final_weights(out), final_weights(ref_out))


deepspeed_available = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import deepspeed"], capture_output=True).returncode != 0,
    reason="deepspeed is not installed (.ci/setup installs it)")


@deepspeed_available
@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("processes", [1, 2])
def test_deepspeed_zero_matches_the_torch_engine(reference, tmp_path, stage, processes):
    ref_out, ref = reference
    out = tmp_path / f"zero{stage}"
    got = run(out, processes, "train.engine=deepspeed", f"train.zero_stage={stage}")
    assert got == pytest.approx(ref, abs=ATOL)
    ckpt = out / "checkpoints" / "step-0000004"
    assert (ckpt / "deepspeed" / "state").is_dir()  # DeepSpeed's own checkpoint, for resume
    # the consolidated fp32 weights are the TorchEngine's, and load as any lmssl checkpoint
    assert_same_weights(final_weights(out), final_weights(ref_out))
    from lmssl.engine import TorchEngine

    cfg, _, objective = open_model(ckpt)
    assert cfg.train.engine == "deepspeed" and cfg.train.zero_stage == stage
    engine = TorchEngine(objective, load_config(None, ["train.max_steps=4"]).train)
    assert engine.model is objective
    if stage == 3 and processes == 2:  # resume: drop the last checkpoint and continue from step 2
        final = final_weights(out)
        import shutil

        shutil.rmtree(ckpt)
        resumed = run(out, processes, "train.engine=deepspeed", f"train.zero_stage={stage}", "train.resume=true")
        assert resumed == pytest.approx(ref, abs=ATOL)  # steps 1-2 kept, 3-4 retrained
        assert_same_weights(final_weights(out), final)


@deepspeed_available
@pytest.mark.parametrize("options, loss_atol, weight_atol", [
    (["train.zero_stage=2", "train.offload_optimizer=true"], ATOL, ATOL),
    (["train.zero_stage=3", "train.offload_optimizer=true", "train.offload_params=true"], ATOL, ATOL),
    # bf16 weights and activations over fp32 master weights: losses within 2e-3 of fp32; an Adam step moves a
    # weight by at most ~lr (1e-3), so 4 steps of slightly different (bf16) gradients stay within 5e-3
    (["train.zero_stage=1", "train.precision=bf16"], 2e-3, 5e-3),
])
@pytest.mark.slow
def test_deepspeed_offload_and_bf16(reference, tmp_path, options, loss_atol, weight_atol):
    ref_out, ref = reference
    got = run(tmp_path / "run", 1, "train.engine=deepspeed", *options)
    assert got == pytest.approx(ref, abs=loss_atol)
    weights = final_weights(tmp_path / "run")
    assert all(w.dtype == torch.float32 for w in weights.values())  # the fp32 master weights, consolidated
    for k, w in final_weights(ref_out).items():
        torch.testing.assert_close(weights[k], w, atol=weight_atol, rtol=0, msg=k)


@deepspeed_available
@pytest.mark.slow
def test_deepspeed_refuses_a_torch_engine_checkpoint(reference, tmp_path):
    ref_out, _ = reference
    import shutil

    shutil.copytree(ref_out, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-0000004")
    command = [sys.executable, "train.py", "configs/clm.yaml", *TINY, f"train.output_dir={tmp_path / 'run'}",
               f"train.batch_size={GLOBAL_BATCH}", "train.engine=deepspeed", "train.zero_stage=1", "train.resume=true"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "written by the torch engine" in done.stderr


# ---------------------------------------------------------------------------------------------
# the generated DeepSpeed config (pure; no deepspeed import)
# ---------------------------------------------------------------------------------------------

def ds_config(tmp_path, extra: dict | None = None, **train):
    from lmssl.engine.deepspeed_engine import deepspeed_config

    fields = {"engine": "deepspeed", "batch_size": 4, "grad_accum": 3, "zero_stage": 2, **train}
    if extra is not None:
        (tmp_path / "ds.json").write_text(json.dumps(extra))
        fields["deepspeed"] = str(tmp_path / "ds.json")
    return deepspeed_config(TrainConfig(**fields), world_size=2)


def test_deepspeed_config_is_generated_from_the_lmssl_config(tmp_path):
    cfg = ds_config(tmp_path, precision="bf16", offload_optimizer=True, clip_grad=0.5)
    assert cfg["train_batch_size"] == 4 * 3 * 2  # micro batch x accumulation x world size
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (4, 3)
    assert cfg["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu"}}
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    assert cfg["gradient_clipping"] == 0.5 and "optimizer" not in cfg and "scheduler" not in cfg


def test_deepspeed_file_adds_keys_and_contradictions_name_both_values(tmp_path):
    cfg = ds_config(tmp_path, {"zero_optimization": {"overlap_comm": True, "stage": 2}, "wall_clock_breakdown": True,
                               "train_batch_size": "auto"})
    assert cfg["zero_optimization"] == {"stage": 2, "overlap_comm": True} and cfg["wall_clock_breakdown"] is True
    assert cfg["train_batch_size"] == 24
    with pytest.raises(ConfigError, match=r"sets 'zero_optimization.stage' = 3, but the lmssl config gives 2 "
                                          r"\(train.zero_stage\)"):
        ds_config(tmp_path, {"zero_optimization": {"stage": 3}})
    with pytest.raises(ConfigError, match=r"sets 'train_micro_batch_size_per_gpu' = 16, but .* 4 \(train.batch_size\)"):
        ds_config(tmp_path, {"train_micro_batch_size_per_gpu": 16})
    with pytest.raises(ConfigError, match=r"sets 'optimizer', but the optimizer is lmssl's AdamW"):
        ds_config(tmp_path, {"optimizer": {"type": "Adam"}})
    (tmp_path / "bad.json").write_text("{not json")
    from lmssl.engine.deepspeed_engine import deepspeed_config
    with pytest.raises(ConfigError, match="not valid JSON"):
        deepspeed_config(TrainConfig(engine="deepspeed", deepspeed=str(tmp_path / "bad.json")), 1)


@pytest.mark.parametrize("override, key", [
    (["train.zero_stage=2"], "train.zero_stage"),  # a DeepSpeed option with the torch engine
    (["train.precision=fp16"], "train.precision"),
    (["train.engine=deepspeed", "train.zero_stage=4"], "train.zero_stage"),
    (["train.engine=deepspeed", "train.offload_params=true", "train.zero_stage=2"], "train.offload_params"),
    (["train.engine=deepspeed", "train.offload_optimizer=true"], "train.offload_optimizer"),
    (["train.engine=deepspeed", "train.precision=bf16"], "train.zero_stage"),
    (["train.engine=deepspeedd"], "train.engine"),
    (["train.engine=deepspeed", "train.optimizer=muon"], "train.optimizer"),  # DeepSpeed steps lmssl's AdamW only
])
def test_engine_options_are_validated(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(REPO_ROOT / "configs" / "clm.yaml", override)


def test_train_py_drops_the_deepspeed_launchers_local_rank():
    sys.path.insert(0, str(REPO_ROOT))
    from train import launcher_free

    assert launcher_free(["--local_rank=1", "configs/clm.yaml", "train.max_steps=3"]) == [
        "configs/clm.yaml", "train.max_steps=3"]
    assert launcher_free(["configs/clm.yaml", "--local_rank", "0"]) == ["configs/clm.yaml"]
