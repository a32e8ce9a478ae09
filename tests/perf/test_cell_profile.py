"""`bench profile --cell` on the CPU with the toy teacher at N = 24: the report holds every stage,
the shares sum to 1, images/s is N / seconds of each stage, the projection of the full grid is the
closed form of the measured stage times (recomputed here from the method registry), both files are
written, and bad input is one usage error. The sd15-arch path (clean-fid's Inception graph and
ViT-g-14 with random weights) is covered by its Inception builder only: a GPU run exercises the rest."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from bench.cli import main
from bench.perf.cell_profile import (
    STAGE_LABELS,
    RandomFIDInception,
    UNetTimer,
    cell_seconds,
    synthesized_reference,
)

N = 24
SUITE_SIZES = {"coco2014-30k": 30_000, "coco2017-5k": 5_000, "mjhq-5k": 5_000}


def _run(tmp_path, *extra: str) -> int:
    return main(["profile", "--cell", "--device", "cpu", "--out", str(tmp_path), "--threads", "1", "--quiet", *extra])


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """One cell: lcm, 4 steps, toy teacher, 24 images (a few seconds)."""
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("cell")
    try:
        assert _run(out, "--teacher", "toy", "--num-images", str(N)) == 0
    finally:
        torch.set_num_threads(before)
    (json_path,) = out.glob("cell-*.json")
    (md_path,) = out.glob("cell-*.md")
    assert md_path.stem == json_path.stem
    return json.loads(json_path.read_text()), md_path.read_text()


def test_every_stage_is_timed_with_its_rate_and_share(cell):
    report, markdown = cell
    stages = report["stages"]
    assert [s["name"] for s in stages] == list(STAGE_LABELS) == ["sampling", "fid_features", "clip", "metrics"]
    total = sum(s["seconds"] for s in stages)
    assert report["total_seconds"] == pytest.approx(total, rel=1e-12)
    assert abs(sum(s["share"] for s in stages) - 1.0) <= 1e-9
    for stage in stages:
        assert stage["seconds"] > 0
        assert stage["images_per_s"] == pytest.approx(N / stage["seconds"], rel=1e-12)
        assert stage["share"] == pytest.approx(stage["seconds"] / total, rel=1e-12)
        assert stage["peak_memory_kind"] == "cpu_peak_rss" and stage["peak_memory_mb"] > 0
    assert report["images_per_s"] == pytest.approx(N / total, rel=1e-12)
    sampling = stages[0]["detail"]
    # lcm at 4 steps, fast batching, one batch of 24: 4 U-Net calls, inside the sampling stage
    assert sampling["unet_calls"] == 4 and sampling["nfe_per_image"] == report["cell"]["nfe"] == 4
    assert 0 < sampling["unet_seconds"] <= stages[0]["seconds"]
    assert sampling["other_seconds"] == pytest.approx(stages[0]["seconds"] - sampling["unet_seconds"])
    peak = report["peak_memory"]
    assert peak["kind"] == "cpu_peak_rss" and peak["mb"] >= max(s["peak_memory_mb"] for s in stages)

    assert report["cell"] | {"guidance": None} == {
        "method": "lcm", "steps": 4, "nfe": 4, "num_images": N, "batch_size": 250, "batching": "fast", "seed": 0,
        "student": "released", "guidance": None, "networks": "eager"}
    assert report["teacher"]["name"] == "toy" and report["random_weights"] == []
    assert report["scoring"]["reference"] == {"count": N, "dim": 64,
                                              "note": f"toy: the {N} world images the prompts were drawn with"}
    values = report["values"]
    assert set(values) == {"fid", "clip", "precision", "recall", "density", "coverage"}
    assert values["fid"] > 0 and all(0 <= values[k] <= 1 for k in ("precision", "recall", "coverage"))
    for label in STAGE_LABELS.values():
        assert label.split(" (")[0] in markdown
    assert report["command"] in markdown and "## Projected full grid" in markdown and "Skipped cells" in markdown


def test_projection_is_the_closed_form_of_the_measured_stages(cell):
    """Recomputed here per run cell, with r = N_s / N: r * ((S - D) + D * nfe / nfe0 + F + C + M - Fr - P)
    + Fr + r^2 * P (Fr: the Frechet distance, constant; P: PRDC, quadratic), from the registry's
    distilled methods, their NFE at the toy teacher's guidance and their supported steps."""
    from bench.assets.teachers import load_teacher
    from bench.engine.students import unsupported_steps_on
    from methods import get_method_class, method_names

    report, _ = cell
    teacher = load_teacher("toy")
    grid = report["projection"]
    seconds = {s["name"]: s["seconds"] for s in report["stages"]}
    unet = report["stages"][0]["detail"]["unet_seconds"]
    frechet, prdc = (report["stages"][3]["detail"][k] for k in ("frechet_seconds", "prdc_seconds"))
    assert 0 < frechet and 0 < prdc and frechet + prdc <= seconds["metrics"]
    nfe0 = report["cell"]["nfe"]
    methods = [name for name in method_names() if get_method_class(name).trains]
    assert grid["methods"] == methods and len(methods) == 7
    assert grid["suites"] == SUITE_SIZES and grid["steps"] == [1, 2, 4, 8]
    cells = {(c["method"], c["steps"], c["suite"]): c for c in grid["cells"]}
    assert len(cells) == len(grid["cells"]) == 7 * 4 * 3

    expected_total, run = 0.0, 0
    for name in methods:
        method = get_method_class(name)()
        guidance = method.default_guidance_scale if method.default_guidance_scale is not None else \
            teacher.default_guidance_scale
        for k in (1, 2, 4, 8):
            nfe = method.nfe(k, guidance)
            skipped = unsupported_steps_on(method, teacher, k) is not None
            for suite, size in SUITE_SIZES.items():
                got = cells[(name, k, suite)]
                assert got["nfe"] == nfe and got["num_images"] == size
                if skipped:
                    assert got["seconds"] is None and got["skipped"]
                    continue
                r = size / N
                expected = r * (seconds["sampling"] - unet + unet * nfe / nfe0 + seconds["fid_features"]
                                + seconds["clip"] + seconds["metrics"] - frechet - prdc) + frechet + r * r * prdc
                assert got["seconds"] == pytest.approx(expected, rel=1e-12)
                expected_total += expected
                run += 1
    assert grid["total_seconds"] == pytest.approx(expected_total, rel=1e-12)
    assert (grid["cells_run"], grid["cells_skipped"]) == (run, 84 - run)
    assert cells[("dmd", 2, "mjhq-5k")]["seconds"] is None          # DMD serves 1 step only
    # the measured cell itself, projected to its own N, is the measured total
    measured = grid["measured"]["seconds"]
    assert measured == seconds | {"unet": unet, "frechet": frechet, "prdc": prdc}
    assert cell_seconds(measured, N, nfe0, nfe0, N) == pytest.approx(report["total_seconds"], rel=1e-12)


