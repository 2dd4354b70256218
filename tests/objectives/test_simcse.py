import json
import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import open_model, save_model, tiny_config
from safetensors.torch import load_file

from lmssl.checkpoint.format import BestCheckpoint, latest_checkpoint
from lmssl.checkpoint.model_dir import ModelDir
from lmssl.config import ConfigError, load_config
from lmssl.data import load_tokenizer
from lmssl.data.corpus import Corpus
from lmssl.data.loader import SequenceLoader
from lmssl.data.sentence_split import split_wikitext
from lmssl.data.sentences import SentenceDataset, iter_sentences, pad_sentences, tokenize_sentences
from lmssl.objectives import OBJECTIVES, build_objective
from lmssl.objectives.simcse import contrastive_loss, gather_from_all_ranks
from lmssl.training.loop import train
from lmssl.training.prepare import initialise_from, with_vocab

SIMCSE_TINY = ["data.valid=", "model.init_from=", "data.seq_len=32", "train.batch_size=16", "train.warmup_steps=0"]


# --- the loss -------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [2, 8, 64])
def test_loss_is_log_batch_size_when_all_embeddings_are_equal(batch):
    # every logit is cos = 1 over t: the softmax is uniform over the batch, so l_i = log(batch) for all i
    z = torch.randn(1, 16).expand(batch, 16)
    loss, metrics = contrastive_loss(z, 3.0 * z, temperature=0.05)  # cosine ignores the scale
    assert math.isclose(float(loss), math.log(batch), rel_tol=1e-5)
    assert math.isclose(float(metrics["pos_cos"]), 1.0, rel_tol=1e-5)
    assert math.isclose(float(metrics["neg_cos"]), 1.0, rel_tol=1e-5)


def test_loss_of_orthogonal_views_by_hand():
    # z1 = z2 = I (4 x 4): logits are 1/t on the diagonal and 0 elsewhere, so l = log(1 + 3 exp(-1/t))
    z = torch.eye(4)
    for t in (0.25, 1.0):
        loss, metrics = contrastive_loss(z, z, temperature=t)
        assert math.isclose(float(loss), math.log(1 + 3 * math.exp(-1 / t)), rel_tol=1e-5)
        assert float(metrics["simcse_acc"]) == 1.0 and float(metrics["neg_cos"]) == 0.0
    # swapping the positives of anchors 0 and 1: their positive logit is 0 and a negative is 1/t
    # (t = 1): anchor 0 has logits (0, 1, 0, 0) and label 0 -> log(3 + e), as anchor 1; anchors 2, 3 -> log(1 + 3/e)
    loss, metrics = contrastive_loss(z, z[[1, 0, 2, 3]], temperature=1.0)
    expected = (2 * math.log(3 + math.e) + 2 * math.log(1 + 3 / math.e)) / 4
    assert math.isclose(float(loss), expected, rel_tol=1e-5)
    assert float(metrics["simcse_acc"]) == 0.5


def test_objective_loss_is_log_batch_size_through_a_zeroed_mlp(data_root, tmp_path):
    # pooling=cls trains through the MLP: with its weights zeroed every embedding is tanh(0) = 0, every
    # cosine 0 (F.normalize keeps 0), so the loss is exactly log(batch) whatever the trunk computes
    cfg = tiny_config("simcse", tmp_path, *SIMCSE_TINY)
    tok = load_tokenizer(cfg)
    objective = build_objective(with_vocab(cfg, tok.vocab_size), tok)
    torch.nn.init.zeros_(objective.mlp.dense.weight)
    torch.nn.init.zeros_(objective.mlp.dense.bias)
    examples = [np.array([tok.cls_id, *ids, tok.sep_id]) for ids in tok.encode_batch(["a b c", "the city", "x"])]
    out = objective(objective.collate(examples, torch.Generator()))
    assert math.isclose(float(out.loss.detach()), math.log(3), rel_tol=1e-6)
    assert objective.sentence_pooling() == "cls"  # evaluation reads the raw [CLS] state, not the MLP
    plain = tiny_config("simcse", tmp_path, *SIMCSE_TINY, "objective.pooling=cls_before_pooler")
    assert build_objective(with_vocab(plain, tok.vocab_size), tok).mlp is None


def test_gather_is_the_identity_without_distributed_training():
    z = torch.randn(3, 5, requires_grad=True)
    assert gather_from_all_ranks(z) is z


