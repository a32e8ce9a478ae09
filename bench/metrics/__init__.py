"""Metrics: image protocol and features -> FID / PRDC (coverage), CLIP score, latency.

Names are re-exported lazily (module ``__getattr__``, except ``prdc`` and ``clip_score``, see below):
a submodule loads on first use of one of its names; the package imports before clip_score.py exists.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> module (relative to this package) that defines it
_EXPORTS = {
    # image protocol and features (features.py)
    "ImageProtocol": "features",
    "protocol_for_suite": "features",
    "preprocess": "features",
    "FeatureExtractor": "features",
    "inception_extractor": "features",
    "resolve_inception_path": "features",
    "list_images": "features",
    "extract_features": "features",
    "INCEPTION_URL": "features",
    "INCEPTION_PATH_ENV": "features",
    # stand-in metric model (standins.py)
    "standin_extractor": "standins",
    "StandinFeatureNet": "standins",
    # FID (fid.py)
    "fid_from_features": "fid",
    "fid_from_stats": "fid",
    "feature_statistics": "fid",
    "fid_folders": "fid",
    # precision / recall / density / coverage (prdc.py)
    "prdc": "prdc",
    # reference and sample features with caching (reference.py)
    "FeatureSet": "reference",
    "ReferenceImages": "reference",
    "check_reference_available": "reference",
    "reference_images": "reference",
    "reference_features": "reference",
    "files_features": "reference",
    "folder_features": "reference",
    "samples_features": "reference",
    # owned by the CLIP / latency modules
    "ClipScorer": "clip_score",
    "clip_score": "clip_score",
    "measure_latency": "latency",
    "LatencyResult": "latency",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{module_name}")
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"{__name__}.{module_name} does not define {name!r}") from None
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# ``clip_score`` and ``prdc`` are both submodules and functions. Importing a submodule binds it as
# an attribute of this package, which would shadow the lazy function export above, so bind the
# functions now (clip_score guarded: the package must import even before clip_score.py exists).
from bench.metrics.prdc import prdc  # noqa: E402

try:
    from bench.metrics.clip_score import ClipScorer, clip_score  # noqa: E402
except ModuleNotFoundError as _exc:  # only a missing clip_score.py itself is tolerated
    if _exc.name != f"{__name__}.clip_score":
        raise