def test_random_weight_teacher_gets_an_untrained_student_and_a_synthesized_reference(tmp_path):
    """``tiny``: stand-in metric models, an untrained lcm student, exact batching (one U-Net call
    per image and step), a reference drawn like the samples' features; the report says all of it."""
    before = torch.get_num_threads()
    try:
        assert _run(tmp_path, "--teacher", "tiny", "--num-images", "8", "--steps", "1", "--batch-size", "4") == 0
    finally:
        torch.set_num_threads(before)
    (json_path,) = tmp_path.glob("cell-*.json")
    report = json.loads(json_path.read_text())
    assert report["cell"]["batching"] == "exact" and report["cell"]["student"].startswith("untrained")
    assert report["stages"][0]["detail"]["unet_calls"] == 8               # 8 images x 1 step, one image per call
    assert report["random_weights"] == ["teacher tiny", "student", "FID features", "CLIP"]
    reference = report["scoring"]["reference"]
    assert (reference["count"], reference["dim"]) == (8, 64) and reference["note"].startswith("synthesized")
    assert report["scoring"]["clip"]["model"] == "stand-in CLIP"
    assert "meaningless: random weights in teacher tiny" in json_path.with_suffix(".md").read_text()


def test_synthesized_reference_is_drawn_like_the_samples():
    rng = np.random.default_rng(1)
    features = (rng.standard_normal((4000, 3)) * [1.0, 2.0, 0.5] + [3.0, -1.0, 0.0]).astype(np.float32)
    ref = synthesized_reference(features)
    assert ref.features.shape == features.shape and ref.features.dtype == np.float32
    np.testing.assert_allclose(ref.features.mean(axis=0), features.mean(axis=0), atol=0.1)
    np.testing.assert_allclose(ref.features.std(axis=0), features.std(axis=0), rtol=0.05)
    np.testing.assert_array_equal(ref.mu, ref.features.mean(axis=0))       # clean-fid's statistics
    np.testing.assert_array_equal(ref.sigma, np.cov(ref.features, rowvar=False))
    np.testing.assert_array_equal(synthesized_reference(features).features, ref.features)   # seeded


