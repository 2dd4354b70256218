"""`lmssl generate` and `lmssl fill-mask`: the key/value cache gives the uncached logits, greedy decoding equals
transformers' `generate` on the exported model, sampling is seeded, fill-mask is the masked LM's own prediction,
and wrong inputs stop with one line."""
from __future__ import annotations

import io

import pytest
import torch
from helpers import BLOCKS, block_config, cli_json, save_model, spread_weights
from hf_parity import assert_greedy_decoding_is_generates, tiny_objective

from lmssl.inference.fill_mask import fill_mask
from lmssl.inference.generate import Sampling, cut_at_stop, filter_logits, generate, penalize_repetition
from lmssl.interop.hf.export import export
from lmssl.model.attention import AttnSpec
from lmssl.model.transformer import KVCache, Transformer

PROMPT = "Valkyria Chronicles III is a tactical"


@pytest.mark.parametrize("variant", list(BLOCKS))
def test_the_cache_gives_the_uncached_hidden_states(variant):
    cfg = block_config(variant, vocab_size=50, attention_backend="sdpa")
    torch.manual_seed(0)
    trunk = spread_weights(Transformer(cfg).eval())
    ids = torch.randint(0, 50, (3, 20))
    with torch.no_grad():
        full = trunk(ids, AttnSpec.dense(True))
        cache = KVCache.empty(cfg.num_layers)
        parts = [trunk.forward_cached(ids[:, :7], cache)]  # a prompt, then one token at a time
        parts += [trunk.forward_cached(ids[:, t:t + 1], cache) for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
    assert cache.length == 20 and cache.layers[0][0].shape == (3, 4, 20, 8)


@pytest.fixture(scope="module")
def clm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clm")
    cfg, tok, obj = tiny_objective({"name": "clm"})
    return save_model(tmp / "ckpt", obj, cfg, tok), cfg, tok, obj


@pytest.fixture(scope="module")
def mlm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlm")
    cfg, tok, obj = tiny_objective({"name": "mlm"})
    return save_model(tmp / "ckpt", obj, cfg, tok), cfg, tok, obj


def test_greedy_decoding_equals_transformers_generate(clm, tmp_path):
    path, cfg, tok, obj = clm
    export(path, tmp_path / "hf")
    plain = assert_greedy_decoding_is_generates(obj, tok, tmp_path / "hf", PROMPT)
    penalized = assert_greedy_decoding_is_generates(obj, tok, tmp_path / "hf", PROMPT, repetition_penalty=1.8)
    assert penalized != plain  # the penalty changed the continuation, and transformers' the same way


def test_repetition_penalty_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    context = torch.tensor([[0, 1, 1]])  # tokens 0 and 1 seen (1 twice: penalised once, as in transformers)
    expected = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    torch.testing.assert_close(penalize_repetition(logits, context, 2.0), expected, rtol=0, atol=0)
    assert penalize_repetition(logits, context, 1.0) is logits


def test_stop_strings_cut_the_sample(clm):
    _, _, tok, obj = clm
    full = generate(obj, tok, PROMPT, Sampling(max_new_tokens=15, temperature=0, stop_at_eos=False))[0]
    stop = full["text"][len(full["text"]) // 2:][:3]  # three characters from the middle of the greedy continuation
    cut = generate(obj, tok, PROMPT, Sampling(max_new_tokens=15, temperature=0, stop_at_eos=False, stop=("@@", stop)))
    assert cut[0]["text"] == full["text"][:full["text"].index(stop)] and cut[0]["finish"] == "stop"
    assert cut[0]["tokens"] < 15 and full["finish"] == "length"
    drawn = [generate(obj, tok, PROMPT, Sampling(max_new_tokens=n, temperature=0, stop_at_eos=False))[0]["text"]
             for n in (cut[0]["tokens"] - 1, cut[0]["tokens"])]
    assert stop not in drawn[0] and stop in drawn[1]  # it stopped at the first token that completed the string
    assert cut_at_stop("a b. c. d", (". c", "d")) == "a b" and cut_at_stop("abc", ("x",)) is None


def test_sampling_is_seeded_and_the_cache_changes_nothing(clm):
    _, _, tok, obj = clm
    warm = Sampling(max_new_tokens=15, temperature=1.3, top_k=50, top_p=0.9, seed=7, stop_at_eos=False)
    a = generate(obj, tok, PROMPT, warm, num_samples=3)
    assert [s["text"] for s in a] == [s["text"] for s in generate(obj, tok, PROMPT, warm, num_samples=3,
                                                                  use_cache=False)]
    assert len({s["text"] for s in a}) > 1  # three different samples
    other = generate(obj, tok, PROMPT, Sampling(max_new_tokens=15, temperature=1.3, seed=8, stop_at_eos=False))
    assert other[0]["text"] != a[0]["text"]
    greedy = generate(obj, tok, PROMPT, Sampling(max_new_tokens=15, temperature=0, stop_at_eos=False))
    top1 = generate(obj, tok, PROMPT, Sampling(max_new_tokens=15, top_k=1, seed=3, stop_at_eos=False))
    assert greedy[0]["text"] == top1[0]["text"]


def test_filter_logits_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert filter_logits(logits, top_k=2, top_p=1.0).isinf().tolist() == [[False, False, True, True]]
    assert filter_logits(logits, top_k=0, top_p=0.75).isinf().tolist() == [[False, False, True, True]]
    assert filter_logits(logits, top_k=0, top_p=0.8).isinf().tolist() == [[False, False, True, True]]
    assert filter_logits(logits, top_k=0, top_p=0.81).isinf().tolist() == [[False, False, False, True]]
    assert filter_logits(logits, top_k=0, top_p=0.1).isinf().tolist() == [[False, True, True, True]]


def test_fill_mask_is_the_masked_lms_prediction(mlm):
    _, _, tok, obj = mlm
    text = "the game 's battle [MASK] is carried over [MASK] ."
    results = fill_mask(obj, tok, text, top_k=3)
    ids = torch.tensor([[tok.cls_id, *tok.encode_batch([text])[0], tok.sep_id]])
    with torch.no_grad():
        probs = obj.head(obj.trunk(ids, AttnSpec.dense(False))[0]).softmax(-1)  # (T, V), every position
    assert [r["position"] for r in results] == (ids[0] == tok.mask_id).nonzero().squeeze(1).tolist()
    for r in results:
        scores, tokens = probs[r["position"]].topk(3)
        assert [p["token"] for p in r["predictions"]] == [tok.tokenizer.id_to_token(t) for t in tokens.tolist()]
        assert [p["score"] for p in r["predictions"]] == pytest.approx(scores.tolist(), abs=1e-6)


def test_fill_mask_scores_electra_with_its_generator(tmp_path):
    cfg, tok, obj = tiny_objective({"name": "electra", "generator_size": 0.5})
    result = fill_mask(obj, tok, "the [MASK] system", top_k=1)[0]
    ids = torch.tensor([[tok.cls_id, *tok.encode_batch(["the [MASK] system"])[0], tok.sep_id]])
    with torch.no_grad():
        best = obj.generator.head(obj.generator.trunk(ids, AttnSpec.dense(False))[0, 2]).argmax().item()
    assert result["predictions"][0]["token"] == tok.tokenizer.id_to_token(best)



def test_cli_generate_from_an_argument_and_from_stdin(clm, capsys, monkeypatch):
    path = str(clm[0])
    code, lines, _ = cli_json(capsys, "generate", path, PROMPT, "--max-new-tokens", "5", "--num-samples", "2",
                             "--seed", "1")
    assert code == 0 and [(r["prompt"], r["sample"]) for r in lines] == [(PROMPT, 0), (PROMPT, 1)]
    assert all(r["finish"] in ("eos", "length") and r["tokens"] <= 5 for r in lines)
    monkeypatch.setattr("sys.stdin", io.StringIO("first prompt\n\nsecond prompt\n"))
    code, lines, _ = cli_json(capsys, "generate", path, "--max-new-tokens", "3", "--temperature", "0")
    assert code == 0 and [r["prompt"] for r in lines] == ["first prompt", "second prompt"]


def test_cli_fill_mask(mlm, capsys):
    code, lines, _ = cli_json(capsys, "fill-mask", str(mlm[0]), "the [MASK] system", "--top-k", "2")
    assert code == 0 and len(lines) == 1 and len(lines[0]["predictions"]) == 2 and lines[0]["mask"] == 0


@pytest.mark.parametrize("argv, fragment", [
    (("generate", "{mlm}", "hello"), "`lmssl generate` needs a causal language model; objective 'mlm' has a masked "
                                     "one: use `lmssl fill-mask`"),
    (("fill-mask", "{clm}", "a [MASK] text"), "`lmssl fill-mask` needs a masked language model; objective 'clm' has "
                                              "a causal one: use `lmssl generate`"),
    (("fill-mask", "{mlm}", "no mask here"), "TEXT: no [MASK] in 'no mask here'; write [MASK] where a token is to "
                                            "be predicted"),
    (("generate", "{clm}"), "PROMPT: no prompt; give one, pipe prompts on stdin (one per line), or pass "
                            "--unconditional to start from the end-of-text token alone"),
    (("generate", "{clm}", "hi", "--top-p", "0"), "--top-p: must be in (0, 1], got 0.0"),
    (("generate", "{clm}", "hi", "--temperature", "-1"), "--temperature: must be >= 0 (0 = greedy), got -1.0"),
    (("generate", "{clm}", " ".join(["word"] * 60)), "PROMPT: 61 tokens leave no room in the model's 40 positions; "
                                                    "shorten it"),
    (("generate", "{tmp}/nothing", "hi"), "{tmp}/nothing: not an lmssl checkpoint"),
])
def test_bad_inputs_stop_in_one_line(argv, fragment, clm, mlm, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    values = {"clm": clm[0], "mlm": mlm[0], "tmp": tmp_path}
    code, _, err = cli_json(capsys, *(a.format(**values) for a in argv))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: " + fragment.format(**values))
