"""`lmssl predict` on a fine-tuned model, and `lmssl export` of one: BertForSequenceClassification,
GPT2ForSequenceClassification, ModernBertForSequenceClassification and LlamaForSequenceClassification give our
logits."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import open_finetuned, open_model, save_model
from hf_parity import ATOL, TEXTS, tiny_objective, transformers

from lmssl.checkpoint.format import save_finetuned
from lmssl.cli import main
from lmssl.downstream.encoding import EncodedSet, encode_texts
from lmssl.downstream.predict import predict
from lmssl.downstream.tasks import card_from_dict
from lmssl.interop.hf.export import export
from lmssl.model.classifier import SequenceClassifier


def finetuned(tmp_path, objective: str, regression: bool = False, use_pooler: bool = True, **model):
    """A fine-tuned-looking model: a tiny pretrained checkpoint's encoder plus random pooler and head."""
    causal = objective == "clm"
    cfg, tok, obj = tiny_objective({"name": objective}, **model)
    ckpt = save_model(tmp_path / "ckpt", obj, cfg, tok)
    card = card_from_dict({"name": "toy", "train": "t.csv", "dev": "t.csv", "text_columns": ["a", "b"],
                           "label_column": "label", **({"regression": True} if regression
                                                        else {"labels": ["neg", "neu", "pos"]})}, "toy.yaml")
    torch.manual_seed(3)
    model = SequenceClassifier(cfg.model, causal, card.num_outputs, regression, use_pooler and not causal)
    model.encoder.load_state_dict(obj.encoder().state_dict())
    with torch.no_grad():
        if model.head.bias is not None:
            model.head.bias.uniform_(-1, 1)  # a bias worth folding (GPT-2's score layer has none)
        for name, p in model.named_parameters():
            if name.startswith("pooler.norm"):
                p.uniform_(0.5, 1.5)  # a norm's weight that is not all ones: a misplaced one would show
    info = {"card": card.to_dict(), "causal": causal, "use_pooler": model.pooler is not None, "max_length": 40,
            "mode": "finetune" if use_pooler or causal else "probe", "checkpoint": str(ckpt)}
    save_finetuned(tmp_path / "best", model, cfg, tok, info)
    return tmp_path / "best", tok


def write_csv(path, with_labels: bool = True):
    rows = ["a,b" + (",label" if with_labels else "")]
    for i in range(7):
        rows.append(f'"{TEXTS[i % 2]}","{TEXTS[(i + 1) % 2][:30 + i]}"' + (",pos" if with_labels else ""))
    path.write_text("\n".join(rows) + "\n")
    return path


def our_logits(directory, path):
    model, tok, info = open_finetuned(directory)
    rows = [line.split('","') for line in path.read_text().splitlines()[1:]]
    texts = [(a[1:], b.split('"')[0]) for a, b in rows]
    ids, types = encode_texts(tok, texts, info["causal"], info["max_length"])
    examples = EncodedSet(ids, types, torch.zeros(len(ids), dtype=torch.long).numpy(), tok.pad_id or 0,
                          info["causal"], model.use_types)
    with torch.no_grad():
        return model.logits(examples.batch(list(range(len(ids))))), ids, types


@pytest.mark.parametrize("with_labels", [True, False])
def test_predict_gives_the_models_labels_and_probabilities(tmp_path, with_labels):
    directory, _ = finetuned(tmp_path, "mlm")
    path = write_csv(tmp_path / "new.csv", with_labels)
    records, metrics = predict(directory, path)
    logits, _, _ = our_logits(directory, path)
    assert [r["index"] for r in records] == list(range(7))
    for record, row in zip(records, logits.softmax(-1)):
        assert record["label"] == ["neg", "neu", "pos"][int(row.argmax())]
        assert list(record["probabilities"].values()) == pytest.approx(row.tolist(), abs=1e-6)
    if with_labels:  # every gold label is "pos": the accuracy is the share predicted pos, by hand
        share = sum(r["label"] == "pos" for r in records) / 7 * 100
        assert metrics == {"accuracy": pytest.approx(share), "score": pytest.approx(share)}
    else:
        assert metrics is None


