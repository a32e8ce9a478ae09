"""`bench profile` on the CPU with the tiny teacher: the command runs and reports every field, the
ratio ours/diffusers is the ratio of the reported medians, fp16/bf16 cells are skipped with a note,
the stock diffusers pipeline makes the same images as the harness, bad input exits with code 2.
The GPU paths (CUDA events, fp16/bf16, max_memory_allocated, the largest-batch search) run only
where CUDA is; the last test covers them there."""
from __future__ import annotations

import dataclasses
import json
import statistics
import types

import pytest
import torch

from bench.cli import main
from bench.perf.profile_report import device_slug
from bench.perf.profile_spec import HALF_ON_CPU_NOTE, SpeedRow
from bench.perf.sampling_speed import (
    _measure_into,
    diffusers_closures,
    diffusers_pipeline,
    diffusers_plan,
    profile_student,
    sampling_teacher,
)

SPEED_FIELDS = ("median_ms", "p90_ms", "mean_ms", "denoiser_median_ms", "denoiser_share", "peak_memory_mb",
                "peak_memory_kind", "nfe", "guidance")
TRAIN_FIELDS = ("step_median_ms", "step_p90_ms", "step_mean_ms", "peak_memory_mb", "peak_memory_kind",
                "mixed_precision")


def _run(tmp_path, *extra: str) -> int:
    return main(["profile", "--device", "cpu", "--teacher", "tiny", "--out", str(tmp_path), "--threads", "1",
                 "--quiet", *extra])


def _report(tmp_path) -> tuple[dict, str]:
    (json_path,) = tmp_path.glob("*.json")
    return json.loads(json_path.read_text()), json_path.with_suffix(".md").read_text()


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """One small run: ddim and lcm at 1 step, fp32 measured, fp16/bf16 skipped, training (~10 s)."""
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("perf")
    try:
        code = _run(out, "--methods", "ddim,lcm", "--steps", "1", "--dtypes", "fp32,fp16,bf16", "--batches", "2",
                    "--runs", "20", "--warmup", "1", "--train-batch", "2", "--train-steps", "2", "--train-warmup", "1")
    finally:
        torch.set_num_threads(before)
    assert code == 0
    return _report(out)


def test_profile_reports_every_field(profiled):
    report, markdown = profiled
    assert report["teacher"]["name"] == "tiny" and report["device"]["type"] == "cpu"
    assert report["device"]["name"] and report["versions"]["torch"] == torch.__version__
    assert report["command"].startswith("python -m bench profile --methods ddim,lcm --steps 1 --teacher tiny")
    measured = [r for r in report["latency"] if r["dtype"] == "fp32"]
    assert {(r["method"], r["steps"], r["pipeline"]) for r in measured} == {
        (m, 1, p) for m in ("ddim", "lcm") for p in ("ours", "diffusers")}
    for row in measured:
        assert row["status"] == "measured", row
        assert all(row[name] is not None for name in SPEED_FIELDS), row
        assert 0 < row["median_ms"] <= row["p90_ms"]
        assert row["peak_memory_kind"] == "cpu_peak_rss" and row["peak_memory_mb"] > 0
        assert len(row["latency"]["timings_ms"]) == 20 and len(row["latency"]["denoiser_timings_ms"]) == 20
        assert row["denoiser_share"] == pytest.approx(row["denoiser_median_ms"] / row["median_ms"])
        assert set(row["throughput"]) == set(row["batch_median_ms"]) == {"2"}   # images/s = batch / batch time
        assert row["throughput"]["2"] == pytest.approx(2 / (row["batch_median_ms"]["2"] / 1000))
    nfe = {(r["method"], r["steps"]): r["nfe"] for r in measured}
    assert nfe == {("ddim", 1): 2, ("lcm", 1): 1}        # a CFG pair per step vs the distilled w embedding
    assert {r["scheduler"] for r in measured if r["pipeline"] == "diffusers"} == {"DDIMScheduler", "LCMScheduler"}

    train = {(r["method"], r["dtype"], r["gradient_checkpointing"]): r for r in report["training"]}
    for ckpt in (False, True):
        row = train[("lcm", "fp32", ckpt)]
        assert row["status"] == "measured" and row["batch"] == 2
        assert all(row[name] is not None for name in TRAIN_FIELDS), row
        assert len(row["timings_ms"]) == 2
        assert row["step_median_ms"] == pytest.approx(statistics.median(row["timings_ms"]))
        assert row["largest_batch"] is None and "GPU only" in row["largest_batch_note"]
        assert train[("ddim", "fp32", ckpt)]["status"] == "skipped"
        assert "teacher solver" in train[("ddim", "fp32", ckpt)]["note"]

    # the papers' latencies, labelled with their GPU
    reported = {(e["short"], e["table"], e["method"], e["steps"]): e for e in report["reported"]}
    assert reported[("SCott", "2", "SCott", 1)]["latency_s"] == 0.09
    assert reported[("SCott", "2", "SCott", 1)]["gpu"] == "A100"
    assert reported[("DMD", "3", "DMD", 1)]["batch"] == 1 and reported[("DMD", "3", "LCM-LoRA", 4)]["latency_s"] == 0.19
    assert {e["short"] for e in report["reported"]} == {"SCott", "DMD"}

    assert "not the SD-1.5 architecture" in markdown and "this run, same method" not in markdown  # tiny != SD-1.5
    assert report["command"] in markdown and report["device"]["name"] in markdown
    assert f"torch {torch.__version__}" in markdown and "another GPU" in markdown and "A100" in markdown
    for column in ("median ms", "p90 ms", "denoiser share", "peak MiB", "img/s @2", "ours/diffusers",
                   "step median ms", "grad. checkpointing", "largest batch that fits"):
        assert column in markdown


