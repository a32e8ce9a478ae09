"""Where the tool keeps its own files: one cache folder, never inside site-packages."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "BENCH_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/distill-bench"


def cache_dir() -> Path:
    """The cache root: env ``BENCH_CACHE_DIR`` > ``~/.cache/distill-bench`` (not created here)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()
