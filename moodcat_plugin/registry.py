"""Decorator-filled registries for networks, trainers, postprocessors and benchmarks.

Every method of the plugin registers itself where it is defined, as timm registers models::

    @register_postprocessor("msp")
    class MSPPostprocessor(BasePostprocessor): ...

Third-party packages add methods without editing this one by declaring an entry point in the
group ``moodcat_plugin.plugins`` whose target is a module to import (its decorators run on
import). Lookups of unknown names raise :class:`UnknownNameError` listing the closest names.
"""
from __future__ import annotations

import difflib
import importlib
from importlib import metadata
from typing import Callable, Dict, Iterator, List, Mapping, TypeVar

from moodcat_plugin.errors import UserError

T = TypeVar("T")
ENTRY_POINT_GROUP = "moodcat_plugin.plugins"


class UnknownNameError(UserError, KeyError):
    """A registry lookup used a name that nothing registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


def closest_names(name: str, candidates, n: int = 3) -> List[str]:
    """Up to ``n`` candidates that look like ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(name, sorted(candidates), n=n, cutoff=0.4)


class Registry:
    """A named mapping from string keys to classes or factories."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that files the decorated object under ``name`` (names are unique)."""

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            obj.registered_name = name
            return obj

        return decorator

    def get(self, name: str) -> Callable:
        load_builtin_methods()
        if name not in self._entries:
            hint = closest_names(name, self._entries)
            did_you_mean = f" Did you mean: {', '.join(hint)}?" if hint else ""
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'.{did_you_mean} "
                f"Registered: {', '.join(sorted(self._entries))}."
            )
        return self._entries[name]

    def build(self, section: Mapping, **extra):
        """The registered class ``section['name']`` called with the section's other keys (not
        ``checkpoint``, which says where weights come from) and ``extra``."""
        kwargs = {k: v for k, v in section.items() if k not in ("name", "checkpoint")}
        return self.get(section["name"])(**kwargs, **extra)

    def names(self) -> List[str]:
        load_builtin_methods()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        load_builtin_methods()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


NETWORKS = Registry("network")
TRAINERS = Registry("trainer")
POSTPROCESSORS = Registry("postprocessor")

register_network = NETWORKS.register
register_trainer = TRAINERS.register
register_postprocessor = POSTPROCESSORS.register

# Modules whose import registers the built-in methods (one method per file).
BUILTIN_MODULES = (
    "moodcat_plugin.networks",
    "moodcat_plugin.trainers",
    "moodcat_plugin.postprocessors",
)
_loaded = False


def load_builtin_methods() -> None:
    """Import the built-in method modules and every entry-point plugin, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as exc:  # a broken plugin must not hide the built-ins
            raise UserError(
                f"plugin entry point '{entry_point.name}' ({entry_point.value}) failed to import: "
                f"{exc}. Fix or uninstall that package."
            ) from exc
