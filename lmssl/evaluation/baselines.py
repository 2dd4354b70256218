"""What a model must beat to have learned anything, beside what it reached: objectives say which of their metrics
compare with what (`Objective.baselines`: lmssl.data.unigram, or chance)."""
from __future__ import annotations


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
