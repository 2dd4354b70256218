"""Where data lives: the data root (`data.root`, else $LMSSL_DATA, else the development layout's ../shared/data
from the working directory) and the tokenization cache; corpus paths are looked up in the working directory, then
under the data root, and what is in neither but reads `name:config:split` is a Hub dataset from the local
`datasets` cache. The files a checkout ships (tokenizers/, configs/tasks/) are found by `shipped`."""
from __future__ import annotations

import os
from pathlib import Path

from lmssl.config import Config
from lmssl.data.corpus import HUB_NAME, Corpus
from lmssl.errors import ConfigError

DEVELOPMENT_DATA_ROOT = Path("..", "shared", "data")  # the README's fallback: the data beside a checkout


def root_dir(root: str = "") -> Path:
    """The data root: `root` when given, else $LMSSL_DATA, else ../shared/data from the working directory."""
    if root:
        return Path(root).expanduser()
    if os.environ.get("LMSSL_DATA"):
        return Path(os.environ["LMSSL_DATA"]).expanduser()
    return DEVELOPMENT_DATA_ROOT


def shipped(name: str) -> Path:
    """A directory the repository ships (tokenizers, configs/tasks): in the checkout lmssl runs from, else (an
    installed package) in the working directory."""
    checkout = Path(__file__).resolve().parents[2]
    return (checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()) / name


def data_root(cfg: Config) -> Path:
    return root_dir(cfg.data.root)


def resolve_data_path(cfg: Config, value: str, key: str) -> Path | str:
    """A corpus location: a path, absolute or relative to the working directory if it exists there, else to the
    data root; or, where no such path exists, a Hub dataset name `name:config:split`."""
    p = Path(value).expanduser()
    candidate = p if p.is_absolute() or p.exists() else data_root(cfg) / p
    if candidate.exists():
        return candidate
    if HUB_NAME.match(value):
        return value
    raise ConfigError(
        f"key '{key}': file not found: {value} (looked in the working directory and the data root "
        f"{data_root(cfg)}; set LMSSL_DATA or data.root; a Hub dataset is written name:config:split)")


def corpus_of(cfg: Config, split: str) -> Corpus:
    """data.train or data.valid as a Corpus; with data.valid=auto, valid is the held-out share
    (data.valid_fraction) of data.train's documents and train is the rest."""
    d = cfg.data
    auto = d.valid == "auto"
    key = "data.train" if split == "train" or auto else "data.valid"
    location = resolve_data_path(cfg, d.train if key == "data.train" else d.valid, key)
    return Corpus(str(location), d.format, d.doc_split, d.text_field, holdout=d.valid_fraction if auto else 0.0,
                  part=split if auto else "all")


def cache_dir(cfg: Config) -> Path:
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir).expanduser()
    if os.environ.get("LMSSL_CACHE"):
        return Path(os.environ["LMSSL_CACHE"]).expanduser()
    return Path.home() / ".cache" / "lmssl"
