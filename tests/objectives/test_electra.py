"""ELECTRA: replaced-token labels, the generator's shape and sharing, HF layout, the loss, sampling, training."""
import copy
import dataclasses
import json
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO_ROOT, built, tiny_config

from lmssl.config import ConfigError, ModelConfig, TrainConfig, load_config
from lmssl.data.packing import Example
from lmssl.engine import TorchEngine
from lmssl.objectives.base import IGNORE_INDEX as I
from lmssl.objectives.electra import binary_auc, generator_config, replaced_token_inputs
from lmssl.training.loop import train

M = 4  # [MASK]


def test_replaced_token_labels_hand_computed():
    # originals [2 20 11 12 30 3] / [2 40 41 42 43 3]; chosen positions 1, 3, 4 / 2, 4; position 4 of row 0 kept
    input_ids = torch.tensor([[2, M, 11, M, 30, 3], [2, 40, M, 42, M, 3]])
    labels = torch.tensor([[I, 20, I, 12, 30, I], [I, I, 41, I, 43, I]])
    sampled = torch.tensor([20, 7, 31, 41, 44])  # flat order of the chosen positions
    disc_ids, replaced = replaced_token_inputs(input_ids, labels, sampled)
    assert disc_ids.tolist() == [[2, 20, 11, 7, 31, 3], [2, 40, 41, 42, 44, 3]]
    # ELECTRA §2: a sample equal to the original counts as original (row 0 pos 1, row 1 pos 2);
    # a kept position whose sample differs is replaced (row 0 pos 4)
    assert replaced.tolist() == [[False, False, False, True, True, False], [False, False, False, False, True, False]]


def test_disc_auc_is_the_mann_whitney_statistic():
    scores = torch.tensor([0.9, 0.1, 0.4, 0.4, 0.8, 0.3])
    positive = torch.tensor([True, False, True, False, False, True])
    # positive/negative pairs won: 0.9 beats all 3; 0.4 beats 0.1, ties 0.4 (1/2), loses to 0.8; 0.3 beats 0.1 only
    assert float(binary_auc(scores, positive)) == pytest.approx((3 + 1.5 + 1) / 9)
    assert float(binary_auc(scores, torch.zeros(6, dtype=torch.bool))) == 0.5  # one class only
    assert float(binary_auc(-scores, positive)) == pytest.approx(1 - (3 + 1.5 + 1) / 9)
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(2000, generator=g) < 0.15
    noisy = labels.float() + torch.randn(2000, generator=g)
    coarse = (noisy * 4).round() / 4  # many ties, as bf16 logits have
    sklearn = pytest.importorskip("sklearn.metrics")
    for s in (noisy, coarse):
        assert float(binary_auc(s, labels)) == pytest.approx(sklearn.roc_auc_score(labels.numpy(), s.numpy()), abs=1e-6)


def test_generator_config_is_electras():
    disc = ModelConfig(hidden_size=256, num_heads=4, ffn_size=1024, num_layers=4, vocab_size=100)
    g = generator_config(disc, 0.25)
    assert (g.hidden_size, g.num_heads, g.ffn_size, g.num_layers, g.embedding_size) == (64, 1, 256, 4, 256)
    base = ModelConfig(hidden_size=768, num_heads=12, ffn_size=3072, num_layers=12, vocab_size=100)
    g = generator_config(base, 1 / 3)  # ELECTRA-Base's generator: 256 hidden, 4 heads, FFN 1024
    assert (g.hidden_size, g.num_heads, g.ffn_size, g.embedding_size) == (256, 4, 1024, 768)
    shipped = load_config(REPO_ROOT / "configs" / "electra.yaml")  # the mini config: mlm.yaml's sizes, generator 1/4
    assert (shipped.model.hidden_size, shipped.model.num_layers, shipped.model.num_heads, shipped.data.seq_len) == (
        256, 4, 4, 128)
    g = generator_config(shipped.model, shipped.objective.generator_size)
    assert (g.hidden_size, g.num_heads, g.ffn_size, shipped.objective.disc_weight) == (64, 1, 256, 50.0)
    with pytest.raises(ConfigError, match="key 'objective.generator_size': gives a generator of hidden size 179"):
        tiny_config("electra", "unused", "model.hidden_size=256", "objective.generator_size=0.7")
    with pytest.raises(ConfigError, match="key 'objective.disc_weight': must be positive"):
        tiny_config("electra", "unused", "objective.disc_weight=0")