def test_predict_regression_and_the_cli(tmp_path, capsys):
    directory, _ = finetuned(tmp_path, "clm", regression=True)
    path = write_csv(tmp_path / "new.csv", with_labels=False)
    logits, _, _ = our_logits(directory, path)
    assert [r["score"] for r in predict(directory, path)[0]] == pytest.approx(logits[:, 0].tolist(), abs=1e-6)
    assert main(["predict", str(directory), str(path), "--out", str(tmp_path / "p.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out) == {"predictions": str(tmp_path / "p.jsonl"), "examples": 7}
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 7


def test_bert_classifier_exports_to_bert_for_sequence_classification(tmp_path):
    directory, tok = finetuned(tmp_path, "mlm")
    path = write_csv(tmp_path / "new.csv")
    assert export(directory, tmp_path / "hf")["architectures"] == {".": "BertForSequenceClassification"}
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    ours, ids, types = our_logits(directory, path)
    width = max(map(len, ids))
    pad = lambda rows: torch.tensor([list(r) + [0] * (width - len(r)) for r in rows])  # noqa: E731
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
    with torch.no_grad():
        theirs = hf(input_ids=pad(ids), token_type_ids=pad(types), attention_mask=mask).logits
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)
    enc = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")(TEXTS[0], TEXTS[1][:30])
    assert enc.input_ids == list(ids[0])  # the exported tokenizer builds the same pair


@pytest.mark.parametrize("preset, architecture", [("gpt2", "GPT2ForSequenceClassification"),
                                                  ("llama", "LlamaForSequenceClassification")])
def test_causal_classifiers_export_with_our_logits(tmp_path, preset, architecture):
    """GPT-2's score layer has no bias: ours is folded into the final LayerNorm's; the llama preset's head has none."""
    directory, _ = finetuned(tmp_path, "clm", preset=preset)
    path = write_csv(tmp_path / "new.csv")
    assert export(directory, tmp_path / "hf")["architectures"] == {".": architecture}
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ours, ids, _ = our_logits(directory, path)
    with torch.no_grad():
        theirs = torch.cat([hf(input_ids=torch.tensor([list(r)])).logits for r in ids])
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer(TEXTS[0], TEXTS[1][:30]).input_ids == list(ids[0])  # <eos> A <sep> B <eos>, as ours
    single = encode_texts(open_finetuned(directory)[1], [(TEXTS[0],)], True, 40)[0][0]
    assert hf_tokenizer(TEXTS[0]).input_ids == list(single)  # <eos> A <eos>


def test_modernbert_classifier_exports_to_modernbert_for_sequence_classification(tmp_path):
    directory, _ = finetuned(tmp_path, "mlm", preset="modernbert")
    path = write_csv(tmp_path / "new.csv")
    assert export(directory, tmp_path / "hf")["architectures"] == {".": "ModernBertForSequenceClassification"}
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ours, ids, _ = our_logits(directory, path)
    width = max(map(len, ids))
    padded = torch.tensor([list(r) + [0] * (width - len(r)) for r in ids])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
    with torch.no_grad():
        theirs = hf(input_ids=padded, attention_mask=mask).logits
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)


def test_a_llama_classifier_with_biases_has_no_hugging_face_architecture(tmp_path, capsys):
    """LlamaForSequenceClassification's score layer has no bias, and RMSNorm none to fold ours into."""
    biased, _ = finetuned(tmp_path, "clm", preset="llama", bias=True)
    assert main(["export", str(biased), str(tmp_path / "hf")]) == 2
    assert "key 'model.bias'" in capsys.readouterr().err and not (tmp_path / "hf").exists()


def test_a_probe_has_no_bert_architecture(tmp_path, capsys):
    directory, _ = finetuned(tmp_path, "mlm", use_pooler=False)
    assert main(["export", str(directory), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "BertForSequenceClassification always applies its pooler" in err and not (tmp_path / "hf").exists()


@pytest.mark.parametrize("argv, fragment", [
    (("predict", "{ckpt}", "{csv}"), "{ckpt}: not a fine-tuned model directory (no finetune.json)"),
    (("predict", "{ft}", "{tmp}/nothing.csv"), "FILE: not found: {tmp}/nothing.csv"),
    (("predict", "{ft}", "{bad}"), "{bad}:2: no column 'b'; the row has 'a'"),
    (("predict", "{ft}", "{csv}", "--out", "{tmp}"), "--out: {tmp} is a directory"),
])
def test_predict_bad_inputs(argv, fragment, tmp_path, capsys):
    directory, _ = finetuned(tmp_path, "mlm")
    values = {"ckpt": tmp_path / "ckpt", "ft": directory, "tmp": tmp_path, "csv": write_csv(tmp_path / "new.csv"),
              "bad": tmp_path / "bad.csv"}
    (tmp_path / "bad.csv").write_text("a\nonly one column\n")
    code = main([a.format(**values) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: " + fragment.format(**values))
    open_model(tmp_path / "ckpt")  # the source checkpoint is untouched
