"""Fingerprints: a stable hash of everything that changes an output (invariant: rows with different
fingerprints never share a cell)."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as md
import json
from pathlib import Path
from typing import Any


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        return repr(value)  # exact round-trip, no locale or precision surprises
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def canonical_json(value: Any) -> str:
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"))


def fingerprint(value: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON form of ``value`` (dicts, dataclasses, lists, scalars)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_lines(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose numerics can change an output."""
    names = ["torch", "diffusers", "transformers", "clean-fid", "open_clip_torch", "prdc", "numpy", "pillow"]
    versions = {}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "absent"
    return versions