def build(tmp_path, *overrides):
    _, model, tok = built(tiny_config("electra", tmp_path, *overrides))
    return model, tok


def batch_of(model, tok, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.cat([torch.tensor([tok.cls_id]), torch.randint(10, tok.vocab_size, (62,), generator=g),
                       torch.tensor([tok.sep_id])]) for _ in range(4)]
    return model.collate([Example(r.numpy(), [64]) for r in rows], g)


def hf_electra(m: ModelConfig, kind: str):
    import transformers

    cfg = transformers.ElectraConfig(
        vocab_size=m.vocab_size, embedding_size=m.embedding_size or m.hidden_size, hidden_size=m.hidden_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, intermediate_size=m.ffn_size,
        max_position_embeddings=m.max_positions, type_vocab_size=m.type_vocab_size, hidden_act="gelu")
    return (transformers.ElectraForPreTraining if kind == "disc" else transformers.ElectraForMaskedLM)(cfg)


def test_generator_shares_the_embeddings_and_the_layout_is_hf_electras(data_root, tmp_path):
    pytest.importorskip("transformers")
    from hf_parity import hf_bert_shapes_with_fused_qkv

    model, _ = build(tmp_path)
    gen = model.generator
    assert (gen.trunk.embeddings is model.trunk.embeddings
            and gen.head.decoder.weight is model.trunk.word_embeddings.weight)
    assert (gen.trunk.cfg.hidden_size, gen.trunk.cfg.num_heads, len(gen.trunk.layers)) == (16, 1, 2)
    assert gen.trunk.embed_proj.in_features == 64 and model.trunk.embed_proj is None  # shared width 64 -> 16
    disc_params = list(model.trunk.parameters()) + list(model.head.parameters())
    hf_disc = hf_electra(model.cfg.model, "disc")
    assert Counter(tuple(p.shape) for p in disc_params) == hf_bert_shapes_with_fused_qkv(hf_disc)
    hf_gen = hf_electra(gen.trunk.cfg, "gen")
    shared = {id(p) for p in model.trunk.embeddings.parameters()}
    ours_gen = Counter(tuple(p.shape) for p in gen.parameters() if id(p) not in shared)
    hf_gen_own = hf_bert_shapes_with_fused_qkv(hf_gen) - Counter(
        tuple(p.shape) for p in hf_gen.electra.embeddings.parameters())
    assert ours_gen == hf_gen_own  # embeddings_project, encoder, generator_predictions, generator_lm_head bias
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in disc_params) + sum(
        math.prod(s) * n for s, n in ours_gen.items())


def test_loss_metrics_and_sampling(data_root, tmp_path):
    model, tok = build(tmp_path)
    model.eval()
    batch = batch_of(model, tok)
    where = batch.labels != I
    assert batch.num_targets == int(where.sum()) == 4 * 9  # round(15% of 62)
    shown = batch.input_ids[where]
    assert ((shown == tok.mask_id).float().mean() > 0.6
            and not torch.isin(batch.input_ids[~where], torch.tensor([M])).any())
    with torch.no_grad():
        out = model(batch)
        again = model(batch)
        other = model(dataclasses.replace(batch, sample_seed=batch.sample_seed + 1))
    m = out.metrics
    torch.testing.assert_close(out.loss, m["gen_loss"] + 50.0 * m["disc_loss"])
    assert all(torch.equal(m[k], again.metrics[k]) for k in m)  # sampling is seeded by the batch: reproducible
    assert not torch.equal(m["disc_loss"], other.metrics["disc_loss"])  # ... and a different seed samples differently
    assert m["gen_acc"] < 0.05 and m["gen_sampled_acc"] < 0.05  # an untrained generator: nearly every sample replaces
    # untrained discriminator: its logits hover around 0; accuracy counts all 4 x 64 tokens, ~14% replaced
    for k in ("disc_acc", "disc_precision", "disc_recall", "disc_auc"):
        assert 0.0 <= float(m[k]) <= 1.0


