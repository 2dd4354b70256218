"""A config as readable text: every key with its value and the one-line comment its dataclass gives it
(`lmssl config show`, `lmssl train --help`). The comments are read from the dataclasses' own source."""
from __future__ import annotations

import dataclasses
import inspect
import re

import yaml

from lmssl.config.objectives import OBJECTIVE_CONFIGS
from lmssl.config.sections import SECTIONS, Config

FIELD = re.compile(r"^\s+(\w+):[^#]*?(?:#\s*(.*))?$")
COMMENT = re.compile(r"^\s+#\s*(.*)$")


def field_comments(cls: type) -> dict[str, str]:
    """field name -> its comment (on its line, or on the comment line just above it), through the base classes."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        above = ""
        for line in inspect.getsource(klass).splitlines()[1:]:
            if match := COMMENT.match(line):
                above = match.group(1)
            elif match := FIELD.match(line):
                comments[match.group(1)] = match.group(2) or above
                above = ""
            else:
                above = ""
    return comments


def _value(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def describe(cfg: Config) -> str:
    """The config as YAML, each key followed by its comment."""
    lines = []
    for name in SECTIONS:
        section = getattr(cfg, name)
        comments = field_comments(type(section))
        lines.append(f"{name}:")
        for f in dataclasses.fields(section):
            comment = comments.get(f.name, "")
            lines.append(f"  {f.name}: {_value(getattr(section, f.name))}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines) + "\n"


def key_list(cfg: Config) -> str:
    """`section.key (default): comment` for every key of a config, and each objective's own keys, for --help."""
    lines = []
    for name in SECTIONS:
        section = getattr(cfg, name)
        comments = field_comments(type(section))
        for f in dataclasses.fields(section):
            lines.append(f"  {name}.{f.name} ({_value(getattr(section, f.name))}): {comments.get(f.name, '')}")
        if name == "objective":
            for objective, cls in OBJECTIVE_CONFIGS.items():
                comments, default = field_comments(cls), cls()
                lines += [f"  objective.{f.name} ({objective}: {_value(getattr(default, f.name))}): "
                          f"{comments.get(f.name, '')}" for f in dataclasses.fields(cls) if f.name != "name"]
    return "\n".join(lines)
