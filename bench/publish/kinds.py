"""Which leaderboard rows are canonical and which are ablations.

A row is *canonical* when its label is a registered method at its default config (``lcm``,
``ddim``, a plugin's name), a published student of the zoo (``lcm-sd15``), or one of the
real-image reference rows (the FID floor, the shuffled-captions CLIP row). Everything else is an
*ablation*: a named experiment (``methods/configs/<method>/ablations/<name>.toml``, labelled
``<method>-<name>`` unless its file says otherwise) or a label given by hand to ``bench eval
--method``. Canonical rows make ``leaderboards/<suite>.md`` and the CI baseline; ablations go to
``leaderboards/<suite>-ablations.md``, grouped by the method they vary.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from bench.assets.experiments import Experiment, experiment_names, experiments_root, load_experiment
from bench.assets.zoo import ZOO
from bench.scoring.toy import FLOOR_METHOD, SHUFFLED_METHOD
from methods.registry import method_names

REAL_IMAGE_ROWS = (FLOOR_METHOD, SHUFFLED_METHOD)


@dataclass(frozen=True)
class RowKind:
    """What a row label is: canonical or not, the method it belongs to, the experiment behind it."""

    label: str
    canonical: bool
    method: str                       # the registered method it varies ("" for real-image rows, "other")
    experiment: Experiment | None = None

    def config_path(self, repo_root: Path | None = None) -> str:
        """The experiment file as a path relative to the repository (``methods/configs/...``), or ""."""
        if self.experiment is None or self.experiment.path is None:
            return ""
        path = self.experiment.path
        root = experiments_root().parent.parent if repo_root is None else repo_root
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            return path.as_posix()


class RowKinds:
    """Classifies row labels against the registry, the zoo and the experiment files (read once)."""

    def __init__(self, experiments_root_dir: Path | None = None) -> None:
        self._root = experiments_root_dir

    @cached_property
    def _methods(self) -> list[str]:
        return sorted(method_names(), key=len, reverse=True)   # longest first: "lcm-lora" before "lcm"

    @cached_property
    def _experiments(self) -> dict[str, Experiment]:
        experiments = (load_experiment(name, self._root) for name in experiment_names(self._root))
        return {experiment.label: experiment for experiment in experiments}

    def of(self, label: str) -> RowKind:
        if label in self._methods or label in ZOO:
            return RowKind(label, canonical=True, method=label)
        if label in REAL_IMAGE_ROWS:
            return RowKind(label, canonical=True, method="")
        experiment = self._experiments.get(label)
        if experiment is not None:
            return RowKind(label, canonical=False, method=experiment.method, experiment=experiment)
        method = next((m for m in self._methods if label.startswith(m + "-")), "other")
        return RowKind(label, canonical=False, method=method)

    def is_canonical(self, label: str) -> bool:
        return self.of(label).canonical


__all__ = ["REAL_IMAGE_ROWS", "RowKind", "RowKinds"]
