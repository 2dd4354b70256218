"""Every tokenizer type (WordPiece, byte-level BPE, SentencePiece unigram) and objective family (BERT-style,
GPT-style): the exported tokenizer, loaded with transformers' AutoTokenizer and called as transformers users call
it, gives the ids lmssl gives (with [CLS] ... [SEP] around a text for BERT-style models, <|endoftext|> before it
for causal ones)."""
from __future__ import annotations

import pytest
import torch
from helpers import REPO_ROOT, save_model
from hf_parity import transformers

from lmssl.config import config_from_dict
from lmssl.data.corpus import iter_documents
from lmssl.data.tokenizer import TextTokenizer, train_tokenizer
from lmssl.interop.hf.export import export
from lmssl.objectives import build_objective

SHIPPED = {"wordpiece": REPO_ROOT / "tokenizers" / "wikitext2-wordpiece" / "tokenizer.json",
           "bpe": REPO_ROOT / "tokenizers" / "wikitext2-bpe" / "tokenizer.json"}
EDGE_CASES = ["Ünïcödé  spaces\tand\u00a0nbsp", "naïve café — “quotes”", "numbers 1 @,@ 000 and 3 @.@ 5 %"]


@pytest.fixture(scope="module")
def tokenizers(data_root, tmp_path_factory):
    found = {kind: TextTokenizer.from_file(path) for kind, path in SHIPPED.items()}
    docs = iter_documents(data_root / "wikitext-2" / "valid.txt")
    found["unigram"] = train_tokenizer("unigram", docs, 2000)
    return found


@pytest.fixture(scope="module")
def lines(data_root):
    text = (data_root / "wikitext-2" / "test.txt").read_text().splitlines()
    return [line.strip() for line in text if line.strip()][:200] + EDGE_CASES


@pytest.mark.parametrize("kind, objective", [("wordpiece", "mlm"), ("wordpiece", "clm"), ("bpe", "clm"),
                                             ("unigram", "mlm"), ("unigram", "clm")])
def test_the_exported_tokenizer_gives_our_ids(kind, objective, tokenizers, lines, tmp_path):
    tok = tokenizers[kind]
    causal = objective == "clm"
    fields = {"preset": "gpt2" if causal else "bert", "hidden_size": 16, "num_layers": 1, "num_heads": 2,
              "ffn_size": 32, "max_positions": 600, "vocab_size": tok.vocab_size}
    cfg = config_from_dict({"model": fields, "objective": {"name": objective}, "data": {"seq_len": 32}})
    torch.manual_seed(0)
    out = tmp_path / "hf"
    export(save_model(tmp_path / "ckpt", build_objective(cfg, tok), cfg, tok), out)
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    ours = tok.encode_batch(lines)
    if causal:  # the end-of-text token lmssl's language models start from (`lmssl generate`, every document)
        assert [theirs(line).input_ids for line in lines] == [[tok.eos_id, *ids] for ids in ours]
        assert [theirs(line, add_special_tokens=False).input_ids for line in lines] == ours
    else:
        assert [theirs(line).input_ids for line in lines] == [[tok.cls_id, *ids, tok.sep_id] for ids in ours]
        assert theirs.mask_token_id == tok.mask_id
