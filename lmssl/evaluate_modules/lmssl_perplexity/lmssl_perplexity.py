"""Perplexity. Config `logits`: from a causal model's logits at scored positions and their target ids
(-100 = not scored): exp of the mean negative log-likelihood. Config `checkpoint`: texts scored by an lmssl
checkpoint, run directory or Hugging Face directory (`model_id`) with lmssl's sliding windows
(lmssl.evaluation.perplexity)."""
import datasets
import evaluate
import torch

_KWARGS = """logits: predictions = (positions, vocabulary) logits per text, references = target ids per position.
checkpoint: predictions = texts, model_id = a path; max_length, stride, batch_size as `lmssl eval ppl`."""


class LmsslPerplexity(evaluate.Metric):
    def _info(self):
        if self.config_name == "logits":
            features = {"predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                        "references": datasets.Sequence(datasets.Value("int64"))}
        else:
            features = {"predictions": datasets.Value("string")}
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features(features))

    def _compute(self, predictions, references=None, model_id=None, max_length=0, stride=0, batch_size=16):
        if self.config_name == "logits":
            nll, count = 0.0, 0
            for logits, targets in zip(predictions, references):
                logits, targets = torch.tensor(logits, dtype=torch.float64), torch.tensor(targets)
                keep = targets != -100
                logp = logits[keep].log_softmax(-1).gather(1, targets[keep][:, None])
                nll, count = nll - float(logp.sum()), count + int(keep.sum())
            return {"ppl": float(torch.tensor(nll / count).exp()), "nll": nll / count, "tokens": count}
        from lmssl.checkpoint.model_dir import ModelDir
        from lmssl.evaluation.perplexity import perplexity
        from lmssl.evaluation.text import default_window

        source = ModelDir.open(model_id)
        cfg, tokenizer, objective = source.config, source.tokenizer, source.objective()
        max_length, stride = default_window(cfg, "ppl", max_length, stride)
        return perplexity(objective, tokenizer, list(predictions), max_length=max_length, stride=stride,
                          batch_size=batch_size)
