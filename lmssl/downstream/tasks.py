"""Task cards: what a downstream task's files are and how to read them (GLUE and the user's own).

A task card is YAML (configs/tasks/<task>.yaml for the nine GLUE tasks):

    name: rte                          # used in results and output paths
    train: glue/RTE/train.tsv          # relative paths: beside the card, else under the data root
    dev: glue/RTE/dev.tsv              # or a mapping of named dev sets (MNLI: matched, mismatched)
    format: auto                       # tsv | csv | jsonl; auto = from the file suffix
    header: true                       # tsv/csv: the first row names the columns (false: columns are 0-based indices)
    quoting: auto                      # csv quoting; auto = on for csv, off for tsv (GLUE's files hold bare '"')
    text_columns: [sentence1, sentence2]   # one (single text) or two (a pair) columns
    label_column: label
    labels: [entailment, not_entailment]   # classification: the label values (compared as strings), or
    regression: false                      # regression: true for a numeric score (no labels)
    metrics: [accuracy]                # accuracy, f1 (2 labels: the second is positive), mcc; pearson, spearman
    grid: {lr: [1.0e-4, 3.0e-4]}       # optional: the lists `finetune.search=true` tries (lr, epochs, batch_size)

Reading is strict: a missing file or column, a row with another number of fields than the header (or
the first row), an empty text or a label outside the list stops with a ConfigError naming file and line.
Blank lines are skipped. Files are UTF-8; a byte-order mark (GLUE's MRPC) is dropped.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from lmssl.config.finetune import GRID_KEYS
from lmssl.config.parse import yaml_problem
from lmssl.config.validate import PLAIN_NAME_RULE, is_plain_name
from lmssl.data.jsonl import jsonl_objects
from lmssl.data.paths import shipped
from lmssl.data.utf8 import utf8_problem
from lmssl.downstream.task_metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS
from lmssl.errors import ConfigError, did_you_mean

FLOAT32_MAX = float(np.finfo(np.float32).max)  # targets are stored as float32
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
FORMATS = ("auto", "tsv", "csv", "jsonl")


@dataclass
class TaskCard:
    name: str  # task name in results and output paths
    train: str  # training file
    dev: dict[str, str]  # dev set name -> file; the first one selects the best epoch
    text_columns: list  # one or two column names (or 0-based indices without a header)
    label_column: str | int  # column holding the label or score
    labels: list[str] | None = None  # classification label values; None = regression
    metrics: list[str] = field(default_factory=list)  # metric names (see task_metrics)
    format: str = "auto"  # tsv | csv | jsonl | auto (from the suffix)
    header: bool = True  # tsv/csv files start with a header row
    quoting: str | bool = "auto"  # csv quoting (auto: csv yes, tsv no)
    source: str = ""  # the card's path, for messages; relative files are looked up beside it first
    grid: dict[str, list] = field(default_factory=dict)  # finetune.search's lists: lr, epochs, batch_size

    @property
    def regression(self) -> bool:
        return self.labels is None

    @property
    def num_outputs(self) -> int:
        return 1 if self.regression else len(self.labels)

    def to_dict(self) -> dict:
        return asdict(self)


CARD_KEYS = ("name", "train", "dev", "format", "header", "quoting", "text_columns", "label_column", "labels",
             "regression", "metrics", "grid")


def load_task_card(path: str | Path) -> TaskCard:
    """Parse and check a task card (YAML). Raises ConfigError naming the card and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"task card not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    except UnicodeDecodeError as e:
        raise (utf8_problem(path) or e) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a task card is a mapping with the keys {', '.join(CARD_KEYS)}")
    return card_from_dict(raw, str(path))


