"""A fine-tuned classifier (`lmssl finetune`'s best/) as transformers' *ForSequenceClassification:

    encoder with the BERT pooler (fine-tuning)   BertForSequenceClassification (bert.pooler + classifier)
    modernbert preset, its pooler on [CLS]       ModernBertForSequenceClassification (head + classifier)
    causal encoder, last token                   GPT2ForSequenceClassification (score: a bias-free layer)
    llama preset (no biases), last token         LlamaForSequenceClassification (score: a bias-free layer)

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
from lmssl.interop.hf.adapter import (
    Target,
    check_bert_like,
    check_blocks,
    check_gpt2_like,
    check_llama,
    check_modernbert,
    refuse,
)
from lmssl.interop.hf.rules import (
    Rule,
    bert_trunk_rules,
    copy_rules,
    gpt2_trunk_rules,
    llama_trunk_rules,
    modernbert_trunk_rules,
    norm_rules,
)


def classifier_target(cfg: Config, info: dict) -> Target:
    m = cfg.model
    if info.get("mean_pooling"):
        raise ConfigError("cannot export: this classifier reads the mean of the tokens' states (finetune.pooling), "
                          "and transformers' *ForSequenceClassification read [CLS] (or the last token); fine-tune "
                          "with finetune.pooling=cls to export")
    if info["causal"] and m.preset == "llama":
        arch = "LlamaForSequenceClassification"
        check_llama(m, arch)
        refuse(not m.bias, "model.bias", m.bias, f"{arch}'s score layer has no bias, and RMSNorm none to fold it into")
        return Target("", arch, "llama", m, llama_trunk_rules(m, "encoder.", "model.")
                      + [Rule("head.weight", ("score.weight",))])
    if info["causal"]:
        arch = "GPT2ForSequenceClassification"
        check_gpt2_like(m, arch)
        rules = gpt2_trunk_rules(m, "encoder.", "transformer.") + [Rule("head.weight", ("score.weight",))]
        return Target("", arch, "gpt2", m, rules)
    arch = "ModernBertForSequenceClassification" if m.preset == "modernbert" else "BertForSequenceClassification"
    if not info["use_pooler"]:
        raise ConfigError(f"cannot export: this {info.get('mode', 'probe')} reads the raw [CLS] state, and {arch} "
                          f"always applies its pooler; export a fine-tuned (not probed) model")
    if m.preset == "modernbert":
        check_modernbert(m, arch)
        check_blocks(m, arch, pooler="head")
        rules = (modernbert_trunk_rules(m, "encoder.", "model.") + copy_rules("pooler.dense", "head.dense", bias=m.bias)
                 + norm_rules(m, "pooler.norm", "head.norm") + copy_rules("head", "classifier"))
        return Target("", arch, "modernbert", m, rules)
    check_bert_like(m, arch)
    check_blocks(m, arch, pooler="tanh")
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
