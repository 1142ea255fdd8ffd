"""Config schemas: the keys each config section may hold, with their types and ranges.

Every registered class declares the schema of the config it reads, next to its code (as timm
models carry their own default config), so a new method brings its own schema:

* a trainer: ``config_schema``, a :class:`TrainerConfig` subclass for its ``trainer:`` section;
* a network: ``config_schema``, a :class:`NetworkConfig` subclass (``name``, ``checkpoint`` and the
  constructor's keyword arguments);
* a postprocessor: ``args_schema`` for its ``postprocessor_args`` (default :class:`NoArgs`) and
  ``config_sections``: the extra sections its method file must hold (MOODCAT's ``gan``, ``cb``,
  ...), each a schema or a :class:`Registered` (checked by the schema of the class its ``name``
  picks).

:func:`check` validates one section and turns the first problem into a ONE-LINE
:class:`ConfigError` naming the full dotted key, the bad value and what is expected, e.g.
``config key 'trainer.lr' must be a number > 0, got 'abc'``; an unknown key names the closest
valid one. :mod:`moodcat_plugin.run_schema` checks a whole run config with these pieces.

Why pydantic v2: nested, typed validation with ranges, lengths, literals and unions, every error
reported with its location, and nothing outside the schema (``extra="forbid"``) is what it does;
hand-written dataclass checks would re-implement it. We only word the message. Types are strict:
``'3'`` is not an integer and ``1`` is not ``true``; an integer is a number. Schemas only CHECK:
a run uses the config values as loaded (checkpoint hashes are unchanged), and a field's default
documents what the code uses when the key is absent. Build field types with :func:`integer`,
:func:`number`, :func:`choice`, :func:`optional`, :func:`either`, :func:`list_of`, ``FLAG`` and
``TEXT``: they carry the words of what is expected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from moodcat_plugin.config import PLAIN_NAME_WORDS, is_plain_name, unknown_key_message
from moodcat_plugin.errors import ConfigError
from moodcat_plugin.registry import NETWORKS, POSTPROCESSORS, TRAINERS, Registry, UnknownNameError

SECTION_WORDS = "a section (a mapping of keys)"
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: SECTION_WORDS,
               list: "a list"}


# -- field types that carry their description ------------------------------------------------------
@dataclass(frozen=True)
class Expect:
    """What a field expects, in words (``'an integer >= 1'``); error messages read it back."""

    text: str


def _expected(annotation: Any) -> str:
    """Words for an annotation: its :class:`Expect` marker, else its (section) type."""
    if get_origin(annotation) is Annotated:
        marker = next((m for m in get_args(annotation)[1:] if isinstance(m, Expect)), None)
        return marker.text if marker else _expected(get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return SECTION_WORDS
    return _TYPE_WORDS.get(annotation, f"a {getattr(annotation, '__name__', annotation)}")


def _bounds(gt=None, ge=None, lt=None, le=None) -> str:
    """' > 0', ' >= 1', ' in [0, 1)' ..."""
    low = f"({gt}" if gt is not None else f"[{ge}" if ge is not None else ""
    high = f"{lt})" if lt is not None else f"{le}]" if le is not None else ""
    if low and high:
        return f" in {low}, {high}"
    for symbol, value in ((">", gt), (">=", ge), ("<", lt), ("<=", le)):
        if value is not None:
            return f" {symbol} {value}"
    return ""


def integer(*, gt=None, ge=None, lt=None, le=None):
    """An int (not a bool, not 3.0) within the bounds."""
    return Annotated[int, Field(strict=True, gt=gt, ge=ge, lt=lt, le=le),
                     Expect("an integer" + _bounds(gt, ge, lt, le))]


def number(*, gt=None, ge=None, lt=None, le=None):
    """A finite int or float within the bounds."""
    return Annotated[float, Field(strict=True, allow_inf_nan=False, gt=gt, ge=ge, lt=lt, le=le),
                     Expect("a number" + _bounds(gt, ge, lt, le))]


def choice(*values):
    """One of the given values (strings, usually)."""
    words = f"'{values[0]}'" if len(values) == 1 else "one of " + ", ".join(map(str, values))
    return Annotated[Literal[values], Expect(words)]


def optional(annotation):
    """``annotation`` or null (YAML ``null``/``~``)."""
    return Annotated[Optional[annotation], Expect(f"{_expected(annotation)} or null")]


def either(*annotations):
    """Any one of the annotations (a union)."""
    return Annotated[Union[annotations], Expect(" or ".join(_expected(a) for a in annotations))]


def list_of(item, *, length: Optional[int] = None, min_length: Optional[int] = None, expect: str = ""):
    """A list of ``item`` values, of exactly ``length`` items or at least ``min_length``."""
    size = f"a list of {length} items" if length else "a non-empty list" if min_length else "a list"
    words = expect or (size if item is Any else f"{size}, each {_expected(item)}")
    return Annotated[List[item], Field(min_length=length or min_length, max_length=length), Expect(words)]


FLAG = Annotated[bool, Field(strict=True), Expect("true or false")]
TEXT = Annotated[str, Field(strict=True, min_length=1), Expect("a non-empty string")]
SECTION = Annotated[dict, Expect(SECTION_WORDS)]
#: A name that becomes one folder name (a benchmark's ``name``): see ``config.check_plain_name``.
def _checked_plain_name(name: str) -> str:
    if not is_plain_name(name):
        raise ValueError(f"must be {PLAIN_NAME_WORDS}: it names a folder under the output directory")
    return name


PLAIN_NAME = Annotated[str, Field(strict=True), AfterValidator(_checked_plain_name), Expect(PLAIN_NAME_WORDS)]


# -- section schemas ---------------------------------------------------------------------------------
class Schema(BaseModel):
    """A config section: only the declared keys, strict types (see the module doc)."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())


