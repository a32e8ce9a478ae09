"""What to run: parsing of list flags and method-config overrides into typed values."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from bench.core.errors import UsageError
from methods import get_method_class

TOY_PREFIX = "toy_"


def toy_overrides(config: Any) -> dict[str, Any]:
    """``{X: value}`` for every field ``toy_X`` of ``config`` that is not None.

    The toy schedule is an explicit override: a method config keeps the paper's values in its
    fields and lists, in ``toy_*`` fields, the values the harness uses instead when the teacher is
    a toy (toy-world or random-weight) teacher, where a 100K-step paper schedule makes no sense."""
    names = {f.name for f in dataclasses.fields(config)}
    return {name[len(TOY_PREFIX):]: getattr(config, name) for name in sorted(names)
            if name.startswith(TOY_PREFIX) and name[len(TOY_PREFIX):] in names and getattr(config, name) is not None}


def apply_toy_schedule(config: Any) -> Any:
    """``config`` with each ``X`` replaced by its ``toy_X`` (see :func:`toy_overrides`)."""
    return dataclasses.replace(config, **toy_overrides(config))


def load_method(name: str, overrides: str | None = None):
    """The registered method ``name`` with ``--config`` overrides applied (UsageError on an unknown name)."""
    try:
        cls = get_method_class(name)
    except KeyError as err:
        raise UsageError(str(err.args[0])) from None
    return cls(apply_config_overrides(cls.config_class(), overrides))


def parse_int_list(text: str, flag: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4]; one clear UsageError otherwise."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers such as 1,2,4; got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{flag} takes positive integers such as 1,2,4; got {text!r}")
    if len(set(values)) != len(values):
        raise UsageError(f"{flag} lists a value twice ({text!r}): each cell is measured once; drop the repeat")
    return values


def parse_name_list(text: str, flag: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UsageError(f"{flag} takes a comma-separated list of names; got {text!r}")
    if len(set(names)) != len(names):
        raise UsageError(f"{flag} lists a name twice ({text!r}): each cell is measured once; drop the repeat")
    return names


def _convert(raw: str, annotation: Any, key: str) -> Any:
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation.split("|")[0].strip(), str)
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        annotation = options[0]
    try:
        if annotation is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if annotation in (int, float, str):
            return annotation(raw)
        if typing.get_origin(annotation) is tuple:
            inner = typing.get_args(annotation)[0]
            return tuple(inner(part) for part in raw.split(":") if part)
    except ValueError:
        raise UsageError(f"--config {key}={raw}: expected a value of type {getattr(annotation, '__name__', annotation)}") from None
    return raw


def format_config_value(value: Any) -> str:
    """A config value as ``--config`` writes it (the inverse of the parsing in
    :func:`apply_config_overrides`): None as ``none``, booleans as ``true``/``false``, tuples as
    ``a:b:c``, floats exactly (``repr``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ":".join(format_config_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def apply_config_overrides(config: Any, overrides: str | None) -> Any:
    """``"eta=0.5,noise_scale=sde"`` applied to a config dataclass instance (tuples: ``a:b:c``).
    Setting a field that has a ``toy_`` twin also applies on toy teachers (the twin is cleared)."""
    if not overrides:
        return config
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    changes = {}
    for item in overrides.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise UsageError(f"--config takes key=value pairs separated by commas; got {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise UsageError(f"--config: {type(config).__name__} has no field {key!r}; fields: {known}")
        changes[key] = _convert(raw, hints.get(key, str), key)
    # An explicit X wins on every teacher: its toy_X (the toy schedule's replacement for X,
    # bench.core.spec.toy_overrides) is cleared unless it was set explicitly too.
    for key in list(changes):
        toy_key = TOY_PREFIX + key
        if toy_key in fields and toy_key not in changes:
            changes[toy_key] = None
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--config {overrides}: {err}") from None


def describe_config_fields(config: Any) -> list[str]:
    """``name = value`` per field of a method config, for ``bench list --verbose``. A field with a
    ``toy_`` twin (its value on toy teachers, :func:`bench.core.spec.toy_overrides`) shows it as
    ``(toy: value)``; the twins themselves are not listed again."""
    names = {f.name for f in dataclasses.fields(config)}
    toy = toy_overrides(config)
    return [f"{f.name} = {getattr(config, f.name)!r}" + (f"  (toy: {toy[f.name]!r})" if f.name in toy else "")
            for f in dataclasses.fields(config)
            if not (f.name.startswith(TOY_PREFIX) and f.name[len(TOY_PREFIX):] in names)]
