"""GLUE metrics x 100 (accuracy, f1, mcc; pearson, spearman) and their mean `score`, as `lmssl finetune`
computes them: lmssl.downstream.task_metrics.compute_metrics (scikit-learn / scipy)."""
import datasets
import evaluate
import numpy as np

from lmssl.downstream.task_metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, compute_metrics

_KWARGS = """predictions: class indices (config `classification`) or scores (`regression`); references: the gold
ones; metrics: names (default: accuracy / pearson and spearman)."""


class LmsslGlue(evaluate.Metric):
    def _info(self):
        value = datasets.Value("float32" if self.config_name == "regression" else "int64")
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features({"predictions": value, "references": value}))

    def _compute(self, predictions, references, metrics=None):
        regression = self.config_name == "regression"
        names = metrics or (["pearson", "spearman"] if regression else ["accuracy"])
        valid = REGRESSION_METRICS if regression else CLASSIFICATION_METRICS
        unknown = [m for m in names if m not in valid]
        if unknown:
            raise ValueError(f"unknown {self.config_name} metric {unknown[0]!r}; choose from {', '.join(valid)}")
        return compute_metrics(list(names), np.asarray(predictions), np.asarray(references))
