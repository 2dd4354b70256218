"""YAML files plus `section.key=value` overrides -> a validated Config, reading nothing but the YAML file.

Two steps, so that what needs the world can run between them (lmssl.training.prepare: `model.init_from` fills the
model keys the user left out): `read_config` gives the raw sections as written, `build_config` applies the
presets, types every value and validates. Unknown keys, wrong types and bad values raise ConfigError naming
the key (and the nearest valid one).
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from lmssl.config.objectives import objective_config_class
from lmssl.config.sections import MODEL_PRESETS, NORM_PLACEMENT_DEFAULTS, SECTIONS, Config, ModelConfig, ObjectiveConfig
from lmssl.config.validate import validate
from lmssl.errors import ConfigError, did_you_mean


@dataclass
class RawConfig:
    """The sections as written in the file and the overrides, before presets, types and validation."""
    sections: dict[str, dict[str, Any]]
    source: str  # where they came from, for error messages ("configs/mlm.yaml + overrides")
    overridden: frozenset[str] = frozenset()  # 'section.key' set by key=value overrides

    def model_keys(self) -> dict[str, Any]:
        return dict(self.sections.get("model", {}))


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parse error in one line: what is wrong and where ('expected ',' or ']' (line 2, column 1)')."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: invalid value {value!r}; choose one of {', '.join(map(repr, choices))}")
        return value
    if typing.get_origin(tp) is list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, typing.get_args(tp)[0], where) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list, bool)):  # YAML reads an unquoted yes/no/true as a boolean
            raise ConfigError(f"{where}: expected a string, got {value!r}" +
                              (" (quote it to mean the word)" if isinstance(value, bool) else ""))
        return str(value)
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def build_section(cls: type, raw: dict[str, Any], prefix: str, source: str):
    """One dataclass from a mapping of its fields; an unknown key suggests the nearest field."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"{source}: unknown key '{prefix}.{key}'"
                              + did_you_mean(f"{prefix}.{key}", [f"{prefix}.{n}" for n in names]))
        kwargs[key] = coerce(value, hints[key], f"{source}: key '{prefix}.{key}'")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'section.key=value' -> ([section, key], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.max_steps=100")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override '{text}': keys have the form section.field, e.g. train.max_steps")
    try:
        return parts, (yaml.safe_load(value) if value.strip() else "")
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({yaml_problem(e)}); quote it if it is a "
                          f"string, e.g. {key}='...'") from None


def read_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> RawConfig:
    """The raw sections of a YAML file (None = defaults only) with the overrides applied on top."""
    sections: dict[str, dict[str, Any]] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
        if loaded is None:
            raise ConfigError(f"{path}: the config file is empty; write at least one section "
                              f"({', '.join(SECTIONS)}), e.g. start from configs/mlm.yaml")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(SECTIONS)})")
        for section, body in loaded.items():
            if section not in SECTIONS:
                raise ConfigError(f"{path}: unknown section '{section}'" + did_you_mean(section, list(SECTIONS)))
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: section '{section}' must be a mapping of keys")
            sections[section] = dict(body)
    overridden = set()
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"override '{text}': unknown section '{section}'" + did_you_mean(section, list(SECTIONS)))
        sections.setdefault(section, {})[key] = value
        overridden.add(f"{section}.{key}")
    return RawConfig(sections, source if not overrides else f"{source} + overrides", frozenset(overridden))


def data_keys(raw: RawConfig, objective_cls: type[ObjectiveConfig]) -> dict[str, Any]:
    """The data section, with data.valid defaulted by the objective where the config leaves it out, and also
    where only data.train was overridden: validation never silently comes from another corpus."""
    data = dict(raw.sections.get("data", {}))
    if "valid" not in data or ("data.train" in raw.overridden and "data.valid" not in raw.overridden):
        data["valid"] = objective_cls.default_valid
    return data


def build_config(raw: RawConfig) -> Config:
    """Presets, types and validation: the Config of raw sections, or a ConfigError naming the key."""
    source = raw.source
    model_raw = raw.model_keys()
    preset = model_raw.get("preset", ModelConfig.preset)
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"{source}: key 'model.preset': invalid value {preset!r}; "
                          f"choose one of {', '.join(map(repr, MODEL_PRESETS))}")
    placement = NORM_PLACEMENT_DEFAULTS.get(model_raw.get("norm"), {})
    model_raw = {**MODEL_PRESETS[preset], **placement, **model_raw}
    objective_raw = dict(raw.sections.get("objective", {}))
    try:
        objective_cls = objective_config_class(objective_raw.get("name", ObjectiveConfig.name))
    except KeyError as e:
        raise ConfigError(f"{source}: key 'objective.name': {e.args[0]}") from None
    cfg = Config(
        model=build_section(ModelConfig, model_raw, "model", source),
        objective=build_section(objective_cls, objective_raw, "objective", source),
        data=build_section(SECTIONS["data"], data_keys(raw, objective_cls), "data", source),
        **{name: build_section(SECTIONS[name], raw.sections.get(name, {}), name, source) for name in ("train", "eval")},
    )
    validate(cfg, source)
    return cfg


def config_from_dict(sections: dict[str, dict[str, Any]], source: str = "config") -> Config:
    return build_config(RawConfig({k: dict(v) for k, v in sections.items()}, source))


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """Read YAML, apply `section.key=value` overrides, fill presets and validate. Raises ConfigError.
    `model.init_from` is not followed here: lmssl.training.prepare.load_run_config does that."""
    return build_config(read_config(path, overrides))


def config_yaml(cfg: Config) -> str:
    """The full config as YAML text (what a checkpoint's config.yaml holds)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
