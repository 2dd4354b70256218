import torch
import torch._inductor.config

from lmssl.config import TrainConfig
from lmssl.distributed import DistInfo
from lmssl.engine.torch_engine import TorchEngine

__all__ = ["TorchEngine", "build_engine", "compile_in_place", "require_engine"]


def require_engine(cfg: TrainConfig) -> None:
    """Before any work: the chosen engine can be built here (DeepSpeed is installed)."""
    if cfg.engine == "deepspeed":
        from lmssl.engine.deepspeed_engine import require_deepspeed

        require_deepspeed()


def build_engine(objective, cfg: TrainConfig, dist: DistInfo):
    """`train.engine`: TorchEngine (DDP under torchrun) or DeepSpeedEngine (imported only when chosen)."""
    if cfg.compile:
        compile_in_place(objective)
    if cfg.engine == "deepspeed":
        from lmssl.engine.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(objective, cfg, dist)
    return TorchEngine(objective, cfg, dist)


def compile_in_place(model: torch.nn.Module, backend: str = "inductor") -> None:
    """torch.compile `model`'s forward (its state_dict keys unchanged). Data-dependent shapes (MLM's masked rows)
    split the graph and recompile once as dynamic; a frame the backend cannot compile (no C++ compiler, an
    unsupported op) falls back to eager with a warning instead of stopping the run. Dropout draws from torch's
    generator as in eager (fallback_random): inductor's own CPU random numbers are about twice as slow, and this way
    a compiled run draws the same masks as an eager one."""
    torch._dynamo.config.suppress_errors = True
    torch._inductor.config.fallback_random = True
    model.compile(backend=backend)
