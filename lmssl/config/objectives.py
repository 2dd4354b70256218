"""The objectives' config sections (pure data) and the table from `objective.name` to its dataclass.

The four built-in objectives are here so that a YAML file parses without importing torch; an objective
added later registers its section with `lmssl.objectives.register`, which calls `register_objective_config`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from lmssl.config.sections import Config, ModelConfig, ObjectiveConfig

GENERATOR_HEAD_SIZE = 64  # ELECTRA's get_generator_config: num_heads = max(1, hidden // 64)
STS_TEST_SETS = ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb_test", "sickr")  # averaged into `avg`
STS_SETS = ("stsb_dev", *STS_TEST_SETS)  # STS-B dev is for model selection


def check_masking(ocfg, check) -> None:
    """The rules of BERT-style corruption settings (MLM and ELECTRA share them)."""
    check(0.0 < ocfg.mask_rate < 1.0, "objective.mask_rate", "must be in (0, 1)")
    check(ocfg.mask_token_prob >= 0 and ocfg.random_token_prob >= 0, "objective.mask_token_prob", "must be >= 0")
    check(ocfg.mask_token_prob + ocfg.random_token_prob <= 1.0, "objective.random_token_prob",
          "mask_token_prob + random_token_prob must be <= 1")


@dataclass
class MLMConfig(ObjectiveConfig):
    name: str = "mlm"  # masked language modelling
    mask_rate: float = 0.15  # fraction of maskable tokens chosen for prediction
    mask_token_prob: float = 0.8  # chosen tokens replaced by [MASK]
    random_token_prob: float = 0.1  # chosen tokens replaced by a random token; the rest stay unchanged
    whole_word: bool = False  # choose all sub-word pieces of a word together
    # second loss on [CLS] pairs: next-sentence (BERT) or sentence-order (ALBERT) prediction
    sentence_task: Literal["none", "nsp", "sop"] = "none"
    short_seq_prob: float = 0.1  # with a sentence task: share of documents whose pairs aim at a shorter length (BERT)

    def check(self, cfg: Config, check) -> None:
        check_masking(self, check)
        check(0.0 <= self.short_seq_prob <= 1.0, "objective.short_seq_prob", "must be in [0, 1]")
        if self.sentence_task != "none":
            task = f"objective.sentence_task={self.sentence_task}"
            check(cfg.model.type_vocab_size >= 2, "model.type_vocab_size",
                  f"{task} needs 2 token types (segments A and B), got {cfg.model.type_vocab_size}")
            check(not cfg.data.streaming, "data.streaming", f"{task} builds its pairs from the cached corpus; set "
                                                            f"data.streaming=false or objective.sentence_task=none")
            check(cfg.data.seq_len >= 5, "data.seq_len", f"{task} needs at least 5 tokens: [CLS] A [SEP] B [SEP]")


@dataclass
class CLMConfig(ObjectiveConfig):
    name: str = "clm"  # causal (next-token) language modelling

    def check(self, cfg: Config, check) -> None:
        check(not cfg.model.tie_embeddings or cfg.model.embedding_size in (0, cfg.model.hidden_size),
              "model.embedding_size", "a tied causal LM head needs embedding_size == hidden_size (or 0)")


@dataclass
class ElectraConfig(ObjectiveConfig):
    name: str = "electra"  # replaced-token detection with a small MLM generator (Clark et al. 2020)
    mask_rate: float = 0.15  # fraction of maskable tokens the generator predicts and may replace
    mask_token_prob: float = 0.85  # chosen tokens shown to the generator as [MASK] (ELECTRA's code: 85%)
    random_token_prob: float = 0.0  # chosen tokens shown as a random token; the rest stay unchanged
    generator_size: float = 0.25  # generator hidden size as a fraction of the discriminator's (§3.2: 1/4-1/2 best)
    disc_weight: float = 50.0  # lambda in L_MLM + lambda * L_Disc (§2: 50)

    def check(self, cfg: Config, check) -> None:
        check_masking(self, check)
        check(self.disc_weight > 0, "objective.disc_weight", "must be positive")
        check(0.0 < self.generator_size <= 1.0, "objective.generator_size", "must be in (0, 1]")
        g = generator_config(cfg.model, self.generator_size)
        check(g.hidden_size % g.num_heads == 0, "objective.generator_size",
              f"gives a generator of hidden size {g.hidden_size} (model.hidden_size x generator_size), which its "
              f"{g.num_heads} heads of ~{GENERATOR_HEAD_SIZE} do not divide; choose a size below "
              f"{2 * GENERATOR_HEAD_SIZE} or a multiple of {GENERATOR_HEAD_SIZE}")
        check(cfg.model.position != "rope" or (g.hidden_size // g.num_heads) % 2 == 0, "objective.generator_size",
              f"gives a generator head size of {g.hidden_size // g.num_heads}; rope needs an even one")


def generator_config(model: ModelConfig, ratio: float) -> ModelConfig:
    """ELECTRA's generator trunk: the discriminator's config narrowed to round(ratio x hidden), same depth, heads
    of 64, FFN in the same proportion to hidden (4x in BERT/ELECTRA), and the discriminator's embedding width
    (the embeddings are shared)."""
    hidden = max(1, round(model.hidden_size * ratio))
    return dataclasses.replace(model, hidden_size=hidden, num_heads=max(1, hidden // GENERATOR_HEAD_SIZE),
                               ffn_size=max(1, round(model.ffn_size * hidden / model.hidden_size)),
                               embedding_size=model.embedding_size or model.hidden_size)


@dataclass
class SimCSEConfig(ObjectiveConfig):
    name: str = "simcse"  # unsupervised SimCSE: contrastive sentence embeddings, dropout as augmentation
    temperature: float = 0.05  # t dividing the cosine similarities (SimCSE §3, Table D.1: 0.05)
    pooling: Literal["cls", "cls_before_pooler", "mean"] = "cls"  # cls: MLP on [CLS] while training only
    # keep a pretrained BERT pooler (dense + tanh; an imported model's pooler.dense) that this pooling does not use,
    # frozen, so that an export writes it back (sentence-transformers models such as MiniLM carry one)
    keep_pooler: bool = False
    # sentence-transformers' Normalize module: sentence embeddings scaled to unit length (cosines are unchanged);
    # set by an import whose modules.json has it, and written back by export
    normalize: bool = False
    # data.train's sentences: each line; WikiText's rule; text cut by a segmenter; auto = wikitext or else prose
    sentence_split: Literal["auto", "line", "wikitext", "prose"] = "auto"
    # STS set scored every eval.every steps and at the end; best weights kept in output_dir/best ("" = none)
    sts_eval: str = "stsb_dev"
    default_valid: ClassVar[str] = ""  # validated on STS, not on a text split

    def check(self, cfg: Config, check) -> None:
        check(self.temperature > 0, "objective.temperature", "must be positive")
        check(self.sts_eval in ("", *STS_SETS), "objective.sts_eval", f"choose one of {', '.join(STS_SETS)} or ''")
        check(not (self.keep_pooler and self.pooling == "cls"), "objective.keep_pooler",
              "must be false with objective.pooling=cls (its training MLP is the pooler already)")
        check(cfg.model.dropout > 0 or cfg.model.attention_dropout > 0, "model.dropout",
              "must be > 0: dropout is SimCSE's only augmentation (with none, both views are identical)")
        check(not cfg.data.streaming, "data.streaming",
              "simcse holds its sentences in memory; set data.streaming=false")
        check(not cfg.data.valid, "data.valid", "simcse is validated on STS (objective.sts_eval), not on a text "
                                                "split; set data.valid to ''")


OBJECTIVE_CONFIGS: dict[str, type[ObjectiveConfig]] = {
    "mlm": MLMConfig, "clm": CLMConfig, "electra": ElectraConfig, "simcse": SimCSEConfig}


def register_objective_config(name: str, cls: type[ObjectiveConfig]) -> None:
    OBJECTIVE_CONFIGS[name] = cls


def objective_config_class(name: str) -> type[ObjectiveConfig]:
    if name not in OBJECTIVE_CONFIGS:
        raise KeyError(f"unknown objective {name!r}; choose one of {', '.join(map(repr, OBJECTIVE_CONFIGS))}")
    return OBJECTIVE_CONFIGS[name]