def card_from_dict(raw: dict, source: str) -> TaskCard:
    def fail(key: str, message: str):
        raise ConfigError(f"{source}: key '{key}': {message}")

    for key in raw:
        if key not in CARD_KEYS:
            raise ConfigError(f"{source}: unknown key '{key}'" + did_you_mean(str(key), list(CARD_KEYS)))
    for key in ("train", "dev", "text_columns", "label_column"):
        if raw.get(key) in (None, "", [], {}):
            fail(key, "required")
    name = str(raw.get("name") or Path(source).stem)
    if not is_plain_name(name):  # it names the task's output directory: never a path out of it
        fail("name", f"{name!r} is not {PLAIN_NAME_RULE}" + ("" if raw.get("name") else
                                                                 " (it comes from the file's name: set name:)"))
    dev = raw["dev"]
    dev = {"dev": dev} if isinstance(dev, str) else dev
    if not isinstance(dev, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in dev.items()):
        fail("dev", "a file, or a mapping of dev set names to files")
    columns = raw["text_columns"]
    columns = [columns] if isinstance(columns, (str, int)) else columns
    if not isinstance(columns, list) or not 1 <= len(columns) <= 2:
        fail("text_columns", "one column (a single text) or two (a pair)")
    fmt = raw.get("format", "auto")
    if fmt not in FORMATS:
        fail("format", f"invalid value {fmt!r}; choose one of {', '.join(FORMATS)}")
    header = raw.get("header", True)
    if not isinstance(header, bool):
        fail("header", "expected true or false")
    quoting = raw.get("quoting", "auto")
    if quoting not in ("auto", True, False):
        fail("quoting", "expected auto, true or false")
    regression, labels = raw.get("regression", False), raw.get("labels")
    if not isinstance(regression, bool):
        fail("regression", "expected true or false")
    if regression and labels is not None:
        fail("labels", "give either a label list (classification) or regression: true")
    if not regression and labels is None:
        labels = []  # classification with the labels found in the training file (infer_labels)
    elif labels is not None:
        if not isinstance(labels, list) or len(labels) < 2 or any(isinstance(v, (list, dict)) for v in labels):
            fail("labels", "a list of at least two label values")
        labels = [str(v) for v in labels]
        if len(set(labels)) != len(labels):
            fail("labels", f"duplicate values in {labels}")
    metrics = raw.get("metrics") or (["pearson", "spearman"] if regression else ["accuracy"])
    metrics = [metrics] if isinstance(metrics, str) else metrics
    valid = REGRESSION_METRICS if regression else CLASSIFICATION_METRICS
    for m in metrics:
        if m not in valid:
            fail("metrics", f"unknown {'regression' if regression else 'classification'} metric {m!r}"
                 + did_you_mean(str(m), list(valid)))
    if "f1" in metrics and labels and len(labels) != 2:
        fail("metrics", f"f1 is binary (the second label is the positive class); this task has {len(labels)} labels")
    return TaskCard(name=name, train=str(raw["train"]), dev=dev, text_columns=columns, label_column=raw["label_column"],
                    labels=labels, metrics=list(metrics), format=fmt, header=header, quoting=quoting, source=source,
                    grid=card_grid(raw.get("grid") or {}, fail))


def card_grid(grid, fail) -> dict[str, list]:
    """A card's `grid`: lists of positive values for lr (numbers) and epochs / batch_size (integers)."""
    if not isinstance(grid, dict):
        fail("grid", f"a mapping of {', '.join(GRID_KEYS)} to lists of values")
    out = {}
    for key, values in grid.items():
        if key not in GRID_KEYS:
            fail("grid", f"unknown key {key!r}" + did_you_mean(str(key), list(GRID_KEYS)))
        values = values if isinstance(values, list) else [values]
        kind = float if key == "lr" else int
        try:
            values = [kind(float(v)) if kind is float else v for v in values]
        except (TypeError, ValueError):
            values = None
        if not values or not all(isinstance(v, kind) and not isinstance(v, bool) and v > 0 for v in values):
            fail("grid", f"{key}: a list of positive {'numbers' if kind is float else 'integers'}")
        out[key] = values
    return out


