"""What a run evaluates, and when: every eval.every steps (neither at the last step nor when stopping) and at the
end, the objective's loss and metrics on data.valid with PPL / pseudo-PPL on its first words, the STS sets the
objective asks for (keeping the best weights in best/), and the online probe, each its own metrics.jsonl line.
At the end also what the final metrics must beat to show that anything was learned (`Objective.baselines`)."""
from __future__ import annotations

import sys

from lmssl.data.paths import data_root
from lmssl.data.unigram import Unigram, UnigramBaselines
from lmssl.downstream.sts import evaluate_sts
from lmssl.evaluation.validation import evaluate


def baseline_table(metrics: dict[str, float], baselines: dict[str, tuple[float, str]], step: int) -> str:
    """The final validation metrics beside their baselines, for the end of a run (stderr)."""
    lines = [f"final validation at step {step}: metric, value, baseline (what the baseline is)"]
    for key, (value, what) in baselines.items():
        if key in metrics:
            got = metrics[key]
            better = got < value if key.endswith(("loss", "ppl", "pppl")) else got > value
            mark = "better than" if better else "NOT better than"
            lines.append(f"  {key:<22} {got:>10.4g}   {value:>10.4g}   {mark} {what}")
    return "\n".join(lines)


class Evaluator:
    def __init__(self, cfg, dist, engine, tokenizer, data: tuple, likelihood, probe, best, log):
        self.cfg, self.dist, self.engine, self.tokenizer = cfg, dist, engine, tokenizer
        self.objective = engine.model
        self.train_data, self.valid_data = data
        self.likelihood = likelihood  # lmssl.evaluation.likelihood.ValidationLikelihood, or None
        self.probe = probe  # lmssl.downstream.online_probe.OnlineProbe on the main process, or None
        self.best, self.log = best, log  # lmssl.checkpoint.format.BestCheckpoint, lmssl.training.logger.RunLog

    def due(self, step: int, stopping: bool) -> bool:
        every = self.cfg.eval.every
        return bool(every) and step % every == 0 and step < self.cfg.train.max_steps and not stopping

    def evaluate(self, state) -> None:
        """The evaluations of a step during training, each logged, and a line of them on the console."""
        metrics = {}
        if self.valid_data is not None:
            metrics = self.validation(state)
            self.log.write(state.step, metrics)
        metrics.update(self.sts(state))
        metrics.update(self.probed(state))
        shown = [f"{k} {v:.4g}" for k, v in metrics.items() if k != "flops" and isinstance(v, float)]
        if shown:
            self.log.note(f"step {state.step}: {', '.join(shown)}")

    def final(self, state) -> tuple[dict, dict]:
        """(the final metrics, each logged, and the baselines the main process printed beside them)."""
        metrics = dict(state.flops_metric())
        if self.valid_data is not None:
            metrics.update(self.validation(state))
            self.log.write(state.step, {k: v for k, v in metrics.items() if k.startswith("val_") or k == "flops"})
        metrics.update(self.sts(state))
        metrics.update(self.probed(state))
        baselines = self.baselines(metrics) if self.dist.is_main else {}
        if baselines:
            print(baseline_table(metrics, baselines, state.step), file=sys.stderr)
        return metrics, {k: v for k, (v, _) in baselines.items()}

    def validation(self, state) -> dict:
        """The objective's loss and metrics on data.valid, plus PPL / pseudo-PPL on its first words."""
        metrics = evaluate(self.engine, self.valid_data, self.cfg.eval.batch_size, self.cfg.eval.max_batches)
        return {**metrics, **(self.likelihood(self.objective) if self.likelihood else {}), **state.flops_metric()}

    def sts(self, state) -> dict:
        """The STS sets the objective asks for (SimCSE: STS-B dev); the best weights on its selection metric are
        kept in output_dir/best. Draws nothing from the global RNG, so training stays reproducible."""
        sets = self.objective.sts_sets()
        if not sets:
            return {}
        scores = evaluate_sts(self.objective, self.tokenizer, data_root(self.cfg), sets,
                              batch_size=self.cfg.eval.batch_size)
        metrics = {f"{name}_spearman": value for name, value in scores.items()}
        self.log.write(state.step, {**metrics, **state.flops_metric()})
        with self.engine.gathered():  # collective under ZeRO-3
            if self.dist.is_main:
                self.best.update(state.step, metrics, self.objective, self.cfg, self.tokenizer)
        return metrics

    def probed(self, state) -> dict:
        """The online linear probe of the encoder's current weights (eval.probe_task), on the main process."""
        if not self.cfg.eval.probe_task:
            return {}
        with self.engine.gathered():  # collective under ZeRO-3
            metrics = self.probe(self.objective.encoder()) if self.probe is not None else {}
        if metrics:
            self.log.write(state.step, {**metrics, **state.flops_metric()})
        return metrics

    def baselines(self, result: dict) -> dict[str, tuple[float, str]]:
        """The baselines (`Objective.baselines`) of the final metrics in `result`: the training tokens' unigram model
        scored on the validation tokens and on the text PPL / pseudo-PPL scores, the scored pairs' majority label.
        None of them for a streamed corpus, whose tokens are not held."""
        train, valid = getattr(self.train_data, "tokens", None), getattr(self.valid_data, "tokens", None)
        if train is None or valid is None:
            return {}
        model = Unigram(train, self.tokenizer.vocab_size, self.tokenizer.special_ids)
        unigram = UnigramBaselines.of(model, valid, self.likelihood.tokens() if self.likelihood else None)
        n, e = len(self.valid_data), self.cfg.eval
        evaluated = min(n, e.max_batches * e.batch_size or n)
        return {k: (v, what) for k, (v, what) in self.objective.baselines(unigram, self.valid_data, evaluated).items()
                if v is not None and k in result}