def _gather_rank(rank: int, world: int, init_file: str, z1_all, z2_all):
    """The gathered loss of one rank and the gradients of its local embeddings (rows rank*b:(rank+1)*b)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        b = len(z1_all) // world
        z1 = z1_all[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        z2 = z2_all[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        loss, _ = contrastive_loss(gather_from_all_ranks(z1), gather_from_all_ranks(z2), temperature=0.05)
        loss.backward()
        return float(loss.detach()), z1.grad.tolist(), z2.grad.tolist()
    finally:
        dist.destroy_process_group()


def _gather_child(rank, world, init_file, z1_all, z2_all, queue) -> None:
    # plain floats: the child exits before they are read
    queue.put(_gather_rank(rank, world, init_file, z1_all, z2_all))


def test_two_process_gather_equals_the_single_process_loss_and_gradients(tmp_path):
    torch.manual_seed(0)
    world, b = 2, 3
    z1_all, z2_all = torch.randn(world * b, 8), torch.randn(world * b, 8)
    init = str(tmp_path / "init")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_gather_child, args=(1, world, init, z1_all, z2_all, queue))
    child.start()  # rank 1; this process is rank 0 (one spawn instead of two)
    results = [_gather_rank(0, world, init, z1_all, z2_all), queue.get(timeout=120)]
    child.join(timeout=60)
    assert child.exitcode == 0

    z1, z2 = z1_all.clone().requires_grad_(True), z2_all.clone().requires_grad_(True)
    loss, _ = contrastive_loss(z1, z2, temperature=0.05)  # one process, the concatenated batch
    loss.backward()
    for rank, (rank_loss, g1, g2) in enumerate(results):
        assert math.isclose(rank_loss, float(loss.detach()), rel_tol=1e-6)
        # the gradient flows through the local slice: each rank holds its rows of the full gradient
        torch.testing.assert_close(torch.tensor(g1), z1.grad[rank * b:(rank + 1) * b])
        torch.testing.assert_close(torch.tensor(g2), z2.grad[rank * b:(rank + 1) * b])


# --- sentences ------------------------------------------------------------------------------------

def test_wikitext_paragraphs_split_into_sentences():
    assert split_wikitext('He said " go home . " Then he left . It rained ! Why ?') == [
        'He said " go home . "', "Then he left .", "It rained !", "Why ?"]
    assert split_wikitext('The U.S. won 1 @.@ 5 medals . " Great " , he said .') == [
        "The U.S. won 1 @.@ 5 medals .", '" Great " , he said .']
    assert split_wikitext("no terminal at the end") == ["no terminal at the end"]


def test_iter_sentences_skips_headings_and_fragments(tmp_path):
    wiki = tmp_path / "wiki.txt"
    wiki.write_text(" \n = Title = \n \n A role @-@ playing game . Short . It sold 1 @,@ 000 copies . \n"
                    " = = Section = = \n Next paragraph here .\n")
    assert list(iter_sentences(Corpus(str(wiki)))) == ["A role-playing game .", "It sold 1,000 copies .",
                                                       "Next paragraph here ."]
    lines = tmp_path / "lines.txt"
    lines.write_text("The first sentence. And the second one.\n\nOk\n")
    # one sentence per line, as is; any other text cut by the segmenter, pieces under 3 words dropped
    assert list(iter_sentences(Corpus(str(lines)), "line")) == ["The first sentence. And the second one.", "Ok"]
    assert list(iter_sentences(Corpus(str(lines)))) == ["The first sentence.", "And the second one."]


def test_sentence_examples_are_cached_truncated_and_padded(tmp_path, monkeypatch):
    tok = load_tokenizer(load_config(None, []))
    lines = tmp_path / "s.txt"
    lines.write_text("a b c d e f g h\nthe city\n")
    tokens, offsets = tokenize_sentences(Corpus(str(lines)), tok, tmp_path / "cache", split="line")
    assert list(offsets) == [0, 8, 10]

    def no_reading(*args, **kwargs):
        raise AssertionError("re-tokenized instead of reading the cache")

    monkeypatch.setattr("lmssl.data.sentences.iter_sentences", no_reading)
    cached_tokens, cached_offsets = tokenize_sentences(Corpus(str(lines)), tok, tmp_path / "cache", split="line")
    assert np.array_equal(cached_tokens, tokens) and np.array_equal(cached_offsets, offsets)
    data = SentenceDataset(tokens, offsets, tok.cls_id, tok.sep_id, max_len=6)
    assert len(data) == 2
    assert list(data[0]) == [tok.cls_id, *tokens[:4], tok.sep_id]  # truncated to 6 with its specials
    assert list(data[1]) == [tok.cls_id, *tokens[8:10], tok.sep_id]
    ids, mask = pad_sentences([data[0], data[1]], tok.pad_id)
    assert ids.shape == (2, 6) and mask.sum(1).tolist() == [6, 4]
    assert ids[1, 4:].tolist() == [tok.pad_id] * 2


# --- config, init_from, training --------------------------------------------------------------------

def test_config_checks(tmp_path):
    base = ["objective.name=simcse", "data.valid="]
    with pytest.raises(ConfigError, match=r"key 'data.valid': simcse is validated on STS"):
        load_config(None, ["objective.name=simcse", "data.valid=wikitext-2/valid.txt"])
    assert load_config(None, ["objective.name=simcse"]).data.valid == ""  # simcse's default: validated on STS
    with pytest.raises(ConfigError, match=r"key 'objective.temperature': must be positive"):
        load_config(None, [*base, "objective.temperature=0"])
    with pytest.raises(ConfigError, match=r"key 'model.dropout': must be > 0"):
        load_config(None, [*base, "model.dropout=0", "model.attention_dropout=0"])
    with pytest.raises(ConfigError, match=r"key 'objective.sts_eval': choose one of stsb_dev"):
        load_config(None, [*base, "objective.sts_eval=stsb"])
    with pytest.raises(ConfigError, match=r"key 'objective.pooling': invalid value 'avg'"):
        load_config(None, [*base, "objective.pooling=avg"])


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A run directory holding one (untrained) tiny MLM checkpoint."""
    out = tmp_path_factory.mktemp("mlm") / "run"
    cfg = tiny_config("mlm", out)
    tok = load_tokenizer(cfg)
    cfg = with_vocab(cfg, tok.vocab_size)
    torch.manual_seed(1)
    save_model(out / "checkpoints" / "step-0000001", build_objective(cfg, tok), cfg, tok)
    return out