def file_format(card: TaskCard, path: Path) -> str:
    """tsv, csv or jsonl: the card's `format`, or (auto) the file's suffix."""
    fmt = card.format if card.format != "auto" else {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl",
                                                      ".json": "jsonl"}.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{card.source}: key 'format': cannot tell the format of {path} from its suffix; "
                          f"set format: tsv, csv or jsonl")
    return fmt


def infer_labels(card: TaskCard, root: Path) -> TaskCard:
    """A classification card without `labels`: its labels are the values of the training file's label column,
    sorted (numerically when they all are numbers), so that they do not depend on the order of the rows."""
    if card.labels != []:
        return card
    path = resolve_file(card, card.train, root)
    fmt = file_format(card, path)
    rows = jsonl_objects(path) if fmt == "jsonl" else _rows(path, card, fmt)
    values = {str(_get(row, card.label_column, path, line, fmt)).strip() for line, row in rows}
    try:
        labels = sorted(values, key=float)
    except ValueError:
        labels = sorted(values)
    if len(labels) < 2:
        raise ConfigError(f"{path}: the label column {card.label_column!r} holds {len(labels)} distinct value(s); "
                          f"a classification task needs two or more (or set regression: true)")
    if "f1" in card.metrics and len(labels) != 2:
        raise ConfigError(f"{card.source}: key 'metrics': f1 is binary; the training file has {len(labels)} labels")
    return dataclasses.replace(card, labels=labels)


def glue_card(task: str) -> TaskCard:
    return load_task_card(shipped("configs/tasks") / f"{task}.yaml")


def resolve_file(card: TaskCard, value: str, root: Path) -> Path:
    """A card's file: absolute, beside the card, or under the data root."""
    p = Path(value).expanduser()
    candidates = [p] if p.is_absolute() else [Path(card.source).parent / p, root / p]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"task '{card.name}': file not found: {value} (looked in "
                      f"{' and '.join(str(c.parent) for c in candidates)}; the data root is set with LMSSL_DATA or "
                      f"finetune.data_root)")


def missing_files(card: TaskCard, root: Path) -> list[str]:
    """The card's files that cannot be found (empty when the task is present)."""
    missing = []
    for value in (card.train, *card.dev.values()):
        try:
            resolve_file(card, value, root)
        except ConfigError:
            missing.append(value)
    return missing


@dataclass
class TaskExamples:
    texts: list[tuple[str, ...]]  # one or two texts per example
    targets: np.ndarray  # (N,) int64 class indices or float32 scores
    path: Path  # the file read

    def __len__(self) -> int:
        return len(self.targets)


def _rows(path: Path, card: TaskCard, fmt: str):
    """(line, row) of a tsv/csv file; rows are lists, or dicts with a header. Checks ragged rows."""
    quoting = card.quoting if card.quoting != "auto" else fmt == "csv"
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",",
                            quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE, strict=True)
        names, width = None, None
        try:
            for row in reader:
                line = reader.line_num
                if not row or row == [""]:
                    continue
                if width is None:
                    width = len(row)
                    if card.header:
                        names = row
                        continue
                if len(row) != width:
                    raise ConfigError(f"{path}:{line}: {len(row)} fields, expected {width} "
                                      f"(as the {'header' if card.header else 'first row'}; a ragged row)")
                yield line, dict(zip(names, row)) if names else row
        except csv.Error as e:
            raise ConfigError(f"{path}:{reader.line_num}: {e}") from None
        except UnicodeDecodeError as e:
            raise (utf8_problem(path) or e) from None




def _get(row, column, path: Path, line: int, fmt: str):
    if isinstance(row, dict):
        if column not in row:
            what = "key" if fmt == "jsonl" else "column"
            raise ConfigError(f"{path}:{line}: no {what} {column!r}; the row has {', '.join(map(repr, row))}")
        return row[column]
    if not isinstance(column, int) or not 0 <= column < len(row):
        raise ConfigError(f"{path}:{line}: column {column!r} does not exist: without a header, columns are 0-based "
                          f"indices below {len(row)}")
    return row[column]