class NoArgs(Schema):
    """A postprocessor without ``postprocessor_args``."""


class TrainerConfig(Schema):
    """What every trainer section holds; the pipeline builds the training loader from batch_size."""

    name: TEXT
    num_epochs: integer(ge=1)
    batch_size: integer(ge=1)


class NetworkConfig(Schema):
    """What every network section holds besides the constructor's keyword arguments."""

    name: TEXT
    checkpoint: optional(TEXT) = None  # trained state dict to load instead of training (classifiers)


class PostprocessorSection(Schema):
    """OpenOOD's ``postprocessor:`` section; ``postprocessor_args`` follow the class's ``args_schema``."""

    name: TEXT
    APS_mode: FLAG = False
    postprocessor_args: optional(SECTION) = None
    postprocessor_sweep: optional(Annotated[Dict[str, list_of(Any, min_length=1)],
                                            Expect("a mapping of argument -> list of candidate values")]) = None


@dataclass(frozen=True)
class Registered:
    """A config section checked by the ``config_schema`` of the registered class its ``name`` picks
    (``default_name`` when the section has no ``name``)."""

    registry: Registry
    default_name: Optional[str] = None


#: Sections every method file may hold besides ``postprocessor`` (a training-time method's own
#: trainer and network); a postprocessor adds its own in ``config_sections``.
METHOD_SECTIONS = {"trainer": Registered(TRAINERS), "network": Registered(NETWORKS)}


# -- checks ----------------------------------------------------------------------------------------
def check(schema: type, data: Any, where: str) -> None:
    """Validate ``data`` (the section at dotted key ``where``) against ``schema``; ConfigError, one
    line, on the first problem (the count of further problems appended)."""
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        others = {_problem_key(schema, e) for e in errors[1:]} - {_problem_key(schema, errors[0])}
        more = f" ({len(others)} more problem(s) after this one)" if others else ""
        raise ConfigError(_error_message(schema, data, errors[0], where) + more) from None


def registered_class(spec: Registered, section: Any, where: str) -> type:
    """The registered class a section names (``name``); ConfigError naming the key otherwise."""
    kind = spec.registry.kind
    if not isinstance(section, Mapping):
        raise ConfigError(f"config key '{where}' must be {SECTION_WORDS}, got {show(section)}")
    name = section.get("name", spec.default_name)
    if name is None:
        raise ConfigError(f"config key '{where}.name' is missing; set it to a registered {kind}: "
                          f"{', '.join(spec.registry.names())}")
    if not isinstance(name, str):
        raise ConfigError(f"config key '{where}.name' must be the name of a registered {kind}, got {show(name)}")
    try:
        return spec.registry.get(name)
    except UnknownNameError as exc:
        raise ConfigError(f"config key '{where}.name': {exc}") from None


def check_registered(spec: Registered, section: Any, where: str) -> type:
    """Check a section naming a registered class against that class's ``config_schema``; returns
    the class."""
    cls = registered_class(spec, section, where)
    name = section.get("name", spec.default_name)
    schema = getattr(cls, "config_schema", None)
    if schema is None:
        raise ConfigError(f"{spec.registry.kind} '{name}' ({cls.__module__}.{cls.__qualname__}) "
                          "declares no config_schema; give it one (see moodcat_plugin/schema.py)")
    check(schema, {"name": name, **section}, where)
    return cls


def check_section(spec: Any, section: Any, where: str) -> None:
    """Check one section against a schema class or a :class:`Registered` spec."""
    if isinstance(spec, Registered):
        check_registered(spec, section, where)
    else:
        check(spec, section, where)


