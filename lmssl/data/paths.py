"""Where data lives: the data root (`data.root`, else $LMSSL_DATA, else ../shared/data beside the repo) and
the tokenization cache; corpus paths are looked up in the working directory, then under the data root."""
from __future__ import annotations

import os
from pathlib import Path

from lmssl.config import REPO_ROOT, Config
from lmssl.errors import ConfigError


def root_dir(root: str = "") -> Path:
    """The data root: `root` when given, else $LMSSL_DATA, else ../shared/data beside the repository."""
    if root:
        return Path(root).expanduser()
    if os.environ.get("LMSSL_DATA"):
        return Path(os.environ["LMSSL_DATA"]).expanduser()
    return REPO_ROOT.parent / "shared" / "data"


def data_root(cfg: Config) -> Path:
    return root_dir(cfg.data.root)


def resolve_data_path(cfg: Config, value: str, key: str) -> Path:
    """A corpus path: absolute, relative to the working directory if it exists there, else to the data root."""
    p = Path(value).expanduser()
    candidate = p if p.is_absolute() or p.exists() else data_root(cfg) / p
    if not candidate.exists():
        raise ConfigError(
            f"key '{key}': file not found: {value} (looked in the working directory and the data root "
            f"{data_root(cfg)}; set LMSSL_DATA or data.root)")
    return candidate


def cache_dir(cfg: Config) -> Path:
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir).expanduser()
    if os.environ.get("LMSSL_CACHE"):
        return Path(os.environ["LMSSL_CACHE"]).expanduser()
    return Path.home() / ".cache" / "lmssl"