def has_labels(card: TaskCard, path: Path) -> bool:
    """Whether the file's first example holds the card's label column (a file to predict may carry its labels)."""
    fmt = file_format(card, path)
    rows = jsonl_objects(path) if fmt == "jsonl" else _rows(path, card, fmt)
    first = next(iter(rows), None)
    if hasattr(rows, "close"):
        rows.close()
    if first is None:
        return False
    row = first[1]
    if isinstance(row, dict):
        return card.label_column in row
    return isinstance(card.label_column, int) and 0 <= card.label_column < len(row)


def read_task_file(card: TaskCard, path: Path, labelled: bool = True) -> TaskExamples:
    """The examples of one file of the task (see the module docstring for the checks); `labelled=False` reads
    the texts only (files to predict), the targets are then zeros."""
    fmt = file_format(card, path)
    rows = jsonl_objects(path) if fmt == "jsonl" else _rows(path, card, fmt)
    index = {v: i for i, v in enumerate(card.labels or [])}
    texts, targets = [], []
    for line, row in rows:
        example = []
        for column in card.text_columns:
            text = _get(row, column, path, line, fmt)
            if text is not None and not isinstance(text, str):
                raise ConfigError(f"{path}:{line}: column {column!r} holds {text!r}, not a text")
            if not text or not text.strip():
                raise ConfigError(f"{path}:{line}: empty text in column {column!r}")
            example.append(text)
        if not labelled:
            texts.append(tuple(example))
            targets.append(0)
            continue
        value = _get(row, card.label_column, path, line, fmt)
        if card.regression:
            try:
                target = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{path}:{line}: label {value!r} in column {card.label_column!r} is not a number "
                                  f"(the task is a regression)") from None
            if not abs(target) <= FLOAT32_MAX:  # NaN, inf or beyond float32: every metric would be NaN
                raise ConfigError(f"{path}:{line}: label {value!r} in column {card.label_column!r} is not a finite "
                                  f"number (the task is a regression)")
            targets.append(target)
        else:
            label = str(value).strip() if value is not None else ""
            if label not in index:
                raise ConfigError(f"{path}:{line}: label {label!r} in column {card.label_column!r} is not one of "
                                  f"{card.labels} (the task card's labels)")
            targets.append(index[label])
        texts.append(tuple(example))
    if not texts:
        raise ConfigError(f"{path}: no examples")
    return TaskExamples(texts, np.asarray(targets, dtype=np.float32 if card.regression else np.int64), path)


def glue_task_name(task: str) -> str | None:
    """'sst2', 'SST-2', 'sts-b' ... -> the GLUE task name, None if it is not one."""
    name = task.lower().replace("-", "")
    return name if name in GLUE_TASKS else None


def task_card(task: str, root: Path) -> TaskCard:
    """The card of one GLUE task present under the data root, or of a task card file."""
    name = glue_task_name(task)
    if name is not None:
        card = glue_card(name)
        missing = missing_files(card, root)
        if missing:
            raise ConfigError(f"GLUE task '{name}' is not present under the data root {root}: {', '.join(missing)} "
                              f"not found (standard GLUE layout glue/<TASK>/train.tsv, dev.tsv; set LMSSL_DATA or "
                              f"finetune.data_root)")
        return card
    if task.endswith((".yaml", ".yml")) or os.path.exists(task):
        return load_task_card(task)
    hint = did_you_mean(task.lower(), [*GLUE_TASKS, "glue"], list_valid=False)
    raise ConfigError(f"unknown task {task!r}: choose a GLUE task ({' '.join(GLUE_TASKS)}), glue (all of them), "
                      f"or the path of a task card (.yaml){hint}")
