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
        from lmssl.checkpoint.model_dir import ModelDir
        from lmssl.evaluation.pseudo_perplexity import pseudo_perplexity
        from lmssl.evaluation.text import default_window

        source = ModelDir.open(model_id)
        cfg, tokenizer, objective = source.config, source.tokenizer, source.objective()
        max_length, stride = default_window(cfg, "pppl", max_length, stride)
        return pseudo_perplexity(objective, tokenizer, list(predictions), max_length=max_length, stride=stride,
                                 batch_tokens=batch_tokens, word_l2r=word_l2r)[0]
