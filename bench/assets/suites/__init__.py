"""Suites: the prompt lists a benchmark samples, with the protocol facts that pin them down.

A suite is an ordered tuple of prompts (prompt *i* is image *i*; its seed is derived from *i*
elsewhere), optionally the dataset image id and MJHQ category of each prompt, and a ``protocol``
dict: the source file(s) and their sha256, the selection rule in words, its seed, the count, and
a sha256 of the selected list. :attr:`Suite.fingerprint` hashes the name, the protocol and the
prompts, so any change of source file, rule or N gives a new fingerprint.

Registered suites (``SUITE_SPECS``; add a :class:`SuiteSpec` to extend):

``smoke``
    8 built-in prompts (``bench/data/smoke_prompts.txt``) for tests: mixed lengths, one longer
    than CLIP's 77 tokens, one with non-ASCII text.

``coco2014-30k``
    The 30,000 COCO-2014 captions of the GigaGAN / DMD / DMD2 FID protocol. Sources, first found
    wins:

    (a) ``<data_root>/coco2014/captions_coco14_test.txt``: one caption per line, exactly 30,000
        lines, taken verbatim in file order (only the line terminator is removed; trailing spaces
        are kept). When its sha256 is that of DMD2's committed list
        (tianweiy/DMD2 ``main/coco_eval/captions_coco14_test.txt``) the protocol says
        ``"list": "DMD2 list"``.
    (b) ``<data_root>/coco2014/annotations/captions_val2014.json`` (official COCO captions json,
        which must describe exactly 40,504 images). Rule: the image ids sorted ascending;
        ``rng = random.Random(2014)``; ``chosen = sorted(rng.sample(ids, 30000))``; then for each
        chosen id in ascending order ``caption = rng.choice(captions)``, where ``captions`` are
        that image's captions ordered by ascending annotation id. Prompts are ordered by image id.

    The FID reference is all 40,504 val2014 images, whichever source gave the prompts.

``coco2017-5k``
    ``<data_root>/coco2017/annotations/captions_val2017.json`` (must describe exactly 5,000
    images): the images sorted by image id, one prompt each, the caption with the smallest
    annotation id. The reference is the same 5,000 val2017 images.

``mjhq-5k``
    ``<data_root>/mjhq/meta_data.json`` (``{image_id: {"category": ..., "prompt": ...}}``, exactly
    30,000 entries): the DeepCompressor / SVDQuant rule: the keys in file order,
    ``random.Random(0).shuffle(keys)``, the first 5,000, then sorted. The reference is the 5,000
    matching images ``mjhq30k_imgs/<category>/<image_id>.jpg``.

``toy``
    The toy world's suite (:mod:`bench.assets.toy.world`, the embedded default): the captions of a seeded
    draw of 1,000 world scenes; the FID/Coverage reference is that draw's images (image *i* fits
    prompt *i*), and a second draw conditioned on the same captions measures the real-vs-real floor.
    Generated on the fly from the seed: nothing to download.

``prompts-file`` (or any unregistered name together with ``prompts_file=``)
    A UTF-8 text file, one prompt per line, taken verbatim (a final newline is allowed; empty or
    whitespace-only lines are rejected with their line numbers).

Metric protocols per suite are kept with the metrics, not in ``Suite.protocol`` (which fingerprints the
prompts): the FID/PRDC image crop and resize in :func:`bench.scoring.metrics.features.protocol_for_suite`,
the CLIP score protocol in :func:`bench.scoring.metrics.clip_score.clip_protocol_for_suite` (``coco2014-30k``,
``coco2017-5k``, ``mjhq-5k``: DMD2's ``compute_clip_score``, prefix "A photo depicts" + centre crop and
Lanczos 256; ``toy``, ``smoke``: no prefix, raw image). Result rows record both.

Text normalisation: prompts read from json files (COCO captions, MJHQ prompts) have their
whitespace collapsed, ``" ".join(text.split())``: COCO captions carry stray newlines and double
spaces, CLIP's tokenizer collapses whitespace anyway, and the result can be written one prompt per
line. Prompts read from text files are kept verbatim.

Paths in the protocol are relative to the data root, so a fingerprint does not depend on where the
data lives; the absolute paths that were read are in :attr:`Suite.source_files`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from bench.assets.suites.loaders import (
    _load_coco2014_30k,
    _load_coco2017_5k,
    _load_mjhq_5k,
    _load_smoke,
    _load_toy,
    _needs_prompts_file,
    load_prompts_file,
)
from bench.assets.suites.model import DATA_ROOT_ENV, Suite, SuiteSpec, default_data_root
from bench.assets.suites.readers import (
    parse_coco_captions,
    read_prompt_lines,
    select_coco2014_captions,
    select_coco2017_captions,
    select_mjhq_keys,
)
from bench.core.errors import UsageError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Registry

SUITE_SPECS: tuple[SuiteSpec, ...] = (
    SuiteSpec("toy", "1,000 toy-world captions (16 px coloured shapes), reference + floor draws; offline default",
              _load_toy, count=1_000, seed=20240, needs_data_root=False),
    SuiteSpec("smoke", "8 built-in prompts for tests (mixed lengths, one over 77 CLIP tokens, one non-ASCII)",
              _load_smoke, count=8, needs_data_root=False),
    SuiteSpec("coco2014-30k", "30,000 COCO-2014 val captions (GigaGAN/DMD2 protocol); FID vs all 40,504 val2014 images",
              _load_coco2014_30k, count=30_000, source_images=40_504, seed=2014),
    SuiteSpec("coco2017-5k", "5,000 COCO-2017 val images, first caption each; FID vs the same images",
              _load_coco2017_5k, count=5_000, source_images=5_000),
    SuiteSpec("mjhq-5k", "5,000 MJHQ-30K prompts (DeepCompressor/SVDQuant subset) with categories",
              _load_mjhq_5k, count=5_000, source_images=30_000, seed=0),
    SuiteSpec("prompts-file", "your own prompts: --prompts-file PATH, one prompt per line",
              _needs_prompts_file, needs_data_root=False),
)
SUITE_NAMES: tuple[str, ...] = tuple(spec.name for spec in SUITE_SPECS)
_PROMPTS_FILE = "prompts-file"


def describe_suites() -> list[tuple[str, str]]:
    """(name, one-line summary) of every registered suite, in registry order."""
    return [(spec.name, spec.summary) for spec in SUITE_SPECS]


def get_suite_spec(name: str) -> SuiteSpec:
    for spec in SUITE_SPECS:
        if spec.name == name:
            return spec
    raise UsageError(f"unknown suite {name!r}; known suites: {', '.join(SUITE_NAMES)}")


def _valid_custom_name(name: str) -> bool:
    return bool(name) and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


def load_suite(
    name: str,
    data_root: str | Path | None = None,
    prompts_file: str | Path | None = None,
) -> Suite:
    """Load a suite by name. With ``prompts_file``, ``name`` may be ``prompts-file`` or any new
    name (letters, digits, ``._-``) that labels the file's prompts; registered data suites cannot
    be overridden by a prompts file."""
    if prompts_file is not None:
        if name != _PROMPTS_FILE and name in SUITE_NAMES:
            raise UsageError(
                f"--prompts-file cannot relabel the built-in suite {name!r}; "
                f"use --suite {_PROMPTS_FILE} or a new name"
            )
        if not _valid_custom_name(name):
            raise UsageError(f"suite name {name!r} must be letters, digits, '.', '_' or '-'")
        return load_prompts_file(prompts_file, name)
    return get_suite_spec(name).load(data_root)


__all__ = ["Suite", "SuiteSpec", "SUITE_NAMES", "DATA_ROOT_ENV", "default_data_root", "describe_suites", "get_suite_spec",
           "load_suite", "load_prompts_file", "read_prompt_lines", "parse_coco_captions", "select_coco2014_captions",
           "select_coco2017_captions", "select_mjhq_keys"]
