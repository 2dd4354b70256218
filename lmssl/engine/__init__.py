from lmssl.config import TrainConfig
from lmssl.distributed import DistInfo
from lmssl.engine.torch_engine import TorchEngine

__all__ = ["TorchEngine", "build_engine", "require_engine"]


def require_engine(cfg: TrainConfig) -> None:
    """Before any work: the chosen engine can be built here (DeepSpeed is installed)."""
    if cfg.engine == "deepspeed":
        from lmssl.engine.deepspeed_engine import require_deepspeed

        require_deepspeed()


def build_engine(objective, cfg: TrainConfig, dist: DistInfo):
    """`train.engine`: TorchEngine (DDP under torchrun) or DeepSpeedEngine (imported only when chosen)."""
    if cfg.engine == "deepspeed":
        from lmssl.engine.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(objective, cfg, dist)
    return TorchEngine(objective, cfg, dist)
