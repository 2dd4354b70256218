"""STS: Spearman correlation x 100 between predicted similarities (e.g. embedding cosines) and gold scores,
as `lmssl eval sts` computes it (lmssl.downstream.sts.spearman_x100)."""
import datasets
import evaluate
import numpy as np

from lmssl.downstream.sts import spearman_x100

_KWARGS = """predictions: similarity per sentence pair; references: gold scores."""


class LmsslSts(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features({"predictions": datasets.Value("float64"),
                                                               "references": datasets.Value("float64")}))

    def _compute(self, predictions, references):
        return {"spearman": spearman_x100(np.asarray(predictions), np.asarray(references))}
