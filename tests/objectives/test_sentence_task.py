"""MLM + next-sentence / sentence-order prediction: batches, the loss, HF BertForPreTraining parity, training."""
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import built, tiny_config

from lmssl.config import ConfigError
from lmssl.data.sentence_pairs import PairExample
from lmssl.objectives.base import IGNORE_INDEX
from lmssl.training.loop import train


def build(tmp_path, *overrides):
    _, model, tok = built(tiny_config("mlm", tmp_path, *overrides))
    return model, tok


def pair(tok, a: list[int], b: list[int], seq_len: int, label: int) -> PairExample:
    ids = [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
    real = len(ids)
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (seq_len - real)
    return PairExample(np.array(ids + [tok.pad_id] * (seq_len - real)),
                       [real, seq_len - real] if real < seq_len else [real], np.array(types), label)


def examples(tok, seq_len=64):
    g = np.random.default_rng(0)

    def words(n):
        return g.integers(10, tok.vocab_size, n).tolist()

    return [pair(tok, words(20), words(30), seq_len, 0), pair(tok, words(5), words(7), seq_len, 1),
            pair(tok, words(40), words(21), seq_len, 1), pair(tok, words(9), words(50), seq_len, 0)]


def test_pair_batches_carry_token_types_padding_and_labels(data_root, tmp_path):
    model, tok = build(tmp_path)
    assert model.sentence_task == "nsp"  # the tests' MLM is BERT's (configs/mlm-nsp.yaml): MLM + NSP
    exs = examples(tok)
    batch = model.collate(exs, torch.Generator().manual_seed(0))
    real = torch.tensor([[i < ex.doc_lengths[0] for i in range(64)] for ex in exs])
    assert torch.equal(batch.spec.key_padding_mask, real)
    assert torch.equal(batch.token_type_ids, torch.from_numpy(np.stack([ex.token_type_ids for ex in exs])))
    assert batch.sentence_labels.tolist() == [0, 1, 1, 0]
    original = torch.from_numpy(np.stack([ex.input_ids for ex in exs]))
    special = torch.isin(original, torch.tensor(tok.special_ids))  # [CLS], [SEP], [PAD]
    assert special.sum() == 3 * 4 + (~real).sum()
    assert (batch.labels[special] == IGNORE_INDEX).all() and torch.equal(batch.input_ids[special], original[special])
    for row, ex in enumerate(exs):  # BERT's count: round(15%) of the row's non-special tokens
        n = ex.doc_lengths[0] - 3
        assert int((batch.labels[row] != IGNORE_INDEX).sum()) == max(1, int(n * 0.15 + 0.5))
    assert batch.num_targets == int((batch.labels != IGNORE_INDEX).sum())
    packed = build(tmp_path, "data.document_mask=true")[0].collate(exs, torch.Generator().manual_seed(0))
    assert packed.spec.cu_seqlens.tolist() == [0, 53, 64, 79, 128, 192, 254, 256]  # each padding is a "document"
    with pytest.raises(TypeError, match="needs sentence-pair examples"):
        from lmssl.data.packing import Example
        model.collate([Example(ex.input_ids, [64]) for ex in exs], torch.Generator())


def test_loss_is_mlm_plus_sentence_loss_on_the_pooled_cls(data_root, tmp_path):
    model, tok = build(tmp_path)
    model.eval()
    batch = model.collate(examples(tok), torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(batch)
        hidden = model.trunk(batch.input_ids, batch.spec, batch.token_type_ids)  # the full (B, T, H) path
        where = batch.labels != IGNORE_INDEX
        mlm = F.cross_entropy(model.head(hidden[where]), batch.labels[where])
        logits = model.seq_relationship(torch.tanh(model.pooler.dense(hidden[:, 0])))
        nsp = F.cross_entropy(logits, batch.sentence_labels)
    torch.testing.assert_close(out.metrics["mlm_loss"], mlm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["nsp_loss"], nsp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, mlm + nsp, rtol=1e-5, atol=1e-5)
    assert out.metrics["nsp_acc"] == (logits.argmax(-1) == batch.sentence_labels).float().mean()
    packed_model = build(tmp_path, "data.document_mask=true")[0].eval()
    packed_model.load_state_dict(model.state_dict())
    with torch.no_grad():  # padding as a separate document == padding masked out
        packed = packed_model(packed_model.collate(examples(tok), torch.Generator().manual_seed(0)))
    torch.testing.assert_close(packed.loss, out.loss, rtol=1e-5, atol=1e-5)


def hf_bert_for_pretraining(m):
    import transformers

    return transformers.BertForPreTraining(transformers.BertConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads, intermediate_size=m.ffn_size, max_position_embeddings=m.max_positions,
        type_vocab_size=m.type_vocab_size, hidden_act="gelu", layer_norm_eps=m.norm_eps, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager")).eval()


def test_parameters_are_hf_bert_for_pretraining_renamed(data_root, tmp_path):
    pytest.importorskip("transformers")
    from hf_parity import copy_into, hf_bert_shapes_with_fused_qkv, load_from_hf_bert, randomise_hf

    model, tok = build(tmp_path, "model.dropout=0.0", "model.attention_dropout=0.0")
    hf = hf_bert_for_pretraining(model.cfg.model)
    ours = Counter(tuple(p.shape) for p in model.parameters())
    assert ours == hf_bert_shapes_with_fused_qkv(hf)  # BertForMaskedLM's + bert.pooler.dense + cls.seq_relationship
    randomise_hf(hf)
    load_from_hf_bert(model, hf)
    with torch.no_grad():
        copy_into(model.pooler.dense.weight, hf.bert.pooler.dense.weight)
        copy_into(model.pooler.dense.bias, hf.bert.pooler.dense.bias)
        copy_into(model.seq_relationship.weight, hf.cls.seq_relationship.weight)
        copy_into(model.seq_relationship.bias, hf.cls.seq_relationship.bias)
    model.eval()
    batch = model.collate(examples(tok), torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(input_ids=batch.input_ids, token_type_ids=batch.token_type_ids,
                      attention_mask=batch.spec.key_padding_mask.long(), labels=batch.labels,
                      next_sentence_label=batch.sentence_labels)
        got = model(batch)
        hidden = model.trunk(batch.input_ids, batch.spec, batch.token_type_ids)
        logits = model.seq_relationship(model.pooler(hidden[:, 0]))
    torch.testing.assert_close(logits, expected.seq_relationship_logits, rtol=0, atol=1e-5)
    assert (logits[:, 0] - logits[:, 1]).std() > 0.01  # the rows differ: the pooled [CLS] reads the pair
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-5)  # HF: MLM + NSP cross-entropies


def test_sentence_task_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="key 'data.streaming'.*objective.sentence_task=none"):
        tiny_config("mlm", tmp_path, "data.streaming=true")
    with pytest.raises(ConfigError,
                       match="key 'model.type_vocab_size': objective.sentence_task=sop needs 2 token types"):
        tiny_config("mlm", tmp_path, "objective.sentence_task=sop", "model.type_vocab_size=0")
    with pytest.raises(ConfigError, match="key 'objective.sentence_task': invalid value 'next'"):
        tiny_config("mlm", tmp_path, "objective.sentence_task=next")
    assert tiny_config("mlm", tmp_path, "data.streaming=true", "objective.sentence_task=none").data.streaming


@pytest.mark.slow
def test_sop_trains_on_wikitext(data_root, tmp_path):
    out = tmp_path / "sop"
    result = train(tiny_config("mlm", out, "objective.sentence_task=sop", "train.max_steps=12", "train.lr=3e-3",
                               "eval.batch_size=8", "eval.max_batches=2"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 12 and all(math.isfinite(r["loss"]) and 0 <= r["sop_acc"] <= 1 for r in steps)
    for r in steps:
        assert r["loss"] == pytest.approx(r["mlm_loss"] + r["sop_loss"], rel=1e-5)
    first = sum(r["loss"] for r in steps[:4]) / 4
    last = sum(r["loss"] for r in steps[-4:]) / 4
    assert last < first - 0.5, (first, last)  # from ln(8192) + ln(2) = 9.7 towards unigram statistics
    assert {"val_loss", "val_mlm_loss", "val_mlm_acc", "val_sop_loss", "val_sop_acc"} <= set(result)
    assert result["val_loss"] == pytest.approx(result["val_mlm_loss"] + result["val_sop_loss"], rel=1e-5)
