"""FID: clean-fid's ``frechet_distance`` on the mean / covariance of two feature sets, computed the way
clean-fid computes them (``cleanfid.fid.compare_folders`` / ``fid_folder`` / ``compute_fid``:
``mu = np.mean(feats, axis=0)``, ``sigma = np.cov(feats, rowvar=False)`` on the float32 feature array
``get_folder_features`` returns). Given the same float32 features the statistics, and so the FID, are
bit-identical to clean-fid's: ``mu`` is float32 (numpy's float32 pairwise mean), ``sigma`` float64
(``np.cov`` promotes to float64 itself)."""
from __future__ import annotations

import contextlib
import io
import logging
import os

import numpy as np

from bench.core.errors import UsageError
from bench.scoring.metrics.features import (
    FeatureExtractor,
    ImageProtocol,
    extract_features,
    list_images,
)

log = logging.getLogger(__name__)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) exactly as clean-fid: ``np.mean(features, axis=0)`` and ``np.cov(features,
    rowvar=False)`` on the array as given, no cast. For the float32 features of
    :func:`~bench.scoring.metrics.features.extract_features` that is a float32 ``mu`` and a float64
    ``sigma``, bit-equal to clean-fid's; a float64 array gives float64 statistics (as in clean-fid)."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise UsageError(f"FID needs at least 2 feature vectors in a [N, dim] array, got shape {features.shape}")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """clean-fid's ``frechet_distance`` (its eps fallback and imaginary-part handling included)."""
    from cleanfid.fid import frechet_distance

    if np.shape(mu1) != np.shape(mu2) or np.shape(sigma1) != np.shape(sigma2):
        raise UsageError(f"FID statistics of different dimensions: {np.shape(mu1)} vs {np.shape(mu2)}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # clean-fid prints its singular-product fallback
        value = frechet_distance(mu1, sigma1, mu2, sigma2)
    if out.getvalue().strip():
        log.warning("clean-fid: %s", out.getvalue().strip())
    return float(value)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature arrays [N, dim] and [M, dim]."""
    return fid_from_stats(*feature_statistics(real), *feature_statistics(fake))


def fid_folders(real_dir: str | os.PathLike, fake_dir: str | os.PathLike, extractor: FeatureExtractor,
                protocol: ImageProtocol, *, batch_size: int = 32, num_workers: int = 0,
                expected_real: int | None = None, expected_fake: int | None = None,
                progress: bool = False) -> float:
    """FID between two flat image folders (no caching; see :mod:`bench.scoring.metrics.reference` for the
    cached reference / samples path). Both folders go through ``protocol`` and ``extractor``."""
    real_files = list_images(real_dir, expected_real)
    fake_files = list_images(fake_dir, expected_fake)
    common = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    real = extract_features(real_files, extractor, protocol, description="FID real", **common)
    fake = extract_features(fake_files, extractor, protocol, description="FID fake", **common)
    return fid_from_features(real, fake)