def test_init_from_copies_the_encoder_and_checks_the_shape(tiny_mlm, tmp_path):
    cfg = tiny_config("simcse", tmp_path / "s", *SIMCSE_TINY, f"model.init_from={tiny_mlm}")
    opened = ModelDir.open(cfg.model.init_from, "model.init_from")
    assert opened.path == latest_checkpoint(tiny_mlm)  # a run directory means its latest checkpoint
    tok = opened.tokenizer
    cfg = with_vocab(cfg, tok.vocab_size)
    objective = build_objective(cfg, tok)
    initialise_from(objective, cfg, opened)
    source = opened.objective()
    assert type(source).__name__ == "MaskedLM"
    trunk, pretrained = objective.encoder().state_dict(), source.trunk.state_dict()
    assert len(trunk) > 10 and trunk.keys() == pretrained.keys()
    assert all(torch.equal(trunk[k], pretrained[k]) for k in trunk)
    assert not torch.equal(objective.encoder().layers[0].ffn.fc_in.weight,
                           build_objective(cfg, tok).encoder().layers[0].ffn.fc_in.weight)  # not a coincidence of seeds

    wide = with_vocab(tiny_config("simcse", tmp_path / "w", *SIMCSE_TINY, f"model.init_from={tiny_mlm}",
                                  "model.hidden_size=32"), tok.vocab_size)
    with pytest.raises(ConfigError, match=r"key 'model.hidden_size': 32 here but 64 in the model.init_from .*"
                                          r"set model.hidden_size=64"):
        initialise_from(build_objective(wide, tok), wide, opened)
    with pytest.raises(ConfigError, match=r"key 'model.init_from': .*nowhere is neither an lmssl checkpoint"):
        tiny_config("simcse", tmp_path / "m", *SIMCSE_TINY, f"model.init_from={tmp_path / 'nowhere'}")  # at load time


