from lmssl.engine.torch_engine import TorchEngine

__all__ = ["TorchEngine"]
