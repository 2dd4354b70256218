"""TorchEngine: AdamW (or Muon for the blocks' matrices + AdamW) + warmup/decay schedule, gradient accumulation,
clipping, optional bf16 autocast, and DistributedDataParallel when launched with torchrun.

Both engines share one interface: `train_step`, `eval_forward`, `save_state` / `load_state` (everything a resume
needs, weights included), `consolidated_model` (the full weights, for model.safetensors) and `gathered`;
`model` is the module itself (unwrapped): an objective, or a classifier when fine-tuning."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from lmssl.config import TrainConfig
from lmssl.distributed import DistInfo
from lmssl.engine.accumulation import MetricSums, loss_weights
from lmssl.errors import ConfigError
from lmssl.model.batch import Batch, Output
from lmssl.model.transformer import Block
from lmssl.model.weights import load_weights


def parameter_groups(model: nn.Module, weight_decay: float, exclude: frozenset[int] = frozenset(),
                     peak_lrs: dict[int, float] | None = None) -> list[dict]:
    """AdamW groups: no decay on norms, biases and embeddings (BERT, GPT-2 practice); the parameters whose id is in
    `exclude` (Muon's) are left out. A tied output projection shares the embedding's tensor, so it is not decayed
    either. `peak_lrs` (parameter id -> its own peak lr; the optimizer's where absent) splits the groups further
    (fine-tuning's layer-wise decay)."""
    no_decay: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.Embedding)) or name == "bias":
                no_decay.add(id(p))
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in exclude]  # shared tensors appear once
    lrs = peak_lrs or {}
    groups: dict[tuple[bool, float | None], list] = {(True, None): [], (False, None): []}  # the plain two, always
    for p in params:
        groups.setdefault((id(p) not in no_decay, lrs.get(id(p))), []).append(p)
    out = []
    for (decayed, lr), ps in groups.items():
        group = {"params": ps, "weight_decay": weight_decay if decayed else 0.0}
        out.append(group if lr is None else {**group, "lr": lr})
    return out


def muon_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What Muon steps: the 2-D weight matrices of the transformer blocks (attention qkv/out, feed-forward in/out),
    of every trunk the model holds (ELECTRA's generator's too); embeddings, norms, biases and heads stay with AdamW."""
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, Block):
            found.update((id(p), p) for p in module.parameters() if p.ndim == 2 and p.requires_grad)
    return list(found.values())


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based): linear warmup, then the schedule. It reads
    cfg.max_steps at each call: train.max_minutes decides it after the run's first steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    start = cfg.warmup_steps  # where the decay starts: after warmup, or (wsd) decay_fraction before the end
    if cfg.schedule == "wsd":
        start = max(cfg.warmup_steps, cfg.max_steps - round(cfg.decay_fraction * cfg.max_steps))
        if step < start:
            return 1.0
    progress = min(1.0, (step - start) / max(1, cfg.max_steps - start))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return cfg.final_lr_ratio + (1.0 - cfg.final_lr_ratio) * shape


def autocast(device: torch.device, precision: str):
    """bf16 autocast (weights stay fp32) on `device`, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def scheduled(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, cfg))