def test_init_from_an_electra_checkpoint_takes_the_discriminator(tmp_path):
    if "electra" not in OBJECTIVES:
        pytest.skip("no electra objective registered")
    cfg = tiny_config("electra", tmp_path / "electra")
    tok = load_tokenizer(cfg)
    cfg = with_vocab(cfg, tok.vocab_size)
    electra = build_objective(cfg, tok)
    save_model(tmp_path / "electra" / "checkpoints" / "step-0000001", electra, cfg, tok)
    simcse_cfg = with_vocab(
        tiny_config("simcse", tmp_path / "s", *SIMCSE_TINY, f"model.init_from={tmp_path / 'electra'}"), tok.vocab_size)
    simcse = build_objective(simcse_cfg, tok)
    initialise_from(simcse, simcse_cfg, ModelDir.open(simcse_cfg.model.init_from))
    ours, discriminator = simcse.encoder().state_dict(), electra.encoder().state_dict()
    assert electra.encoder() is not electra.generator.trunk  # the discriminator is ELECTRA's downstream encoder
    assert ours.keys() == discriminator.keys() and all(torch.equal(ours[k], discriminator[k]) for k in ours)


@pytest.mark.slow
def test_simcse_trains_on_wikitext_with_falling_loss_and_keeps_the_best(tiny_mlm, tmp_path):
    out = tmp_path / "simcse"
    threads = torch.get_num_threads()
    try:  # one thread: tiny matrices gain nothing from two, and lose a lot on busy cores
        result = train(tiny_config("simcse", out, *SIMCSE_TINY, f"model.init_from={tiny_mlm}", "objective.pooling=mean",
                                   "train.lr=1e-3", "train.max_steps=30", "eval.every=15", "train.save_every=0",
                                   "train.num_threads=1"))
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "stsb_dev_spearman" in r]
    assert math.isclose(steps[0]["loss"], math.log(16), abs_tol=1.0)  # near chance over 16 in-batch candidates
    first, last = np.mean([r["loss"] for r in steps[:3]]), np.mean([r["loss"] for r in steps[-3:]])
    assert last < first - 1.0 and steps[-1]["simcse_acc"] > 0.8, (first, last)
    assert [r["step"] for r in evals] == [15, 30]
    assert all(-100 <= r["stsb_dev_spearman"] <= 100 for r in evals)
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["stsb_dev_spearman"] == max(r["stsb_dev_spearman"] for r in evals)
    assert result["best"] == str(out / "best") and result["stsb_dev_spearman"] == evals[-1]["stsb_dev_spearman"]
    cfg, _, objective = open_model(out / "best")
    assert cfg.objective.name == "simcse" and objective.sentence_pooling() == "mean"


def test_best_checkpoint_keeps_the_highest_score_across_restarts(tmp_path):
    cfg = tiny_config("mlm", tmp_path)
    tok = load_tokenizer(cfg)
    model = torch.nn.Linear(2, 2)
    best = BestCheckpoint(tmp_path, "stsb_dev_spearman")
    assert not best.update(1, {"other": 1.0}, model, cfg, tok)  # no selection metric, nothing written
    assert best.update(2, {"stsb_dev_spearman": 10.0}, model, cfg, tok)
    assert not best.update(3, {"stsb_dev_spearman": 9.0}, model, cfg, tok)
    assert not best.update(4, {"stsb_dev_spearman": float("nan")}, model, cfg, tok)
    with torch.no_grad():
        model.weight.fill_(7.0)
    resumed = BestCheckpoint(tmp_path, "stsb_dev_spearman")  # a resumed run must beat the recorded best
    assert not resumed.update(5, {"stsb_dev_spearman": 10.0}, model, cfg, tok)
    assert resumed.update(6, {"stsb_dev_spearman": 12.5}, model, cfg, tok)
    assert json.loads((tmp_path / "best" / "best.json").read_text()) == {"step": 6, "stsb_dev_spearman": 12.5}
    assert {p.name for p in (tmp_path / "best").iterdir()} == {"model.safetensors", "config.yaml", "tokenizer.json",
                                                                "best.json", "manifest.json"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary directories left
    assert torch.equal(load_file(tmp_path / "best" / "model.safetensors")["weight"], torch.full((2, 2), 7.0))


def test_sentence_loader_shuffles_whole_epochs():
    data = [np.arange(i + 1) for i in range(10)]
    loader = SequenceLoader(data, batch_size=4, seed=0)
    seen = [len(x) for _ in range(2) for x in loader.next_batch()]
    assert len(set(seen)) == 8  # two batches of one epoch never repeat an example