def test_throughput_peak_memory_excludes_the_warm_up():
    """The batch peak is reset after the warm-up, as measure_latency does for batch 1: a 400 MiB
    buffer that only the first (warm-up) call allocates must not count."""
    from bench.scoring.metrics import latency

    if latency._reset_cpu_peak() is None:
        pytest.skip("this kernel does not let a process reset its VmHWM (/proc/self/clear_refs)")
    calls = []

    def batch_fn():
        calls.append(1)
        if len(calls) == 1:
            torch.ones(100 * 2**20, dtype=torch.float32).sum()   # 400 MiB, freed on return

    spec = types.SimpleNamespace(warmup=1, runs=20, device=torch.device("cpu"), throughput_runs=2)
    rss_mb = latency._proc_status_kib("VmRSS") / 1024.0
    row = _measure_into(SpeedRow("probe", 1, "fp32", "ours"), spec, lambda: None, lambda: None, {4: batch_fn})
    assert len(calls) == 1 + 2                                   # THROUGHPUT_WARMUP=1 warm-up, 2 timed
    assert row.batch_peak_memory_mb["4"] < rss_mb + 200, (row.batch_peak_memory_mb, rss_mb)


def test_ratio_is_ours_over_diffusers_medians(profiled):
    report, markdown = profiled
    rows = {(r["method"], r["steps"], r["pipeline"]): r for r in report["latency"] if r["dtype"] == "fp32"}
    for method in ("ddim", "lcm"):
        ours, theirs = rows[(method, 1, "ours")], rows[(method, 1, "diffusers")]
        assert ours["ratio_vs_diffusers"] == pytest.approx(ours["median_ms"] / theirs["median_ms"], rel=1e-12)
        # and the medians are those of the raw timings
        assert ours["median_ms"] == pytest.approx(statistics.median(ours["latency"]["timings_ms"]), rel=1e-12)
        assert theirs["median_ms"] == pytest.approx(statistics.median(theirs["latency"]["timings_ms"]), rel=1e-12)
        assert f"{ours['ratio_vs_diffusers']:.3f}" in markdown
        assert theirs["ratio_vs_diffusers"] is None


def test_half_precision_is_skipped_on_cpu_with_a_note(profiled):
    report, markdown = profiled
    for dtype in ("fp16", "bf16"):
        rows = [r for r in report["latency"] if r["dtype"] == dtype]
        assert len(rows) == 2 * 2               # methods x pipelines: every cell accounted for
        for row in rows:
            assert row["status"] == "skipped" and row["note"] == HALF_ON_CPU_NOTE.format(dtype=dtype)
            assert row["median_ms"] is None and row["throughput"] == {} and row["peak_memory_mb"] is None
        train = [r for r in report["training"] if r["dtype"] == dtype]
        assert len(train) == 4 and all(r["status"] == "skipped" and r["step_median_ms"] is None for r in train)
        assert markdown.count(HALF_ON_CPU_NOTE.format(dtype=dtype)) == 2   # once per table, not once per cell


