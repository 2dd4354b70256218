"""`lmssl study STUDY.yaml`'s file: pretraining runs at FLOP (or wall-clock) budgets and the evaluations of their final
checkpoints.
Plain data, parsed and checked like the pretraining config (unknown keys suggest the nearest valid one)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from lmssl.config.parse import build_section, yaml_problem
from lmssl.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


BUDGET_KEYS = {"flops": "train.max_flops", "minutes": "train.max_minutes"}  # study.budget_unit -> the run's key


def budget_label(budget: float, unit: str = "flops") -> str:
    """A budget as cell names and tables show it: 3 significant digits (1.5e13 FLOPs; 10min)."""
    return f"{budget:.3g}".replace("+", "") + ("min" if unit == "minutes" else "")


@dataclass
class RunSpec:
    name: str = ""  # the run's name in tables and plots, and its directory under study_dir/runs/
    config: str = ""  # its pretraining config (YAML), e.g. configs/mlm.yaml
    overrides: list[str] = field(default_factory=list)  # key=value overrides applied after the study's own
    budgets: list[float] = field(default_factory=list)  # its budgets (study.budget_unit); [] = the study's


@dataclass
class LikelihoodEval:
    file: str = ""  # held-out text scored by PPL (causal) / pseudo-PPL (masked), with bits per byte; "" = off
    max_words: int = 0  # its first N whitespace words only (0 = all)


@dataclass
class ProbeEval:
    tasks: list[str] = field(default_factory=list)  # GLUE tasks (or task cards) scored by a linear probe
    examples: int = 2000  # the probe's training (and per dev set) subsample


@dataclass
class FinetuneEval:
    tasks: list[str] = field(default_factory=list)  # GLUE tasks (or task cards) scored by fine-tuning
    overrides: list[str] = field(default_factory=list)  # finetune.key=value settings, e.g. finetune.seeds=3


@dataclass
class StsEval:
    sets: list[str] = field(default_factory=list)  # STS sets (Spearman x 100), e.g. [stsb_dev]


@dataclass
class PairsEval:
    corpus: str = ""  # held-out text `lmssl pairs make` builds the study's minimal pairs from; "" = off
    file: str = ""  # or a ready minimal-pairs JSONL (BLiMP format)
    per_type: int = 200  # pairs of each perturbation made from the corpus
    word_l2r: bool = False  # masked models: PLL-word-l2r


@dataclass
class LabelEfficiencyEval:
    task: str = ""  # GLUE task (or task card) fine-tuned with few labels; "" = off
    sizes: list[int] = field(default_factory=lambda: [250, 1000, 4000])  # labelled examples (0 = all of them)
    seeds: int = 2  # fine-tuning seeds per size (mean and std)
    overrides: list[str] = field(default_factory=list)  # finetune.key=value settings
    budgets: Literal["largest", "all"] = "largest"  # fine-tune each run's largest budget only, or every budget


@dataclass
class Evaluations:
    likelihood: LikelihoodEval = field(default_factory=LikelihoodEval)
    probe: ProbeEval = field(default_factory=ProbeEval)
    finetune: FinetuneEval = field(default_factory=FinetuneEval)
    sts: StsEval = field(default_factory=StsEval)
    pairs: PairsEval = field(default_factory=PairsEval)
    label_efficiency: LabelEfficiencyEval = field(default_factory=LabelEfficiencyEval)


@dataclass
class SizeSpec:
    name: str = ""  # the size's run name, e.g. w128
    overrides: list[str] = field(default_factory=list)  # model.key=value overrides that make it


@dataclass
class ScalingSpec:
    config: str = ""  # the pretraining config every size starts from
    overrides: list[str] = field(default_factory=list)  # applied to every size (after the study's own)
    sizes: list[SizeSpec] = field(default_factory=list)  # model sizes: one run each
    budgets: list[float] = field(default_factory=list)  # FLOP budgets: every size trains at each
    bootstrap: int = 200  # bootstrap refits for the intervals of E, A, B, alpha, beta
    seed: int = 0  # seeds the bootstrap


@dataclass
class StudySpec:
    name: str = ""  # the study's name (report title); "" = the file's stem
    output_dir: str = ""  # study_dir: runs, evaluations, results.json, report.md, plots; "" = runs/studies/<name>
    overrides: list[str] = field(default_factory=list)  # key=value overrides of every run's config
    budgets: list[float] = field(default_factory=list)  # budgets of runs that give none (in budget_unit)
    # what budgets count: FLOPs (train.max_flops), or minutes of training wall time (train.max_minutes, decided from
    # the first steps' speed: equal time means each cell run alone on the machine)
    budget_unit: Literal["flops", "minutes"] = "flops"
    runs: list[RunSpec] = field(default_factory=list)  # the runs compared
    evaluate: Evaluations = field(default_factory=Evaluations)  # what each final checkpoint is scored on
    scaling: ScalingSpec | None = None  # a grid of sizes x budgets whose final losses fit L(N, D)
    source: str = ""  # the study file (messages, report)

    def all_runs(self) -> list[RunSpec]:
        """The runs, then the scaling section's sizes as runs (config + overrides + size overrides)."""
        runs = [RunSpec(r.name, r.config, r.overrides, r.budgets or self.budgets) for r in self.runs]
        if self.scaling is not None:
            s = self.scaling
            runs += [RunSpec(z.name, s.config, s.overrides + z.overrides, s.budgets) for z in s.sizes]
        return runs


