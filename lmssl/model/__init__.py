from lmssl.model.attention import AttnSpec
from lmssl.model.backends import build_attention_backend
from lmssl.model.transformer import Embeddings, Transformer

__all__ = ["AttnSpec", "Embeddings", "Transformer", "build_attention_backend"]