@pytest.mark.parametrize("method_name", ["ddim", "dpmpp", "lcm", "lcm-lora", "scott", "splam"])
def test_diffusers_pipeline_makes_the_same_images_as_the_harness(tiny_teacher, one_thread, method_name):
    """The pipeline being timed generates what our harness generates: same decoded images at batch 1
    and at batch 3, and the same denoiser-only latents (DDIM 2 steps is the reference case)."""
    from bench.core.spec import load_method
    from bench.scoring.timing import latency_closures, throughput_closure

    method, steps, guidance, seed = load_method(method_name), 2, 3.0, 7
    student = profile_student(method, tiny_teacher)
    with sampling_teacher(tiny_teacher, student.denoiser.unet) as teacher:
        ctx = types.SimpleNamespace(teacher=teacher)
        ours_e2e, ours_denoiser = latency_closures(ctx, method, student, "a red circle", steps, guidance, seed, "fast")
        ours_batch = throughput_closure(ctx, method, student, "a red circle", steps, guidance, seed, 3)
        plan, reason = diffusers_plan(method, teacher, steps)
        assert plan is not None, reason
        pipe = diffusers_pipeline(teacher, student.denoiser.unet, plan.scheduler)
        e2e, denoiser, batch = diffusers_closures(pipe, plan, teacher, "a red circle", steps, guidance, seed, (3,))
        ours_image, their_image = ours_e2e(), e2e()
        assert ours_image.shape == their_image.shape == (1, 3, 16, 16)
        torch.testing.assert_close(their_image, ours_image, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(denoiser(), ours_denoiser(), rtol=1e-4, atol=1e-5)
        ours_images, their_images = ours_batch(), batch[3]()
        torch.testing.assert_close(their_images, ours_images, rtol=1e-4, atol=1e-4)
        # not vacuous: the three images differ (per-image seeds), and 2 steps differ from 1
        assert (ours_images[0] - ours_images[1]).abs().max() > 1e-3
        one_step = latency_closures(ctx, method, student, "a red circle", 1, guidance, seed, "fast")[0]()
        assert (one_step - ours_image).abs().max() > 1e-3


def test_unsupported_step_counts_are_skipped_with_the_reason(tiny_teacher):
    """LCM samples at most original_inference_steps=50 steps: both rows of 51 steps say why,
    and nothing is built or timed for them."""
    from bench.cli import build_parser
    from bench.cli.profile import parse_spec
    from bench.core.spec import load_method
    from bench.perf.sampling_speed import profile_method_latency

    spec = parse_spec(build_parser().parse_args(["profile", "--methods", "lcm", "--steps", "51", "--device", "cpu"]))
    rows = profile_method_latency(spec, tiny_teacher, load_method("lcm"), "fp32", progress=False)
    assert [(r.pipeline, r.status) for r in rows] == [("ours", "skipped"), ("diffusers", "skipped")]
    assert all("at most original_inference_steps=50" in r.note and r.median_ms is None for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "no-such-method"], "unknown method 'no-such-method'"),
    (["--methods", "ddim", "--steps", "0"], "--steps takes positive integers"),
    (["--methods", "ddim", "--runs", "5"], "--runs must be >= 20"),
    (["--methods", "ddim", "--dtypes", "fp8"], "--dtypes takes a comma-separated subset"),
    (["--methods", "ddim", "--batches", "0"], "--batches takes positive integers"),
    (["--methods", "ddim", "--throughput-runs", "0"], "--throughput-runs must be >= 1"),
    (["--methods", "ddim", "--no-train", "--no-sampling"], "leaves nothing to measure"),
    (["--methods", "ddim", "--speedup-at", "ddim:1"], "add --speedup"),
    (["--methods", "ddim", "--speedup", "--speedup-at", "lcm:1"], "--speedup-at takes METHOD:STEPS"),
    (["--methods", "ddim", "--speedup", "--speedup-variants", "eager,turbo"], "unknown turbo"),
    (["--methods", "lcm", "--speedup", "--speedup-at", "lcm:51"], "at most original_inference_steps=50"),
    (["--methods", "ddim", "--config", "no_such_field=1"], "has no field 'no_such_field'"),
    (["--steps", "1"], "--methods is required"),
    (["--merge", "missing.json"], "cannot read report missing.json"),
])
def test_bad_input_is_one_clear_error_with_exit_code_2(tmp_path, capsys, argv, message):
    assert _run(tmp_path, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not list(tmp_path.iterdir())                     # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CPU-only machine gives")
def test_cuda_device_without_cuda_is_a_usage_error(tmp_path, capsys):
    assert _run(tmp_path, "--methods", "ddim", "--device", "cuda") == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_papers_latencies_get_this_runs_number_beside_them_on_the_sd15_architecture():
    from bench.perf.profile_report import render_reported_table, reported_latencies

    ours = {"pipeline": "ours", "method": "lcm", "steps": 2, "dtype": "fp16", "median_ms": 123.0}
    table = render_reported_table(reported_latencies(), [ours], beside=True)
    assert "| SCott | 2 | LCM | 2 | 0.10 | A100 | - | 0.123 (fp16) |" in table
    assert "| DMD | 3 | DMD | 1 | 0.09 | not stated | 1 | - |" in table


def test_device_slug():
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert device_slug("AMD EPYC 7B13 64-Core Processor") == "amd-epyc-7b13-64-core-processor"
    assert device_slug("///") == "unknown-device"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU paths: CUDA events, fp16/bf16, the batch search")
def test_profile_on_gpu(tmp_path):
    assert main(["profile", "--device", "cuda", "--teacher", "tiny", "--out", str(tmp_path), "--quiet",
                 "--methods", "ddim,lcm-lora", "--steps", "1", "--dtypes", "fp16,bf16", "--batches", "4",
                 "--train-batch", "2", "--train-steps", "2", "--train-warmup", "1",
                 "--speedup", "--speedup-variants", "eager,half-vae,cuda-graphs-all"]) == 0
    report, _ = _report(tmp_path)
    for study in report["speedup"]:
        assert study["gpu_busy_fraction"] is not None and all(r["status"] == "measured" for r in study["variants"])
    for row in report["latency"]:
        assert row["status"] == "measured" and row["peak_memory_kind"] == "cuda_max_allocated"
    for row in report["training"]:
        if row["method"] == "lcm-lora":
            assert row["status"] == "measured" and row["largest_batch"] >= 2


def test_gradient_checkpointing_is_enabled_and_changes_no_number(tiny_teacher, one_thread):
    """The checkpointed run calls enable_gradient_checkpointing on the trained U-Net (a peft-wrapped
    one for lcm-lora) and, recomputing activations instead of storing them, gives the same losses."""
    from unittest import mock

    from diffusers import UNet2DConditionModel

    from bench.core.spec import load_method
    from bench.perf.training_speed import measure_training_step, training_source

    method = load_method("lcm-lora")
    data, _ = training_source(tiny_teacher)
    plain = measure_training_step(method, tiny_teacher, data, 2, False, 1, 2)
    original = UNet2DConditionModel.enable_gradient_checkpointing
    with mock.patch.object(UNet2DConditionModel, "enable_gradient_checkpointing", autospec=True,
                           side_effect=original) as spy:
        checkpointed = measure_training_step(method, tiny_teacher, data, 2, True, 1, 2)
    assert spy.call_count == 1
    assert plain.status == checkpointed.status == "measured"
    assert len(plain.losses) == len(checkpointed.losses) == 3 and len(checkpointed.timings_ms) == 2
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-5)
    assert len(set(plain.losses)) == 3                     # real, distinct per-step losses


