"""YAML configuration: loading, profile selection, strict merging and CLI overrides.

A run's configuration is assembled from files under ``configs/`` (see ``pipeline.build_config``).
Each file is plain data. A file may carry a ``profiles:`` mapping (``tiny``, ``demo``, ``cpu``,
``gpu``): the selected profile is overlaid on the file's own values and the mapping dropped.
Merging is strict: an override may only set keys that already exist, and an unknown key is a
:class:`ConfigError` naming the closest valid key. ``Config`` gives attribute access
(``config.trainer.lr``) as OpenOOD's Config does. Types and ranges are checked afterwards by the
schemas (``moodcat_plugin/schema.py``).

Numbers are read as people write them: PyYAML follows YAML 1.1, where ``1e-3`` and ``5e-5`` (no
dot, or no sign in the exponent) are STRINGS. Files and ``--set`` values are read with
:class:`ConfigLoader`, which adds YAML 1.2's float syntax, so both become floats; anything else
(``abc``, ``1.2.3``, ``e5``) stays a string.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from moodcat_plugin.errors import ConfigError

PROFILES_KEY = "profiles"
# Mappings whose keys are data (dataset names, per-method sections), not a fixed schema.
# Network sections are open too: their keys depend on the network a config names (a variant may swap
# `name`), and the registered network's own schema rejects unknown keys right after the merge.
OPEN_SECTIONS = frozenset({"near", "far", "postprocessors", "extra_datasets", "network", "gan_network", "cb_network"})
# YAML 1.2 core-schema floats that YAML 1.1 misses: an exponent without a dot (1e-3, 5E+5) or
# without a sign (1.0e10). Plain integers never match (they keep YAML's int resolver).
_FLOAT_WITH_EXPONENT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
#: A plain name (method, benchmark, table row): it becomes ONE folder or file name under the output
#: and checkpoint folders, so no separator, no leading dot (nor ``..``), nothing Markdown reads (``|``).
PLAIN_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*")
PLAIN_NAME_WORDS = "a plain name (letters, digits and _ . + = -, not starting with '.', no '..')"


def is_plain_name(name: Any) -> bool:
    """Whether ``name`` is a plain name (see ``PLAIN_NAME_PATTERN``)."""
    return isinstance(name, str) and bool(PLAIN_NAME_PATTERN.fullmatch(name)) and ".." not in name


def plain_data(value: Any) -> Any:
    """Nested mappings (Config, OpenOOD's Config) and lists/tuples -> plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return value


def check_plain_name(name: Any, what: str) -> str:
    """``name`` when it is a plain name (see ``PLAIN_NAME_PATTERN``); ConfigError naming ``what`` otherwise.

    Names from configs and the command line become folder names (``scores/<method>``,
    ``<benchmark>/``, checkpoint runs): ``../x`` or ``a/b`` would reach outside the output folders."""
    if not is_plain_name(name):
        raise ConfigError(f"{what} {name!r} is not {PLAIN_NAME_WORDS}: it names a folder under the output "
                          "directory; rename it")
    return name


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3``-style numbers as floats (see the module doc)."""


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITH_EXPONENT, list("-+0123456789."))


def parse_yaml(text: str):
    """YAML text -> Python data with :class:`ConfigLoader` (``yaml.YAMLError`` on bad syntax)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass


class Config(dict):
    """A dict with attribute access; nested mappings become Configs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            super().__setitem__(key, _wrap(value))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(unknown_key_message(name, self.keys(), "")) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, _wrap(value))

    def __deepcopy__(self, memo):
        return Config(copy.deepcopy(dict(self), memo))


def _wrap(value: Any) -> Any:
    if isinstance(value, Config):
        return value
    if isinstance(value, Mapping):
        return Config(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def unknown_key_message(key: str, valid: Iterable[str], where: str) -> str:
    valid = sorted(str(v) for v in valid)
    location = f" in '{where}'" if where else ""
    if not valid:
        return f"unknown config key '{key}'{location}, which takes no keys."
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.0)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown config key '{key}'{location}.{hint} Valid keys: {', '.join(valid)}."


def _yaml_error_text(exc: yaml.YAMLError) -> str:
    """' at line L, column C: what' on one line (PyYAML's own message spans several)."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {problem or ' '.join(str(exc).split())}"


def load_yaml(path: Path | str) -> dict:
    """Read one YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML{_yaml_error_text(exc)}; fix the file") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at top level, found {type(data).__name__}")
    return data


def select_profile(data: dict, profile: str, source: str = "") -> dict:
    """Overlay ``data['profiles'][profile]`` (if the file has profiles) and drop the mapping."""
    data = copy.deepcopy(data)
    profiles = data.pop(PROFILES_KEY, None)
    if profiles is None:
        return data
    if profile not in profiles:
        raise ConfigError(
            f"{source or 'config'} has no profile '{profile}'; it defines: {', '.join(profiles)}."
        )
    return merge(data, profiles[profile] or {}, where=source)


def merge(base: Mapping, override: Mapping, where: str = "", strict: bool = True) -> dict:
    """Recursively overlay ``override`` on ``base`` and return a new dict.

    With ``strict``, keys absent from ``base`` raise ConfigError naming the closest key,
    except inside open sections (dataset groups, per-method sections) and where ``base`` is empty.
    """
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        path = f"{where}.{key}" if where else str(key)
        section_name = where.rsplit(".", 1)[-1]
        is_open = section_name in OPEN_SECTIONS or not base
        if key not in result:
            if strict and not is_open:
                raise ConfigError(unknown_key_message(key, result.keys(), where))
            result[key] = copy.deepcopy(value)
        elif isinstance(result[key], Mapping) and isinstance(value, Mapping):
            result[key] = merge(result[key], value, where=path, strict=strict)
        else:
            result[key] = copy.deepcopy(value)
    return result


def parse_override(text: str) -> dict:
    """Turn ``'a.b.c=VALUE'`` into ``{'a': {'b': {'c': VALUE}}}``; VALUE is parsed as YAML
    (:class:`ConfigLoader`: ``1e-3`` is a float)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.subkey=value")
    dotted, raw = text.split("=", 1)
    try:
        value = parse_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': the value is not valid YAML{_yaml_error_text(exc)}; quote it "
                          f"or fix the brackets (lists: [1, 2])") from exc
    nested: dict = {}
    cursor = nested
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override '{text}' names no key")
    for key in keys[:-1]:
        cursor = cursor.setdefault(key, {})
    cursor[keys[-1]] = value
    return nested


def config_hash(*sections: Any, length: int = 12) -> str:
    """Stable short hash of JSON-serialisable config sections (for checkpoint caching)."""
    blob = json.dumps(sections, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def require_keys(section: Mapping, keys: Iterable[str], where: str) -> None:
    """Raise ConfigError if any of ``keys`` is missing from ``section``."""
    missing = [k for k in keys if k not in section]
    if missing:
        raise ConfigError(f"{where} is missing required key(s): {', '.join(missing)}")
