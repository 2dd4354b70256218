"""The online linear probe (`eval.probe_task`): during pretraining, every eval.every steps and at the end, the frozen
encoder's pooled features of a fixed subsample of a task train scikit-learn's logistic regression, whose dev scores
are logged as `val_probe_<metric>`. It is `lmssl finetune CKPT TASK finetune.probe=true` (the same encoding, features,
standardisation and fit) on the weights of that step, without writing a checkpoint."""
from __future__ import annotations

import time

import torch

from lmssl.config import Config, FinetuneConfig
from lmssl.data.paths import data_root
from lmssl.data.tokenizer import TextTokenizer
from lmssl.downstream.finetune import EncoderSource, encode_task, fit_probe, probe_features
from lmssl.downstream.probe import LinearProbe
from lmssl.downstream.tasks import infer_labels, task_card
from lmssl.errors import ConfigError
from lmssl.model.classifier import SequenceClassifier


def probe_settings(cfg: Config) -> FinetuneConfig:
    """The `lmssl finetune` settings the online probe equals: finetune.probe=true, max_train_examples =
    max_dev_examples = eval.probe_examples, eval_batch_size = eval.batch_size, the rest at their defaults."""
    n = cfg.eval.probe_examples
    return FinetuneConfig(probe=True, max_train_examples=n, max_dev_examples=n, eval_batch_size=cfg.eval.batch_size,
                          data_root=str(data_root(cfg)), baselines=False)


class OnlineProbe:
    def __init__(self, cfg: Config, tokenizer: TextTokenizer, causal: bool):
        self.fcfg = probe_settings(cfg)
        root = data_root(cfg)
        try:
            self.card = infer_labels(task_card(cfg.eval.probe_task, root), root)
            source = EncoderSource("(training)", "", cfg, tokenizer, causal, {}, None)
            self.data = encode_task(source, self.card, self.fcfg)  # once: the texts never change
        except ConfigError as e:
            raise ConfigError(f"key 'eval.probe_task': {e}") from None
        self.model = SequenceClassifier(cfg.model, causal, self.card.num_outputs, self.card.regression,
                                        use_pooler=False)

    @torch.no_grad()
    def __call__(self, encoder: torch.nn.Module) -> dict[str, float]:
        """`val_probe_<metric>` (x 100, as fine-tuning's) of the encoder's current weights on the probe's dev sets,
        and `val_probe_seconds`, the time it took."""
        started = time.perf_counter()
        device = next(encoder.parameters()).device
        self.model.to(device).encoder.load_state_dict(encoder.state_dict())
        train, dev, _ = probe_features(self.model, self.data, self.fcfg, device)
        records, _ = fit_probe(LinearProbe(self.model.head, self.card.regression), train, dev, self.card,
                               self.fcfg, self.fcfg.seed, device)
        scores = {k: v for k, v in records[0].items() if k not in ("step", "epoch") and not k.startswith("train_")}
        return {**{f"val_probe_{k}": v for k, v in scores.items()},
                "val_probe_seconds": time.perf_counter() - started}
