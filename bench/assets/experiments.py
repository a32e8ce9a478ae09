"""Named experiments: a registered method with config overrides, under a label of its own, as a
small TOML file that `bench run --experiment <method>/<name>` runs. They replace hand-made
``bench sample --config ...`` + ``bench eval --method <label>`` pairs: the overrides, the label and
the reason live in one reviewed file, and the rows they produce say which file made them.

Files live in the methods package, ``methods/configs/<method>/ablations/<name>.toml``::

    description = "the default toy schedule from training seed 1"   # one line: what and why
    label = "lcm-train-seed-1"        # optional; default "<method>-<name>"
    [config]                          # --config overrides, with TOML types (lists for tuples)
    seed = 1

``bench list --experiments`` lists them.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bench.core.errors import UsageError
from bench.core.spec import format_config_value, load_method
from methods.base import Method

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # Python 3.10: the same parser from PyPI (pyproject dependency)
    import tomli as tomllib

ABLATIONS_FOLDER = "ablations"


def experiments_root() -> Path:
    """``methods/configs`` inside the installed methods package."""
    return Path(str(resources.files("methods"))) / "configs"


@dataclass(frozen=True)
class Experiment:
    """One experiment file: ``name`` is ``<method>/<file stem>``."""

    name: str
    method: str
    label: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def config_text(self) -> str:
        """The overrides as ``--config`` writes them (what reproduces the experiment by hand)."""
        return ",".join(f"{key}={format_config_value(value)}" for key, value in self.overrides.items())

    def build(self) -> Method:
        """The method with the overrides applied (a bad key or value: one UsageError naming the file)."""
        try:
            return load_method(self.method, self.config_text or None)
        except UsageError as err:
            raise UsageError(f"experiment {self.name} ({self.path}): {err}") from None


def experiment_names(root: Path | None = None) -> list[str]:
    root = experiments_root() if root is None else root
    return sorted(f"{path.parent.parent.name}/{path.stem}" for path in root.glob(f"*/{ABLATIONS_FOLDER}/*.toml"))


def load_experiment(name: str, root: Path | None = None) -> Experiment:
    """The experiment ``<method>/<name>``; a UsageError naming the known ones when there is none."""
    root = experiments_root() if root is None else root
    method, _, stem = name.partition("/")
    path = root / method / ABLATIONS_FOLDER / f"{stem}.toml"
    if not stem or not path.is_file():
        known = ", ".join(experiment_names(root)) or "none"
        raise UsageError(f"--experiment {name!r}: no file {path}; experiments are <method>/<name>: {known}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"experiment {name}: {path} is not valid TOML ({err})") from None
    unknown = sorted(set(data) - {"description", "label", "config"})
    if unknown or not isinstance(data.get("config", {}), dict) or not data.get("description"):
        raise UsageError(f"experiment {name}: {path} takes description = \"...\", an optional label and a [config] "
                         f"table{'; unknown keys: ' + ', '.join(unknown) if unknown else ''}")
    return Experiment(name=name, method=method, label=str(data.get("label") or f"{method}-{stem}"),
                      description=str(data["description"]), overrides=dict(data.get("config", {})), path=path)


__all__ = ["Experiment", "experiment_names", "load_experiment", "experiments_root"]
