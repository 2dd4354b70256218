"""TorchEngine: AdamW + warmup/decay schedule, gradient accumulation, clipping, optional bf16 autocast.

The training loop only calls `train_step`, `eval_forward`, `state_dict` and `load_state_dict`."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from lmssl.config import TrainConfig
from lmssl.objectives.base import Batch, Objective, Output


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on norms, biases and embeddings (BERT, GPT-2 practice).
    A tied output projection shares the embedding's tensor, so it is not decayed either."""
    no_decay: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, (nn.LayerNorm, nn.Embedding)) or name == "bias":
                no_decay.add(id(p))
    params = [p for p in model.parameters() if p.requires_grad]  # shared tensors appear once
    return [{"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}]


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr for optimizer step `step` (0-based): linear warmup, then decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    shape = 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.final_lr_ratio + (1.0 - cfg.final_lr_ratio) * shape


class TorchEngine:
    def __init__(self, model: Objective, cfg: TrainConfig, device: torch.device | None = None):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device)
        self.cfg = cfg
        self.optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr,
                                           betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_multiplier(s, cfg))

    def autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, micro_batches: list[Batch]) -> dict[str, float]:
        """One optimizer step over the micro-batches. Each micro-batch loss is weighted by its
        share of targets, so accumulation equals one large batch."""
        self.model.train()
        total = sum(b.num_targets for b in micro_batches)
        sums: dict[str, float] = {}
        for batch in micro_batches:
            batch = batch.to(self.device)
            with self.autocast():
                out = self.model(batch)
            weight = batch.num_targets / total
            (out.loss * weight).backward()
            for k, v in {"loss": out.loss, **out.metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * weight
        lr = self.scheduler.get_last_lr()[0]
        max_norm = self.cfg.clip_grad if self.cfg.clip_grad > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {**sums, "lr": lr, "grad_norm": float(grad_norm)}

    @torch.no_grad()
    def eval_forward(self, batch: Batch) -> Output:
        self.model.eval()
        with self.autocast():
            return self.model(batch.to(self.device))

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
