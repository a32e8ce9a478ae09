"""The toy world inside the benchmark: the ``toy`` suite, the committed toy teacher and metric models
behind the real code paths, the real-image rows, and the embedded default of ``bench run``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench.assets.suites import load_suite
from bench.assets.toy.world import (
    ToySuiteConfig,
    draw_pairs,
    parse_caption,
    toy_suite_prompts,
)
from bench.cli import main
from bench.core.defaults import DEFAULT_SUITE, DEFAULT_TEACHER
from bench.scoring.toy import (
    FLOOR_METHOD,
    SHUFFLED_METHOD,
    toy_image_folder,
    toy_metric_models,
)

pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_toy_suite_is_the_fixed_prompt_draw_and_the_default():
    assert (DEFAULT_TEACHER, DEFAULT_SUITE) == ("toy", "toy")
    suite = load_suite("toy")
    assert len(suite) == ToySuiteConfig().n == 1000
    assert list(suite.prompts) == toy_suite_prompts()
    assert all(parse_caption(p) is not None for p in suite.prompts[:50])
    assert suite.protocol["seed"] == ToySuiteConfig().prompt_seed
    assert suite.subset(10).fingerprint != suite.fingerprint


def test_the_toy_suite_fingerprint_is_the_one_the_committed_leaderboard_was_scored_under():
    """A refactor that changes the suite's protocol text (a module path in it, say) changes its
    fingerprint, and with it every toy cell's: the committed rows would stop matching new runs."""
    from pathlib import Path

    leaderboard = json.loads((Path(__file__).parents[2] / "leaderboards" / "toy.json").read_text())
    assert load_suite("toy").fingerprint == leaderboard["protocol"]["suite_fingerprint"] == "910d2675ec9cc231"


def test_reference_folder_holds_the_draw_the_prompts_came_from_and_the_floor_differs():
    reference = toy_image_folder("reference", 12)
    floor = toy_image_folder("floor", 12)
    images, captions = draw_pairs(ToySuiteConfig().prompt_seed, 12)
    assert captions == toy_suite_prompts(n=12)
    for i in range(12):
        assert np.array_equal(np.asarray(Image.open(reference / f"{i:05d}.png")), images[i])
    differing = sum(not np.array_equal(np.asarray(Image.open(reference / f"{i:05d}.png")),
                                       np.asarray(Image.open(floor / f"{i:05d}.png"))) for i in range(12))
    assert differing >= 10


def test_toy_metrics_separate_real_from_wrong():
    """Through the real metric code (clean-fid features, chunked PRDC, the CLIP scorer): a second real
    draw sits near the reference, images of other prompts do not; own captions beat shuffled ones."""
    from bench.scoring.metrics.features import ImageProtocol
    from bench.scoring.metrics.fid import fid_from_stats
    from bench.scoring.metrics.prdc import prdc
    from bench.scoring.metrics.reference import folder_features

    n = 300
    extractor, clip = toy_metric_models(("fid", "clip", "coverage"), torch.device("cpu"))
    protocol = ImageProtocol(None, False, "none")
    reference = folder_features(toy_image_folder("reference", n), extractor, protocol, progress=False)
    floor = folder_features(toy_image_folder("floor", n), extractor, protocol, progress=False)
    # world images at half brightness: a wrong distribution, a little off in every image
    world_images, _ = draw_pairs(77, n)
    floor_fid = fid_from_stats(reference.mu, reference.sigma, floor.mu, floor.sigma)
    shifted = extractor(torch.from_numpy(world_images).permute(0, 3, 1, 2).float() * 0.5).numpy()
    shifted_fid = fid_from_stats(reference.mu, reference.sigma, shifted.mean(0), np.cov(shifted, rowvar=False))
    assert floor_fid < 0.2 * shifted_fid
    assert prdc(reference.features, floor.features)["coverage"] > 0.8
    prompts = toy_suite_prompts(n=n)
    own = clip.score(toy_image_folder("floor", n), prompts, progress=False).mean_cosine
    shuffled = clip.score(toy_image_folder("floor", n), prompts[1:] + prompts[:1], progress=False).mean_cosine
    assert own > shuffled + 0.1


def test_toy_teacher_goes_through_the_teacher_interface():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from bench.assets.teachers import load_teacher

    teacher = load_teacher("toy")
    assert isinstance(teacher.unet, UNet2DConditionModel) and isinstance(teacher.text_encoder, CLIPTextModel)
    assert teacher.scheduler_config["prediction_type"] == "epsilon"
    assert teacher.scheduler_config["beta_schedule"] == "scaled_linear"
    assert teacher.latent_shape == (3, 16, 16)
    assert teacher.identity["weights"].startswith("toy-checkpoint:")
    emb = teacher.encode_prompts(["a red circle", ""])
    assert emb.shape == (2, 77, teacher.text_encoder.config.hidden_size)


def test_default_run_scores_teacher_cells_and_the_real_image_rows(tmp_path, one_thread):
    out = tmp_path / "runs"
    code = main(["run", "--methods", "ddim", "--steps", "1,8", "--num-images", "24", "--metrics",
                 "fid,clip,coverage", "--out", str(out), "--quiet"])
    assert code == 0
    board = json.loads((out / "leaderboards" / "toy.json").read_text())
    rows = {(r["method"], r["steps"]): r["metrics"] for r in board["rows"]}
    assert set(rows) == {(FLOOR_METHOD, 0), (SHUFFLED_METHOD, 0), ("ddim", 1), ("ddim", 8)}
    assert rows[(FLOOR_METHOD, 0)]["fid"] < rows[("ddim", 1)]["fid"]
    assert rows[("ddim", 8)]["fid"] < rows[("ddim", 1)]["fid"]
    assert rows[(FLOOR_METHOD, 0)]["clip"] > rows[(SHUFFLED_METHOD, 0)]["clip"]
    assert set(rows[(SHUFFLED_METHOD, 0)]) == {"clip"}


def test_toy_verify_command_checks_the_committed_checkpoints(tmp_path, capsys):
    import shutil

    from bench.assets.toy.checkpoints import default_toy_dir

    assert main(["toy", "verify"]) == 0
    broken = tmp_path / "toy"
    shutil.copytree(default_toy_dir(), broken)
    (broken / "clip.safetensors").write_bytes(b"not a checkpoint")
    assert main(["toy", "verify", "--dir", str(broken)]) == 1
    assert "python -m bench toy train --what clip" in capsys.readouterr().err
