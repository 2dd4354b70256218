"""A fine-tuned classifier (`lmssl finetune`'s best/) as transformers' *ForSequenceClassification:

    encoder with the BERT pooler (fine-tuning)   BertForSequenceClassification (bert.pooler + classifier)
    causal encoder, last token                   GPT2ForSequenceClassification (score: a bias-free layer)

GPT-2's score layer has no bias; ours is folded into the final LayerNorm's bias (b_ln + W⁺b), which changes
nothing else because that model reads the last hidden state only through `score`. transformers finds the last
token by a padding id, and the end-of-text token that ends every example cannot be it, so the export sets none:
batch one text at a time there. A linear probe on the raw [CLS] state has no BERT architecture (its pooler
always applies) and is refused."""
from __future__ import annotations

from typing import Any

import torch

from lmssl.config import Config
from lmssl.errors import ConfigError
from lmssl.interop.hf.adapter import Target, check_bert_like, refuse
from lmssl.interop.hf.rules import Rule, bert_trunk_rules, copy_rules, gpt2_trunk_rules


def classifier_target(cfg: Config, info: dict) -> Target:
    m = cfg.model
    if info["causal"]:
        arch = "GPT2ForSequenceClassification"
        refuse(m.position == "learned", "model.position", m.position, f"{arch} has learned absolute positions only")
        refuse(m.norm == "pre", "model.norm", m.norm, f"{arch} is pre-LN (with a final LayerNorm)")
        refuse(m.type_vocab_size == 0, "model.type_vocab_size", m.type_vocab_size, f"{arch} has no token types")
        refuse(m.embedding_size in (0, m.hidden_size), "model.embedding_size", m.embedding_size,
               f"{arch} has no factorised embeddings")
        rules = gpt2_trunk_rules(m, "encoder.", "transformer.") + [Rule("head.weight", ("score.weight",))]
        return Target("", arch, "gpt2", m, rules)
    arch = "BertForSequenceClassification"
    if not info["use_pooler"]:
        raise ConfigError(f"cannot export: this {info.get('mode', 'probe')} reads the raw [CLS] state, and {arch} "
                          f"always applies its pooler; export a fine-tuned (not probed) model")
    check_bert_like(m, arch)
    rules = (bert_trunk_rules(m, "encoder.", "bert.") + copy_rules("pooler.dense", "bert.pooler.dense")
             + copy_rules("head", "classifier"))
    return Target("", arch, "bert", m, rules)


def fold_head_bias(tensors: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """GPT-2: score(LN(x)) + b == score(LN'(x)) with LN's bias + W⁺b (exact for W of full row rank)."""
    weight, bias = state["head.weight"].double(), state["head.bias"].double()
    shift = torch.linalg.pinv(weight) @ bias  # (hidden,)
    tensors["transformer.ln_f.bias"] = (tensors["transformer.ln_f.bias"].double() + shift).float().contiguous()


def classifier_config(info: dict) -> dict[str, Any]:
    labels = info["card"]["labels"]
    extra: dict[str, Any] = {"problem_type": "regression" if labels is None else "single_label_classification",
                             "num_labels": 1 if labels is None else len(labels)}
    if labels is not None:
        extra["id2label"] = {str(i): label for i, label in enumerate(labels)}
        extra["label2id"] = {label: i for i, label in enumerate(labels)}
    if info["causal"]:
        extra["pad_token_id"] = None
    return extra
