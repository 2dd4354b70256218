"""The Python API: open any model directory once (a run directory, a checkpoint, a Hugging Face directory, an
import), then ask for logits, hidden states, sentence embeddings or a perplexity, one line each. A thin layer over
ModelDir (lmssl.checkpoint.model_dir), the objective's language model, lmssl.downstream.sts.embed and
lmssl.evaluation.likelihood.evaluate_text; the examples below run as doctests (tests/inference/test_api.py).

    >>> from lmssl.inference.api import load
    >>> mlm = load("runs/mlm")                        # a masked model: [CLS] text [SEP]
    >>> mlm.hidden_states("the game 's battle system").shape   # [CLS] the game ' s battle system [SEP]
    torch.Size([8, 32])
    >>> mlm.logits("the game 's battle system").shape          # (tokens, vocabulary)
    torch.Size([8, 8192])
    >>> mlm.embeddings(["a first sentence .", "and another one ."]).shape   # its own pooling: [CLS]
    torch.Size([2, 32])
    >>> mlm.perplexity(["the game 's battle system is carried over ."])["pppl"] > 1   # pseudo-perplexity
    True
    >>> gpt = load("runs/clm")                        # a causal model: <|endoftext|> text, as in training
    >>> gpt.logits("the game 's battle system").shape          # row t: the distribution of token t + 1
    torch.Size([8, 8192])
    >>> gpt.perplexity(["the game 's battle system is carried over ."])["ppl"] > 1
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmssl.checkpoint.model_dir import ModelDir
from lmssl.data.tokenizer import TextTokenizer
from lmssl.downstream.sts import embed
from lmssl.errors import ConfigError
from lmssl.evaluation.likelihood import evaluate_text
from lmssl.model.attention import AttnSpec
from lmssl.objectives import Objective


@dataclass(frozen=True)
class LoadedModel:
    source: ModelDir  # the directory read: its config and tokenizer
    objective: Objective  # the model, weights loaded, in eval mode

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.source.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.objective.parameters()).device

    def token_ids(self, text: str) -> torch.Tensor:
        """(1, T) ids as the model saw text in training: [CLS] text [SEP] (encoders), <|endoftext|> text (causal)."""
        ids = self.tokenizer.encode_batch([text])[0]
        if self.objective.causal:
            ids = [self.objective.packing_ids(self.tokenizer)[0], *ids]
        else:
            ids = [self.tokenizer.cls_id, *ids, self.tokenizer.sep_id]
        return torch.tensor([ids], device=self.device)

    @torch.inference_mode()
    def hidden_states(self, text: str) -> torch.Tensor:
        """(T, hidden) final hidden states of the downstream encoder (Objective.encoder) at every token."""
        return self.objective.encoder()(self.token_ids(text), AttnSpec.dense(self.objective.causal))[0]

    @torch.inference_mode()
    def logits(self, text: str) -> torch.Tensor:
        """(T, vocabulary) logits of the model's language model (ELECTRA: its generator) at every token: the next
        token's for a causal model, the token's own for a masked one."""
        lm = self.objective.language_model()
        if lm is None:
            raise ConfigError(f"{self.source.path}: objective '{self.source.config.objective.name}' has no language "
                              f"model (no vocabulary logits); use hidden_states or embeddings")
        return lm.head(lm.trunk(self.token_ids(text), AttnSpec.dense(lm.kind == "causal")))[0]

    @torch.inference_mode()
    def embeddings(self, texts: list[str], pooling: str = "auto", batch_size: int = 64) -> torch.Tensor:
        """(N, hidden) sentence embeddings with the model's own pooling (Objective.sentence_pooling; a
        sentence-transformers import: its mean and, when it declares Normalize, unit length) or `pooling`."""
        own = pooling == "auto"
        vectors = embed(self.objective.encoder(), self.tokenizer, texts,
                        self.objective.sentence_pooling() if own else pooling, causal=self.objective.causal,
                        max_len=self.source.config.model.max_positions, batch_size=batch_size)
        return F.normalize(vectors, dim=-1) if own and self.objective.normalizes_embeddings() else vectors

    def perplexity(self, documents: list[str], max_length: int = 0, stride: int = 0) -> dict:
        """Sliding-window perplexity (causal) or pseudo-perplexity (masked) of the documents, as `lmssl eval ppl`
        / `lmssl eval pppl` compute it (windows of the training length unless given)."""
        return evaluate_text(self.objective, self.tokenizer, self.source.config, documents, max_length=max_length,
                             stride=stride)


def load(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Any model directory lmssl reads (run, checkpoint, Hugging Face directory), its weights on `device`."""
    source = ModelDir.open(path)
    return LoadedModel(source, source.objective(device))