def test_a_stale_accelerate_state_does_not_block_the_next_precision():
    """accelerate refuses a second Accelerator with another mixed precision; profiling fp16 then
    bf16 in one process needs new_trainer's reset (here: a bf16 state, then a CPU "no" trainer)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from bench.engine.training import Trainer, TrainSchedule
    from bench.perf.training_speed import new_trainer

    schedule = TrainSchedule(max_train_steps=1, train_batch_size=1, learning_rate=1e-4, checkpointing_steps=0)
    try:
        AcceleratorState._reset_state()                 # as if this process had not trained before
        Accelerator(cpu=True, mixed_precision="bf16")
        with pytest.raises(ValueError, match="already been initialized"):
            Trainer(schedule, None, device="cpu", progress=False)
    finally:
        trainer = new_trainer(schedule, torch.device("cpu"), "test")   # leaves a "no" state for other tests
    assert trainer.accelerator.mixed_precision == "no"


def test_pixel_space_teacher_has_no_pipeline_row(tiny_teacher):
    from bench.assets.teachers.model import IdentityCodec
    from bench.core.spec import load_method

    pixel_teacher = dataclasses.replace(tiny_teacher, codec=IdentityCodec(4))
    plan, reason = diffusers_plan(load_method("ddim"), pixel_teacher, 2)
    assert plan is None and "pixel-space (no VAE)" in reason
    plan, reason = diffusers_plan(load_method("er-sde"), tiny_teacher, 2)
    assert plan is None and "no stock diffusers scheduler runs er-sde" in reason


# ------------------------------------------------------------------------------------------------
# Sections on their own, partial reports, merging, the make-it-fast study
# ------------------------------------------------------------------------------------------------


def test_no_sampling_measures_training_only_with_the_config_override(tmp_path):
    assert _run(tmp_path, "--methods", "dmd", "--steps", "1", "--dtypes", "fp32", "--no-sampling", "--train-batch", "2",
                "--train-steps", "1", "--train-warmup", "1",
                "--config", "regression_distance=l2,num_regression_pairs=4") == 0
    report, markdown = _report(tmp_path)
    assert report["latency"] == [] and "## Sampling" not in markdown
    assert [(r["method"], r["gradient_checkpointing"], r["status"]) for r in report["training"]] == [
        ("dmd", False, "measured"), ("dmd", True, "measured")]
    assert "--no-sampling --config regression_distance=l2,num_regression_pairs=4" in report["command"]


def test_dmd_is_timed_on_one_regression_batch_of_pairs(tiny_teacher):
    """The toy schedule's 512 regression pairs (the paper's 500K) are cut to one regression batch for
    timing; a config that asks for fewer keeps its own."""
    from bench.core.spec import load_method
    from bench.engine.students import training_plan

    toy_scaled = dataclasses.replace(tiny_teacher, training_scale="toy")   # tiny's own: the plumbing schedule
    method, _ = training_plan(load_method("dmd"), toy_scaled)
    assert (method.config.num_regression_pairs, method.config.regression_batch_size) == (512, 16)
    timed, note = method.for_step_timing()
    assert timed.config.num_regression_pairs == 16 and note.startswith("16 regression pairs made for timing")
    assert dataclasses.replace(timed.config, num_regression_pairs=512) == method.config
    few = type(method)(dataclasses.replace(method.config, num_regression_pairs=4))
    assert few.for_step_timing() == (few, "")
    unused = type(method)(dataclasses.replace(method.config, regression_weight=0.0))
    assert unused.for_step_timing() == (unused, "")
    # the training measurement uses it: the row says so
    from bench.perf.training_speed import measure_training_step, training_source

    row = measure_training_step(load_method("dmd"), toy_scaled, training_source(tiny_teacher)[0], 2, False, 1, 1)
    assert row.status == "measured" and row.note == note


def test_a_run_that_stops_midway_keeps_the_methods_it_finished(tmp_path, monkeypatch):
    from bench.perf import profile

    measured = profile.profile_method_latency

    def second_method_fails(spec, teacher, method, dtype, progress=True):
        if method.name == "lcm":
            raise KeyboardInterrupt          # a kill between methods
        return measured(spec, teacher, method, dtype, progress)

    monkeypatch.setattr(profile, "profile_method_latency", second_method_fails)
    code = _run(tmp_path, "--methods", "ddim,lcm", "--steps", "1", "--dtypes", "fp32", "--batches", "2",
                "--throughput-runs", "1", "--no-train")
    assert code == 130
    report, markdown = _report(tmp_path)
    assert report["complete"] is False and "**Partial report**" in markdown
    assert {(r["method"], r["pipeline"]) for r in report["latency"]} == {("ddim", "ours"), ("ddim", "diffusers")}


def _fake_report(device: str, method: str, complete: bool = True) -> dict:
    return {"format": 1, "complete": complete, "command": f"python -m bench profile --methods {method}",
            "created": "2026-11-24T00:00:00+0000", "seconds": 2.0, "device": {"name": device, "type": "cuda"},
            "versions": {"torch": "2.11.0"}, "teacher": {"name": "sd15-arch"}, "settings": {},
            "latency": [{"method": method}], "training": [{"method": method}], "speedup": [],
            "reported": [], "notes": [f"note {method}", "shared note"]}


def test_merge_puts_the_runs_of_one_device_in_one_report(tmp_path):
    from bench.perf.profile import merge_reports

    paths = []
    for i, (method, complete) in enumerate([("lcm", False), ("mcm", True)]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(_fake_report("NVIDIA H100", method, complete)))
    merged = merge_reports([str(p) for p in paths])
    assert [r["method"] for r in merged["latency"]] == [r["method"] for r in merged["training"]] == ["lcm", "mcm"]
    assert [(r["command"], r["complete"]) for r in merged["runs"]] == [
        ("python -m bench profile --methods lcm", False), ("python -m bench profile --methods mcm", True)]
    assert merged["seconds"] == 4.0 and merged["complete"] is False
    assert merged["notes"] == ["note lcm", "shared note", "note mcm"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_fake_report("NVIDIA A100", "dmd")))
    from bench.core.errors import UsageError

    with pytest.raises(UsageError, match="different device names"):
        merge_reports([str(paths[0]), str(other)])


def test_speedup_study_components_ratios_and_the_half_vae_check(tmp_path):
    """On the CPU in fp32 'half-vae' decodes in fp32 too, so its decode equals the reference exactly;
    every ratio is the one its columns give."""
    assert _run(tmp_path, "--methods", "lcm", "--steps", "1", "--dtypes", "fp32", "--no-sampling", "--no-train",
                "--speedup", "--speedup-variants", "eager,channels-last,half-vae") == 0
    report, markdown = _report(tmp_path)
    (study,) = report["speedup"]
    assert (study["method"], study["steps"]) == ("lcm", 1)
    rows = {r["variant"]: r for r in study["variants"]}
    assert list(rows) == ["eager", "channels-last", "half-vae"]
    assert all(r["status"] == "measured" for r in rows.values())
    components = ("text_encoder_ms", "denoiser_ms", "vae_decode_ms")
    for r in rows.values():
        assert r["components_sum_ms"] == pytest.approx(sum(r[c] for c in components))
        assert r["speedup_vs_eager"] == pytest.approx(rows["eager"]["end_to_end_ms"] / r["end_to_end_ms"])
        assert r["ratio_to_best_components"] == pytest.approx(r["end_to_end_ms"] / study["best_components_sum_ms"])
    for c in components:
        assert study["best_components_ms"][c] == min(r[c] for r in rows.values())
    assert rows["half-vae"]["vae_finite"] is True and rows["half-vae"]["vae_max_abs_diff"] == 0.0
    shares = [o["share"] for o in study["top_operators"]]
    assert shares and shares == sorted(shares, reverse=True) and sum(shares) <= 1.0 + 1e-9
    assert "## Making it fast" in markdown and "| half-vae |" in markdown


def test_a_graphed_text_encoder_returns_copies_the_teacher_may_keep(tiny_teacher):
    """cuda-graphs-all: a replay overwrites the graph's output memory; the text encoder's outputs
    are copied out first, so an embedding kept across calls (the empty prompt's) stays intact, and
    the embedding is the plain text encoder's."""
    import copy

    from bench.engine.network_variants import outputs_copied

    graph_memory = torch.zeros(2, 3)

    def replay(input_ids):
        graph_memory.copy_(input_ids)
        return (graph_memory,)

    encode = outputs_copied(replay)
    kept = encode(torch.ones(2, 3))[0]
    encode(torch.full((2, 3), 5.0))
    assert torch.equal(kept, torch.ones(2, 3)) and torch.equal(graph_memory, torch.full((2, 3), 5.0))

    text_encoder = copy.deepcopy(tiny_teacher.text_encoder)
    text_encoder.forward = outputs_copied(text_encoder.forward)
    copied = dataclasses.replace(tiny_teacher, text_encoder=text_encoder)
    assert torch.equal(copied.encode_prompts(["a red cube", ""]), tiny_teacher.encode_prompts(["a red cube", ""]))


def test_a_study_that_stops_midway_keeps_the_variants_it_finished(tmp_path, monkeypatch):
    """A GPU lease can end inside a variant's compilation: the variants before it are in the report."""
    from bench.perf import speedup

    measured = speedup.measure_variant

    def second_variant_killed(spec, teacher, method, student, steps, guidance, dtype, variant, *rest):
        if variant.name == "channels-last":
            raise KeyboardInterrupt
        return measured(spec, teacher, method, student, steps, guidance, dtype, variant, *rest)

    monkeypatch.setattr(speedup, "measure_variant", second_variant_killed)
    assert _run(tmp_path, "--methods", "lcm", "--steps", "1", "--dtypes", "fp32", "--no-sampling", "--no-train",
                "--speedup", "--speedup-variants", "eager,channels-last") == 130
    report, markdown = _report(tmp_path)
    (study,) = report["speedup"]
    assert report["complete"] is False and [r["variant"] for r in study["variants"]] == ["eager"]
    (eager,) = study["variants"]
    assert eager["status"] == "measured" and eager["ratio_to_best_components"] == pytest.approx(
        eager["end_to_end_ms"] / eager["components_sum_ms"])
    assert "| eager |" in markdown
