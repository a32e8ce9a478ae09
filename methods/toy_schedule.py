"""The toy schedule: the config values a method trains with on toy teachers.

A paper's schedule (100K steps of batch 72 on eight GPUs) makes no sense for the toy world's
1 M-parameter U-Net on a CPU. A method's config keeps the paper's values in its fields; its toy
schedule, the data file ``methods/configs/<method>/toy.toml``, lists the values the harness uses
instead on toy teachers (the toy world's and the random-weight ones), each with one line of reason.
Measurements behind them are in ``docs/methods/<method>.md``.

The file is read into the config's ``toy`` field (:func:`toy_schedule_field`), so ``--config`` can
change it like any field: ``toy_X=v`` sets the toy value of field X (``toy_X=none`` drops it), and
an explicit ``X=v`` wins on every teacher (X leaves the toy schedule). A TOML table in the file
holds a method's own toy settings that are not config fields (MCM's short schedule for large S);
:func:`toy_overrides` leaves tables out.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import sys
import typing
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # Python 3.10: the same parser from PyPI (pyproject dependency)
    import tomli as tomllib

TOY_FIELD = "toy"
TOY_PREFIX = "toy_"
TOY_FILE = "toy.toml"


@functools.lru_cache(maxsize=None)
def _read_toy_file(method_name: str, package: str) -> dict[str, Any]:
    path = resources.files(package) / "configs" / method_name / TOY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no toy schedule for method {method_name!r}: {path} is missing")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def read_toy_schedule(method_name: str, package: str = "methods") -> dict[str, Any]:
    """``<package>/configs/<method_name>/toy.toml`` as a dict (a fresh copy each call)."""
    return copy.deepcopy(_read_toy_file(method_name, package))


def toy_schedule_field(method_name: str, package: str = "methods") -> Any:
    """A config's ``toy`` field, defaulting to ``method_name``'s toy schedule file in ``package``
    (a plugin ships its own ``<package>/configs/<name>/toy.toml`` as package data). Kept out of the
    config's hash (a dict); compared like any field."""
    return dataclasses.field(default_factory=functools.partial(read_toy_schedule, method_name, package), hash=False)


def _is_tuple_type(annotation: Any) -> bool:
    if typing.get_origin(annotation) is tuple:
        return True
    return any(_is_tuple_type(arg) for arg in typing.get_args(annotation) if arg is not type(None))


def _as_field_type(value: Any, annotation: Any) -> Any:
    """A TOML value as the field holds it: lists as tuples, integers as floats in float fields."""
    if isinstance(value, list) and _is_tuple_type(annotation):
        return tuple(value)
    if isinstance(value, int) and not isinstance(value, bool) and float in (annotation, *typing.get_args(annotation)) \
            and int not in (annotation, *typing.get_args(annotation)):
        return float(value)
    return value


def toy_overrides(config: Any) -> dict[str, Any]:
    """``{field: value}`` that ``config``'s toy schedule sets (its tables left out), typed as the
    fields are. A name that is not a field of ``config`` is a ValueError (a typo would otherwise
    be ignored)."""
    schedule = getattr(config, TOY_FIELD, None) or {}
    names = {f.name for f in dataclasses.fields(config)} - {TOY_FIELD}
    unknown = sorted(k for k, v in schedule.items() if not isinstance(v, dict) and k not in names)
    if unknown:
        raise ValueError(f"{type(config).__name__}: its toy schedule sets {unknown}, which are not fields")
    hints = typing.get_type_hints(type(config))
    return {k: _as_field_type(v, hints[k]) for k, v in sorted(schedule.items()) if not isinstance(v, dict)}


def apply_toy_schedule(config: Any) -> Any:
    """``config`` with each field its toy schedule sets replaced (the config's own checks run on
    the result, so a bad toy value is the same ValueError as a bad field value)."""
    return dataclasses.replace(config, **toy_overrides(config))


__all__ = ["TOY_FIELD", "TOY_PREFIX", "TOY_FILE", "read_toy_schedule", "toy_schedule_field", "toy_overrides",
           "apply_toy_schedule"]