SECTIONS = {"likelihood": LikelihoodEval, "probe": ProbeEval, "finetune": FinetuneEval, "sts": StsEval,
            "pairs": PairsEval, "label_efficiency": LabelEfficiencyEval}


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def _list_of(cls, raw, prefix: str, source: str) -> list:
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: key '{prefix}': expected a list of mappings, got {raw!r}")
    return [build_section(cls, _mapping(item, f"{source}: key '{prefix}[{i}]'"), f"{prefix}[{i}]", source)
            for i, item in enumerate(raw)]


def load_study(path: str | Path) -> StudySpec:
    """Parse and check a study file; a ConfigError names the key and what would be valid."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        raw = _mapping(yaml.safe_load(path.read_text()), source)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {yaml_problem(e)}") from None
    raw = dict(raw)
    runs = _list_of(RunSpec, raw.pop("runs", []) or [], "runs", source)
    evaluations = _mapping(raw.pop("evaluate", None), f"{source}: key 'evaluate'")
    scaling_raw = raw.pop("scaling", None)
    spec = build_section(StudySpec, raw, "study", source)
    unknown = [k for k in evaluations if k not in SECTIONS]
    if unknown:
        build_section(Evaluations, {unknown[0]: None}, "evaluate", source)  # raises, suggesting the nearest
    spec.evaluate = Evaluations(**{k: build_section(cls, _mapping(evaluations.get(k), f"{source}: key 'evaluate.{k}'"),
                                                    f"evaluate.{k}", source) for k, cls in SECTIONS.items()})
    spec.runs, spec.source = runs, source
    if scaling_raw is not None:
        scaling_raw = dict(_mapping(scaling_raw, f"{source}: key 'scaling'"))
        sizes = _list_of(SizeSpec, scaling_raw.pop("sizes", []) or [], "scaling.sizes", source)
        spec.scaling = build_section(ScalingSpec, scaling_raw, "scaling", source)
        spec.scaling.sizes = sizes
    spec.name = spec.name or path.stem
    spec.output_dir = spec.output_dir or f"runs/studies/{spec.name}"
    check_study(spec)
    return spec


def check_study(spec: StudySpec) -> None:
    def fail(key: str, message: str):
        raise ConfigError(f"{spec.source}: key '{key}': {message}")

    runs = spec.all_runs()
    if not runs:
        fail("runs", "a study needs at least one run (or a scaling section with sizes)")
    names = [r.name for r in runs]
    for i, r in enumerate(runs):
        key = f"runs[{i}]" if i < len(spec.runs) else f"scaling.sizes[{i - len(spec.runs)}]"
        if not NAME.match(r.name):
            fail(f"{key}.name", f"{r.name!r} is not a usable name (letters, digits, '_', '-', '.')")
        if r.name in names[:i]:
            fail(f"{key}.name", f"{r.name!r} names two runs")
        if not r.config:
            fail(f"{key}.config" if i < len(spec.runs) else "scaling.config", "required: a pretraining config")
        if not r.budgets:
            fail(f"{key}.budgets" if i < len(spec.runs) else "scaling.budgets",
                 "no budget: give budgets here or at the study's top level")
        if any(b <= 0 for b in r.budgets) or len(set(r.budgets)) != len(r.budgets):
            fail(f"{key}.budgets", f"budgets must be distinct and positive, got {r.budgets}")
        labels: dict[str, float] = {}
        for b in r.budgets:  # one cell directory per label: two budgets sharing one would train only one of them
            other = labels.setdefault(budget_label(b, spec.budget_unit), b)
            if other != b:
                fail(f"{key}.budgets", f"{other:.6g} and {b:.6g} both make the cell "
                                       f"'{r.name}-{budget_label(b, spec.budget_unit)}' "
                                       f"(cells are named by 3 significant digits); make them differ within those")
    if spec.scaling is not None and spec.budget_unit != "flops":
        fail("budget_unit", "a scaling fit needs FLOP budgets (L(N, D) with D = C / 6N): set budget_unit: flops")
    if spec.scaling is not None and (len(spec.scaling.sizes) < 2 or len(spec.scaling.budgets) < 2):
        fail("scaling", "a scaling fit needs at least 2 sizes and 2 budgets (3 x 3 or more to fit 5 parameters)")
    e = spec.evaluate
    if e.probe.examples < 1:
        fail("evaluate.probe.examples", "must be positive")
    if e.pairs.corpus and e.pairs.file:
        fail("evaluate.pairs.file", "give a corpus to make the pairs from, or a file of pairs, not both")
    if e.pairs.per_type < 1:
        fail("evaluate.pairs.per_type", "must be positive")
    if e.label_efficiency.task and (not e.label_efficiency.sizes or min(e.label_efficiency.sizes) < 0):
        fail("evaluate.label_efficiency.sizes", "labelled-example counts >= 0 (0 = all), at least one")
    if e.label_efficiency.seeds < 1:
        fail("evaluate.label_efficiency.seeds", "must be positive")