def test_a_diverged_generator_samples_and_its_step_is_skipped(data_root, tmp_path):
    """Non-finite generator logits (train.lr=1e6 gets there) used to stop torch.multinomial with a traceback; now the
    loss is non-finite and the engine skips the step, which the run's SkipGuard counts."""
    model, tok = build(tmp_path)
    batch = batch_of(model, tok)
    engine = TorchEngine(model, TrainConfig(max_steps=2, warmup_steps=0), device=torch.device("cpu"))
    with torch.no_grad():
        model.generator.head.dense.weight.fill_(float("inf"))  # every masked position's logits: NaN
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not math.isfinite(float(model(batch).loss))
    stats = engine.train_step([batch])
    assert stats["skipped"] == 1.0 and not math.isfinite(float(stats["loss"]))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing applied


def test_discriminator_gradient_never_reaches_the_generator(data_root, tmp_path):
    model, tok = build(tmp_path, "model.dropout=0.0", "model.attention_dropout=0.0")
    batch = batch_of(model, tok)
    model(batch).loss.backward()
    alone = copy.deepcopy(model)
    alone.zero_grad()
    where = batch.labels != I
    gen = alone.generator
    F.cross_entropy(gen.head(gen.trunk.forward_at(batch.input_ids, batch.spec, where)), batch.labels[where]).backward()
    shared = {id(p) for p in model.trunk.embeddings.parameters()}
    own = [(n, p) for n, p in model.generator.named_parameters() if id(p) not in shared]
    alone_params = dict(alone.generator.named_parameters())
    assert len(own) > 10
    for name, p in own:  # generator-only weights get exactly the gradient of the generator's MLM loss
        torch.testing.assert_close(p.grad, alone_params[name].grad, rtol=1e-5, atol=1e-7)
    assert model.trunk.embeddings.word.weight.grad.abs().sum() > 0


def test_checkpoint_round_trip_and_generator_pseudo_perplexity(data_root, tmp_path):
    from safetensors.torch import save_model

    from lmssl.evaluation.pseudo_perplexity import pseudo_perplexity
    from lmssl.model.weights import load_weights

    model, tok = build(tmp_path)
    (tmp_path / "ckpt").mkdir()
    save_model(model, str(tmp_path / "ckpt" / "model.safetensors"))
    fresh, _ = build(tmp_path)
    torch.manual_seed(1)
    for p in fresh.parameters():
        torch.nn.init.normal_(p)
    load_weights(fresh, tmp_path / "ckpt")  # raises on missing or unexpected tensors
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert fresh.generator.trunk.embeddings is fresh.trunk.embeddings
    result, _ = pseudo_perplexity(fresh.eval(), tok, ["the cat sat on the mat ."], max_length=64, stride=31)
    assert result["quantity"] == "pseudo-perplexity" and 1 < result["pppl"] < 10 * tok.vocab_size


@pytest.mark.slow
def test_electra_trains_on_wikitext(data_root, tmp_path):
    out = tmp_path / "electra"
    result = train(tiny_config("electra", out, "train.max_steps=12", "train.lr=3e-3",
                               "eval.batch_size=8", "eval.max_batches=2"))
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(steps) == 12
    for r in steps:
        assert r["loss"] == pytest.approx(r["gen_loss"] + 50 * r["disc_loss"], rel=1e-5)
        assert all(0 <= r[k] <= 1 for k in ("gen_acc", "disc_acc", "disc_precision", "disc_recall", "disc_auc"))
    first = sum(r["loss"] for r in steps[:4]) / 4
    last = sum(r["loss"] for r in steps[-4:]) / 4
    # from ln(8192) + 50 ln 2 = 43.7: the discriminator first learns that ~15% of tokens are replaced
    assert steps[0]["loss"] == pytest.approx(9.01 + 50 * math.log(2), abs=1.0)
    assert last < first - 5.0, (first, last)
    assert {"val_loss", "val_gen_acc", "val_disc_acc", "val_disc_precision", "val_disc_recall",
            "val_disc_auc"} <= set(result)
    assert result["val_disc_acc"] > 0.8  # at least the majority class (original)
