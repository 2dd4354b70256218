"""Pseudo-perplexity (Salazar et al. 2020) of texts under a masked checkpoint (`model_id`: an lmssl checkpoint,
run directory or Hugging Face directory), exact, as `lmssl eval pppl` (lmssl.evaluation.pseudo_perplexity)."""
import datasets
import evaluate

_KWARGS = """predictions: texts; model_id: a path; max_length, stride, batch_tokens, word_l2r as `lmssl eval pppl`."""


class LmsslPseudoPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features({"predictions": datasets.Value("string")}))

    def _compute(self, predictions, model_id=None, max_length=0, stride=0, batch_tokens=8192, word_l2r=False):
        from lmssl.evaluation.pseudo_perplexity import default_window, pseudo_perplexity
        from lmssl.pretrained import load_pretrained

        cfg, tokenizer, objective = load_pretrained(model_id)
        max_length, stride = default_window(cfg, max_length, stride)
        return pseudo_perplexity(objective, tokenizer, list(predictions), max_length=max_length, stride=stride,
                                 batch_tokens=batch_tokens, word_l2r=word_l2r)[0]
