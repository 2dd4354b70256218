"""What lmssl may write into or replace: a new or empty directory, or one it recognises as its own output (a run,
a model directory, a study), never one that holds anything else: a mistyped output path must not cost a user
their files (issue 28's probe lost a corpus and a thesis to `train.overwrite=true` pointed one level too high)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from lmssl.errors import ConfigError
from lmssl.storage.atomic import OLD_PREFIX, TMP_PREFIX

MODEL_CONFIGS = ("config.json", "config.yaml")  # a Hugging Face model directory / an lmssl one
MODEL_CARD = "README.md"  # written beside the model directories of an ELECTRA export
SENTENCE_TRANSFORMERS_FOLDERS = ("1_Pooling", "2_Normalize")  # the modules of a sentence-transformers model


def foreign_entries(directory: Path, own: Iterable[str]) -> list[str]:
    """The entries of `directory` lmssl did not write there: neither among `own` nor one of its temporaries."""
    if not Path(directory).is_dir():
        return []
    own = set(own)
    return sorted(p.name + ("/" if p.is_dir() else "") for p in Path(directory).iterdir()
                  if p.name not in own and not p.name.startswith((TMP_PREFIX, OLD_PREFIX)))


def model_directory_strangers(directory: Path) -> list[str]:
    """What keeps `directory` from being a model directory lmssl wrote (an export, an import): [] when it holds a
    model config at its top, or subdirectories that each hold one (ELECTRA's two) beside at most its model card."""
    entries = [p for p in Path(directory).iterdir() if not p.name.startswith((TMP_PREFIX, OLD_PREFIX))]
    folders = [p for p in entries if p.is_dir()]
    if any((Path(directory) / name).is_file() for name in MODEL_CONFIGS):
        return sorted(p.name + "/" for p in folders if not any((p / n).is_file() for n in MODEL_CONFIGS)
                      and p.name not in SENTENCE_TRANSFORMERS_FOLDERS)
    models = [p for p in folders if any((p / n).is_file() for n in MODEL_CONFIGS)]
    if models and all(p in models or p.name == MODEL_CARD for p in entries):
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in entries) or ["no model config"]


def refuse_foreign(option: str, directory: Path, strangers: list[str], what: str, instead: str) -> None:
    """One line: `directory` is not `what` (listing a few of the entries that say so); nothing was touched."""
    if strangers:
        shown = ", ".join(strangers[:4]) + (f" and {len(strangers) - 4} more" if len(strangers) > 4 else "")
        raise ConfigError(f"{option}: {directory} is not {what} (it holds {shown}); lmssl writes only into a new "
                          f"or empty directory or over {what} it wrote, and deletes nothing else: {instead}")


def check_model_output(out: Path, overwrite: bool) -> None:
    """Before any work: `out` (export's or import's OUT_DIR) is new, empty, or with --overwrite a model directory."""
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} exists and is not empty; choose another output directory or pass --overwrite")
        refuse_foreign("OUT_DIR", out, model_directory_strangers(out), "a model directory",
                       "choose a new or empty OUT_DIR")