def test_cell_seconds_by_hand():
    measured = {"sampling": 10.0, "unet": 6.0, "fid_features": 2.0, "clip": 3.0, "metrics": 1.0, "frechet": 0.5,
                "prdc": 0.25}
    # x10 images: other sampling 4 s, U-Net 6 s at NFE 4 -> 12 s at NFE 8, FID statistics 0.25 s;
    # the Frechet distance stays 0.5 s, PRDC grows 100x
    assert cell_seconds(measured, 100, 4, 8, 1000) == pytest.approx(10 * (4 + 12 + 2 + 3 + 0.25) + 0.5 + 100 * 0.25)


def test_unet_timer_counts_and_times_every_call():
    layer = nn.Linear(4, 4)
    with UNetTimer(layer, torch.device("cpu")) as timer:
        for _ in range(3):
            layer(torch.ones(2, 4))
    layer(torch.ones(2, 4))                                           # after the block: hooks removed
    assert timer.calls == 3 and timer.seconds() > 0


@pytest.mark.filterwarnings("ignore::UserWarning")      # torchvision's deprecation notes on clean-fid's call
def test_random_fid_inception_is_clean_fids_fid_inception_graph(monkeypatch):
    """Same modules, parameter shapes and outputs as clean-fid's own PyTorch FID Inception
    (``cleanfid.inception_pytorch.InceptionV3``, its weight download stubbed out) given the same
    weights, with clean-fid's extractor contract: [B, 3, 299, 299] in 0..255 -> [B, 2048]."""
    import torchvision
    from cleanfid import inception_pytorch

    monkeypatch.setattr(inception_pytorch, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(torchvision.models.inception.Inception3, "load_state_dict", lambda *a, **k: None)
    theirs = inception_pytorch.InceptionV3(output_blocks=(3,), resize_input=False).eval()
    ours = RandomFIDInception(seed=0)
    their_state, our_state = theirs.state_dict(), ours.state_dict()
    assert [tuple(v.shape) for v in our_state.values()] == [tuple(v.shape) for v in their_state.values()]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())

    ours.load_state_dict(dict(zip(our_state, their_state.values())))
    x = torch.rand(2, 3, 299, 299)
    with torch.no_grad():
        features = ours(x * 255)
        expected = theirs(x)[0].flatten(1)                 # their input is 0..1, scaled to -1..1 inside
    assert features.shape == (2, 2048)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    x = torch.rand(1, 3, 299, 299) * 255
    random_features = RandomFIDInception(seed=0)(x)
    assert torch.isfinite(random_features).all() and torch.equal(random_features, RandomFIDInception(seed=0)(x))


def test_a_networks_variant_samples_fast_and_scales_the_whole_sampling_stage(tmp_path):
    """``--networks half-vae`` on ``tiny``: fast batching, the variant in the report and the command,
    no U-Net hooks (a compiled U-Net would trace them), so the projection takes the whole sampling
    stage as the part that scales with the NFE."""
    before = torch.get_num_threads()
    try:
        assert _run(tmp_path, "--teacher", "tiny", "--num-images", "8", "--steps", "1", "--batch-size", "4",
                    "--networks", "half-vae") == 0
    finally:
        torch.set_num_threads(before)
    (json_path,) = tmp_path.glob("cell-*.json")
    report = json.loads(json_path.read_text())
    assert report["cell"]["batching"] == "fast" and report["cell"]["networks"] == "half-vae"
    assert report["command"].endswith("--networks half-vae")
    sampling = report["stages"][0]
    assert sampling["detail"]["unet_timed"] is False and sampling["detail"]["unet_calls"] is None
    assert sampling["detail"]["unet_seconds"] == sampling["seconds"]
    assert any(note.startswith("--networks half-vae") for note in report["notes"])
    assert "U-Net (" not in json_path.with_suffix(".md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--method", "no-such-method"], "unknown method 'no-such-method'"),
    (["--teacher", "no-such-teacher"], "unknown teacher 'no-such-teacher'"),
    (["--num-images", "0"], "--num-images must be >= 1"),
    (["--num-images", "-3"], "--num-images must be >= 1"),
    (["--num-images", "5"], "--num-images must be > 5"),
    (["--steps", "1,2"], "--cell times one step count"),
    (["--methods", "lcm"], "--cell times one method: drop --methods"),
    (["--method", "dmd", "--steps", "4"], "dmd"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--networks", "compile", "--batching", "exact"], "--networks compile needs --batching fast"),
])
def test_bad_input_is_one_usage_error(tmp_path, capsys, argv, message):
    assert _run(tmp_path, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_cell_flags_without_cell_are_a_usage_error(tmp_path, capsys):
    assert main(["profile", "--methods", "ddim", "--num-images", "10", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--num-images belongs to --cell" in capsys.readouterr().err
    assert main(["profile", "--methods", "ddim", "--networks", "compile", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--networks belongs to --cell" in capsys.readouterr().err