def check_postprocessor(cls: type, section: Any, where: str) -> None:
    """The ``postprocessor:`` section of a method: OpenOOD's keys, ``postprocessor_args`` by the
    class's ``args_schema``, and every ``postprocessor_sweep`` candidate as if it were the argument."""
    check(PostprocessorSection, section, where)
    schema = getattr(cls, "args_schema", NoArgs)
    args = dict(section.get("postprocessor_args") or {})
    check(schema, args, f"{where}.postprocessor_args")
    for key, candidates in (section.get("postprocessor_sweep") or {}).items():
        if key not in args:
            raise ConfigError(unknown_key_message(key, args, f"{where}.postprocessor_sweep")
                              + " A sweep lists candidates for keys of postprocessor_args.")
        for candidate in candidates:
            check(schema, {**args, key: candidate}, f"{where}.postprocessor_sweep")


def check_method_section(section: Any, where: str) -> type:
    """A method's section (``postprocessors.<method>``): the postprocessor section, the optional
    trainer/network, and every section the postprocessor class declares in ``config_sections``
    (all required). Unknown sections fail with the closest name. Returns the postprocessor class."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"config key '{where}' must be {SECTION_WORDS}, got {show(section)}")
    if "postprocessor" not in section:
        raise ConfigError(f"config key '{where}.postprocessor' is missing: a method file needs a postprocessor: "
                          "section (name, postprocessor_args, ...)")
    cls = registered_class(Registered(POSTPROCESSORS), section["postprocessor"], f"{where}.postprocessor")
    check_postprocessor(cls, section["postprocessor"], f"{where}.postprocessor")
    own = dict(getattr(cls, "config_sections", None) or {})
    allowed = {"postprocessor": None, **METHOD_SECTIONS, **own}
    for key in section:
        if key not in allowed:
            raise ConfigError(unknown_key_message(key, allowed, where))
    for key in own:
        if key not in section:
            raise ConfigError(f"config key '{where}.{key}' is missing: postprocessor "
                              f"'{section['postprocessor']['name']}' reads it (see its file in configs/postprocessors/)")
    for key, spec in {**METHOD_SECTIONS, **own}.items():
        if key in section:
            check_section(spec, section[key], f"{where}.{key}")
    return cls


# -- messages ----------------------------------------------------------------------------------------
def show(value: Any) -> str:
    """A config value as the user wrote it: strings quoted, null/true/false as in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value)


def _dotted(where: str, parts: Sequence[str]) -> str:
    return ".".join([where, *parts] if where else parts)


def _unwrap(annotation: Any) -> Any:
    """An annotation without its Annotated metadata and Optional wrapper."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        members = [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) is Union and len(members) == 1:
            annotation = members[0]
            continue
        return annotation


def _as_schema(annotation: Any) -> Optional[type]:
    annotation = _unwrap(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _field_words(field) -> str:
    marker = next((m for m in field.metadata if isinstance(m, Expect)), None)
    return marker.text if marker else _expected(field.annotation)


def _locate(schema: type, loc: Sequence) -> Tuple[List[str], str, Optional[type], List]:
    """Follow an error location through nested sections: (dotted parts, words of what is expected
    there, the section schema reached or None, the steps left over: a list index, a union branch,
    an unknown key)."""
    model, parts, words, steps = schema, [], SECTION_WORDS, list(loc)
    while steps and model is not None and isinstance(steps[0], str) and steps[0] in model.model_fields:
        name = steps.pop(0)
        field = model.model_fields[name]
        parts.append(name)
        words, annotation = _field_words(field), field.annotation
        if get_origin(_unwrap(annotation)) is dict and steps:  # a mapping of named entries: step into one
            annotation = get_args(_unwrap(annotation))[1]
            parts.append(str(steps.pop(0)))
            words = _expected(annotation)
        model = _as_schema(annotation)
    return parts, words, model, steps


def _problem_key(schema: type, error: dict) -> Tuple[str, ...]:
    """The key a problem is about (one per field: a union reports each of its branches)."""
    parts, _, _, rest = _locate(schema, error["loc"])
    return tuple(parts) + (tuple(map(str, rest[:1])) if error["type"] == "extra_forbidden" else ())


def _value_at(data: Any, parts: Sequence[str], fallback: Any) -> Any:
    for part in parts:
        if not isinstance(data, Mapping) or part not in data:
            return fallback
        data = data[part]
    return data


def _error_message(schema: type, data: Any, error: dict, where: str) -> str:
    parts, words, model, rest = _locate(schema, error["loc"])
    key = _dotted(where, parts)
    if error["type"] == "extra_forbidden" and model is not None and rest:
        return unknown_key_message(rest[0], model.model_fields, key)
    if error["type"] == "missing":
        return f"config key '{key}' is missing; set it to {words}"
    value = show(_value_at(data, parts, error.get("input")))
    if rest[:1] == ["[key]"]:  # the name of a mapping's entry is wrong, not its value
        key, value = _dotted(where, parts[:-1]), show(parts[-1])
    if error["type"] in ("value_error", "assertion_error") and "error" in (error.get("ctx") or {}):
        return f"config key '{key}' {error['ctx']['error']}, got {value}"
    return f"config key '{key}' must be {words}, got {value}"
