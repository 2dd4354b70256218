from lmssl.model.attention import AttnSpec, build_attention_backend
from lmssl.model.transformer import Embeddings, Transformer

__all__ = ["AttnSpec", "Embeddings", "Transformer", "build_attention_backend"]
