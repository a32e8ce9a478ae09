"""What to run: parsing of list flags and method-config overrides into typed values."""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any

from bench.core.errors import UsageError
from methods import get_method_class
from methods.toy_schedule import TOY_FIELD, TOY_PREFIX, apply_toy_schedule, toy_overrides


def load_method(name: str, overrides: str | None = None):
    """The registered method ``name`` with ``--config`` overrides applied (UsageError on an unknown name)."""
    try:
        cls = get_method_class(name)
    except KeyError as err:
        raise UsageError(str(err.args[0])) from None
    return cls(apply_config_overrides(cls.config_class(), overrides))


def finite_float(text: str) -> float:
    """argparse type of a float flag: a finite number (NaN or inf would sample black images and
    write invalid JSON); argparse turns the error into exit 2 naming the flag."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def guidance_scale(text: str) -> float:
    """argparse type of ``--guidance``: a finite number >= 0 (diffusers convention: 1 is no
    guidance, 0 the unconditional model; a negative scale pushes towards the empty prompt, which
    no method here is defined for)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a guidance scale >= 0 (1 = none), got {text!r}")
    return value


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
        if annotation is float:
            value = float(raw)
            if not math.isfinite(value):
                raise UsageError(f"--config {key}={raw}: expected a finite number")
            return value
        if annotation in (int, str):
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

    The toy schedule (:mod:`methods.toy_schedule`, the config's ``toy`` field) is changed the same
    way: ``toy_X=v`` sets the value field X takes on toy teachers, ``toy_X=none`` drops it, and
    ``toy_T.k=v`` sets key k of the schedule's table T (typed as the file's value; ``toy_T=none``
    drops the table). An explicit ``X=v`` wins on every teacher: X leaves the toy schedule unless
    ``toy_X`` is given too."""
    if not overrides:
        return config
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    toy = dict(getattr(config, TOY_FIELD, None) or {}) if TOY_FIELD in fields else None
    changes, toy_changes = {}, {}
    for item in overrides.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise UsageError(f"--config takes key=value pairs separated by commas; got {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        if toy is not None and key.startswith(TOY_PREFIX):
            toy_changes[key[len(TOY_PREFIX):]] = _toy_value(toy, key, raw, fields, hints)
        elif key in fields and key != TOY_FIELD:
            changes[key] = _convert(raw, hints.get(key, str), key)
        else:
            known = ", ".join(sorted(set(fields) - {TOY_FIELD}))
            toy_hint = "; toy_<field> sets its toy schedule value" if toy is not None else ""
            raise UsageError(f"--config: {type(config).__name__} has no field {key!r}; fields: {known}{toy_hint}")
    if toy is not None:
        for key in changes:                     # an explicit X wins on every teacher
            toy.pop(key, None)
        for key, value in toy_changes.items():
            table, _, sub = key.partition(".")
            if sub:
                toy[table] = {**toy[table], sub: value}
            elif value is None:
                toy.pop(key, None)
            else:
                toy[key] = value
        changes[TOY_FIELD] = toy
    try:
        updated = dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--config {overrides}: {err}") from None
    if toy is not None:
        try:
            apply_toy_schedule(updated)         # a bad toy value fails here, not when training starts
        except (TypeError, ValueError) as err:
            raise UsageError(f"--config {overrides}: on toy teachers, with the toy schedule's values "
                             f"({_describe_toy(updated)}): {err}; set the clashing toy_<field> too") from None
    return updated


def _describe_toy(config: Any) -> str:
    return ", ".join(f"{k}={format_config_value(v)}" for k, v in toy_overrides(config).items()) or "none"


def _toy_value(toy: dict[str, Any], key: str, raw: str, fields: dict[str, Any], hints: dict[str, Any]) -> Any:
    """The value of ``--config toy_...=raw``: typed as the field, or as the table's current value."""
    name = key[len(TOY_PREFIX):]
    table, _, sub = name.partition(".")
    if sub and isinstance(toy.get(table), dict) and sub in toy[table]:
        current = toy[table][sub]
        return _convert(raw, type(current) if current is not None else str, key)
    if not sub and isinstance(toy.get(name), dict):
        if raw.lower() in ("none", "null"):
            return None
        raise UsageError(f"--config {key}: the toy schedule's table {name!r} takes {key}.<key>=value or {key}=none")
    if not sub and name in fields and name != TOY_FIELD:
        value = _convert(raw, hints.get(name, str) | None, key)
        return list(value) if isinstance(value, tuple) else value     # as the TOML file holds it
    tables = [f"{t}.{k}" for t, v in toy.items() if isinstance(v, dict) for k in v]
    raise UsageError(f"--config {key}: {name!r} is not a field" + (f" or a toy schedule entry ({', '.join(tables)})"
                                                                    if tables else ""))


def describe_config_fields(config: Any) -> list[str]:
    """``name = value`` per field of a method config, for ``bench list --verbose``. A field its toy
    schedule sets (:mod:`methods.toy_schedule`) shows that value as ``(toy: value)``; the schedule's
    tables follow as ``toy <table> = {...}``."""
    toy = toy_overrides(config)
    tables = {k: v for k, v in (getattr(config, TOY_FIELD, None) or {}).items() if isinstance(v, dict)}
    return [f"{f.name} = {getattr(config, f.name)!r}" + (f"  (toy: {toy[f.name]!r})" if f.name in toy else "")
            for f in dataclasses.fields(config) if f.name != TOY_FIELD] + \
        [f"toy {name} = {value!r}" for name, value in tables.items()]