def build_optimizer(model: nn.Module, cfg: TrainConfig, exclude: frozenset[int] = frozenset(),
                    lr_scales: dict[int, float] | None = None) -> tuple[torch.optim.Optimizer,
                                                                        torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `parameter_groups` (less `exclude`; `lr_scales` per parameter) and the warmup/decay schedule: the
    same for both engines."""
    peak_lrs = {k: cfg.lr * scale for k, scale in (lr_scales or {}).items()}
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay, exclude, peak_lrs), lr=cfg.lr,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    return optimizer, scheduled(optimizer, cfg)


def build_optimizers(model: nn.Module, cfg: TrainConfig, lr_scales: dict[int, float] | None = None
                     ) -> dict[str, tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]]:
    """train.optimizer's optimizers by name, each with the same warmup/decay schedule (a multiplier of its own
    peak lr): {"adamw"} alone (`lr_scales`: per-parameter factors of its lr), or with muon {"muon": the block
    matrices at train.muon_lr, "adamw": the rest}."""
    if cfg.optimizer == "adamw":
        return {"adamw": build_optimizer(model, cfg, lr_scales=lr_scales)}
    if lr_scales:
        raise ConfigError("per-parameter learning rates (layer-wise decay) need train.optimizer adamw")
    matrices = muon_parameters(model)
    muon = torch.optim.Muon(matrices, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay)
    return {"adamw": build_optimizer(model, cfg, frozenset(id(p) for p in matrices)),
            "muon": (muon, scheduled(muon, cfg))}


class TorchEngine:
    def __init__(self, model: nn.Module, cfg: TrainConfig, dist: DistInfo | None = None,
                 device: torch.device | None = None, lr_scales: dict[int, float] | None = None):
        self.dist = dist or DistInfo()
        self.device = device or self.dist.device
        self.model = model.to(self.device)
        self.cfg = cfg
        self.optimizers = build_optimizers(model, cfg, lr_scales)  # name -> (optimizer, its schedule)
        self.ddp = None
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            devices = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=devices)

    def autocast(self):
        return autocast(self.device, self.cfg.precision)

    def train_step(self, micro_batches: list[Batch]) -> dict:
        """One optimizer step over this process's micro-batches (see lmssl.engine.accumulation). The loss and
        metrics stay device tensors; the host waits once, for whether the loss and the gradient norm were finite:
        a step that was not is not applied (`skipped` 1.0) and leaves the schedule where it is, as DeepSpeed does."""
        self.model.train()
        weights = loss_weights(micro_batches, self.dist.world_size)
        metrics = MetricSums(self.dist.world_size)
        forward = self.ddp or self.model
        for i, (batch, weight) in enumerate(zip(micro_batches, weights)):
            batch = batch.to(self.device)
            last = i == len(micro_batches) - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:  # DDP all-reduces the gradients once, in the last micro-batch's backward
                with self.autocast():
                    out = forward(batch)
                (out.loss * weight).backward()
            metrics.add({"loss": out.loss, **out.metrics}, weight)
        lrs = {f"{name}_lr" if name != "adamw" else "lr": schedule.get_last_lr()[0]
               for name, (_, schedule) in self.optimizers.items()}
        max_norm = self.cfg.clip_grad if self.cfg.clip_grad > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        stats = metrics.means()  # the same on every process (all-reduced), as is grad_norm after DDP's all-reduce
        applied = bool(torch.isfinite(stats["loss"]) & torch.isfinite(grad_norm))  # the step's one host sync
        for optimizer, schedule in self.optimizers.values():
            if applied:
                optimizer.step()
                schedule.step()
            optimizer.zero_grad(set_to_none=True)
        return {**stats, **lrs, "grad_norm": grad_norm.detach(), "skipped": float(not applied)}

    @torch.no_grad()
    def eval_forward(self, batch: Batch) -> Output:
        self.model.eval()
        with self.autocast():
            return self.model(batch.to(self.device))

    def save_state(self, directory) -> dict:
        """Engine state for trainer_state.pt (every process holds the same replicated state): AdamW's under
        `optimizer` and `scheduler` (the keys of every release), Muon's under `muon_optimizer` and `muon_scheduler`."""
        state = {}
        for name, (optimizer, schedule) in self.optimizers.items():
            prefix = "" if name == "adamw" else f"{name}_"
            state.update({f"{prefix}optimizer": optimizer.state_dict(), f"{prefix}scheduler": schedule.state_dict()})
        return {"engine": state}

    def load_state(self, directory, trainer_state: dict) -> None:
        """The weights of directory/model.safetensors, then the optimizer and schedule of trainer_state."""
        state = trainer_state["engine"]
        if not isinstance(state, dict):
            raise ConfigError(f"{directory}: this checkpoint was written by the {state} engine; resume it with "
                              f"train.engine={state} (or start a new run from it with model.init_from)")
        load_weights(self.model, directory)
        for name, (optimizer, schedule) in self.optimizers.items():
            prefix = "" if name == "adamw" else f"{name}_"
            if f"{prefix}optimizer" not in state:  # the config check refuses a changed train.optimizer first
                raise ConfigError(f"{directory}: its trainer state holds no {name} optimizer; resume it with the "
                                  f"train.optimizer it was trained with")
            optimizer.load_state_dict(state[f"{prefix}optimizer"])
            schedule.load_state_dict(state[f"{prefix}scheduler"])

    def consolidated_model(self, directory, build) -> nn.Module:
        """The module holding the full weights to write as model.safetensors: the live one here."""
        return self.model

    def gathered(self):
        """A context in which `model` holds its full weights (always, here; ZeRO-3 gathers them)."""
        return contextlib.nullcontext()
