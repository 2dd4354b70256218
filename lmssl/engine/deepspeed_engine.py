"""DeepSpeedEngine: ZeRO 0-3, optimizer/parameter offload, bf16/fp16, accumulation and clipping by DeepSpeed.

The only module that imports `deepspeed` (lazily, when the engine is built). The DeepSpeed config is
generated from the lmssl config (`deepspeed_config`): global batch = train.batch_size (micro batch) x
train.grad_accum x world size is the single source of truth; `train.deepspeed=FILE.json` may add keys,
and a key it sets to another value than the generated one is an error naming both.

The optimizer and schedule are lmssl's (AdamW over the same no-decay groups, warmup/decay), handed to
DeepSpeed as client objects, so both engines follow one trajectory. Micro-batch losses are weighted as
in the TorchEngine (lmssl.engine.accumulation), so DeepSpeed's own 1/accumulation scaling is turned off.

Checkpoints: DeepSpeed's own (every process writes its partitions) under `<checkpoint>/deepspeed`, for
resume; plus the consolidated fp32 weights in lmssl's `model.safetensors`, reconstructed from the ZeRO
partitions by DeepSpeed's zero_to_fp32, for evaluation and export.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
from pathlib import Path
from typing import Any

import torch

from lmssl.config import TrainConfig
from lmssl.distributed import DistInfo
from lmssl.engine.accumulation import MetricSums, loss_weights
from lmssl.engine.torch_engine import build_optimizer
from lmssl.errors import ConfigError, RunError
from lmssl.model.batch import Batch, Output
from lmssl.model.weights import load_plain_data

DS_DIR = "deepspeed"  # DeepSpeed's files inside an lmssl checkpoint directory
DS_TAG = "state"


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for `cfg`, with the keys of `cfg.deepspeed` (a JSON file) merged in."""
    generated: dict[str, Any] = {
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.clip_grad,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
        "steps_per_print": 2**31 - 1,  # lmssl logs; DeepSpeed stays quiet
        "zero_allow_untested_optimizer": True,  # lmssl's torch AdamW
        # keep lmssl's AdamW when offloading (DeepSpeedCPUAdam needs a compiled op)
        "zero_force_ds_cpu_optimizer": False,
    }
    if cfg.offload_optimizer:
        generated["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    if cfg.offload_params:
        generated["zero_optimization"]["offload_param"] = {"device": "cpu"}
    if not cfg.deepspeed:
        return generated
    path = Path(cfg.deepspeed)
    try:
        extra = json.loads(path.read_text())
    except OSError:
        raise ConfigError(f"key 'train.deepspeed': file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"key 'train.deepspeed': {path} is not valid JSON ({e})") from None
    if not isinstance(extra, dict):
        raise ConfigError(f"key 'train.deepspeed': {path} must hold a JSON object")
    return _merge(generated, extra, path, "")


# where a generated DeepSpeed key comes from, for contradiction messages
SOURCE_KEYS = {
    "train_batch_size": "train.batch_size x train.grad_accum x world size",
    "train_micro_batch_size_per_gpu": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
    "gradient_clipping": "train.clip_grad", "zero_optimization.stage": "train.zero_stage",
    "bf16.enabled": "train.precision", "fp16.enabled": "train.precision",
    "zero_optimization.offload_optimizer": "train.offload_optimizer",
    "zero_optimization.offload_param": "train.offload_params",
}
FORBIDDEN = {"optimizer": "the optimizer is lmssl's AdamW (train.lr, train.weight_decay, train.adam_*)",
             "scheduler": "the schedule is lmssl's (train.warmup_steps, train.schedule, train.final_lr_ratio)"}


def _merge(ours: dict, theirs: dict, path: Path, prefix: str) -> dict:
    out = copy.deepcopy(ours)
    for key, value in theirs.items():
        where = f"{prefix}{key}"
        if where in FORBIDDEN:
            raise ConfigError(f"key 'train.deepspeed': {path} sets '{where}', but {FORBIDDEN[where]}; remove it")
        if key not in out or value == "auto":
            out.setdefault(key, value)
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, path, f"{where}.")
        elif out[key] != value:
            raise ConfigError(f"key 'train.deepspeed': {path} sets '{where}' = {value!r}, but the lmssl config gives "
                              f"{out[key]!r} ({SOURCE_KEYS.get(where, where)}); change one of them")
    return out


def require_deepspeed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError("key 'train.engine': deepspeed is not installed here; install it with `pip install "
                          "deepspeed` (or the gpu extra: pip install -e .[gpu]), or set train.engine=torch") from None


def require_plain_data(directory: Path) -> None:
    """DeepSpeed's load_checkpoint unpickles with weights_only=False (0.19): every file of the tag it reads is first
    loaded here as plain data, allowing only the classes DeepSpeed itself stores (its loss scalers, the ZeRO
    stage enum, bf16 fragment addresses), so a file that would run code is refused before DeepSpeed opens it."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    for path in sorted(p for p in (Path(directory) / DS_TAG).rglob("*") if p.is_file()):
        load_plain_data(path, [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address])


class DeepSpeedEngine:
    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, dist: DistInfo):
        import deepspeed

        self.cfg, self.dist = cfg, dist
        self.device = dist.device
        self.model = model  # the objective; under ZeRO-3 its parameters are partitioned by DeepSpeed
        self.config = deepspeed_config(cfg, dist.world_size)
        optimizer, scheduler = build_optimizer(model.to(self.device), cfg)
        self.engine, _, _, self.scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 lr_scheduler=scheduler, config=self.config)

    def train_step(self, micro_batches: list[Batch]) -> dict[str, float]:
        self.engine.train()
        weights = loss_weights(micro_batches, self.dist.world_size)
        metrics = MetricSums(self.dist.world_size)
        lr = self.scheduler.get_last_lr()[0]
        for batch, weight in zip(micro_batches, weights):
            out = self.engine(batch.to(self.device))
            self.engine.backward(out.loss.float() * weight, scale_wrt_gas=False)
            self.engine.step()  # DeepSpeed steps the optimizer and schedule at the accumulation boundary only
            metrics.add({"loss": out.loss, **out.metrics}, weight)
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        stats = metrics.means()
        applied = self.engine.was_step_applied()  # ZeRO 1-3 skip a step whose gradient norm is not finite
        finite = math.isfinite(stats["loss"]) and math.isfinite(grad_norm)
        # fp16: DeepSpeed's loss scaler skips overflowing steps while it calibrates (the loss itself is finite):
        # its own business, not a divergence
        calibrating = not applied and self.cfg.precision == "fp16" and math.isfinite(stats["loss"])
        if applied and not finite:
            raise RunError(f"DeepSpeed applied an optimizer step with a non-finite loss or gradient norm (ZeRO stage "
                           f"{self.cfg.zero_stage}, {self.cfg.precision}), so the weights may no longer be finite; "
                           f"ZeRO stages 1-3 skip such steps: use train.zero_stage=1, 2 or 3, or a lower train.lr")
        return {**stats, "lr": lr, "grad_norm": grad_norm, "skipped": float(not applied and not calibrating)}

    @torch.no_grad()
    def eval_forward(self, batch: Batch) -> Output:
        self.engine.eval()
        return self.engine(batch.to(self.device))

    def save_state(self, directory: Path) -> dict:
        """DeepSpeed's checkpoint (model, optimizer partitions, schedule) in directory/deepspeed; collective."""
        self.engine.save_checkpoint(str(Path(directory) / DS_DIR), tag=DS_TAG)
        return {"engine": "deepspeed", "zero_stage": self.cfg.zero_stage}

    def load_state(self, directory: Path, trainer_state: dict) -> None:
        """Weights, optimizer partitions and schedule from DeepSpeed's files in directory/deepspeed; collective."""
        if trainer_state.get("engine") != "deepspeed":
            raise ConfigError(f"{directory}: this checkpoint was written by the torch engine; resume it with "
                              f"train.engine=torch (or start a new run from it with model.init_from)")
        require_plain_data(Path(directory) / DS_DIR)
        path, _ = self.engine.load_checkpoint(str(Path(directory) / DS_DIR), tag=DS_TAG)
        if path is None:
            raise ConfigError(f"{directory}: no DeepSpeed checkpoint in {DS_DIR}/")

    def gathered(self):
        """Collective context in which `model` holds its full weights: ZeRO-3 gathers its partitions."""
        if self.cfg.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None)

    def consolidated_model(self, directory: Path, build) -> torch.nn.Module:
        """A CPU copy (`build()`, an unpartitioned module of the same kind) holding the full fp32 weights: the ZeRO
        partitions of the checkpoint just saved in `directory`, gathered; without ZeRO (fp32 only, see config
        validation) the module's own weights."""
        if self.cfg.zero_stage == 0:
            state = {k: v.float() for k, v in self.engine.module.state_dict().items()}
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(Path(directory) / DS_DIR), tag=DS_TAG)
        model = build()
        missing, unexpected = model.load_state_dict(state, strict=False)
        params = model.state_dict(keep_vars=True)
        loaded = {id(params[k]) for k in params if k not in missing}
        missing = [k for k in missing if id(params[k]) not in loaded]  # tied tensors are stored under one name
        if missing or unexpected:
            raise RuntimeError(f"consolidated weights do not match the model: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
        return model
