"""The training harness (bench.engine.training, bench.assets.train_data, bench.engine.students) on the tiny teacher:
deterministic data, exact resume after an interruption, the NaN guard, and the student cache."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import Killed, KilledAt, with_toy

from bench.assets.teachers.model import TEACHER_SPECS
from bench.assets.train_data import (
    ImageCaptionFolder,
    SyntheticPairs,
    ToyWorldPairs,
    batch_seed,
    training_data_for,
)
from bench.cli import main
from bench.core.errors import BenchError, UsageError
from bench.core.spec import apply_config_overrides, apply_toy_schedule, toy_overrides
from bench.engine.training import NonFiniteLossError, Trainer, TrainSchedule
from methods.base import TrainingContext
from methods.diffusion_math import lcm_w_from_guidance_scale
from methods.dmd import DMDConfig
from methods.lcm import LCM, LCMConfig, LCMLoRA, LCMLoRAConfig
from methods.mcm import MCMConfig
from methods.scott import SCottConfig
from methods.splam import SPLAMConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# Schedules and data
# ------------------------------------------------------------------------------------------------


def test_schedule_from_config_and_toy_override():
    config = LCMConfig().resolved()
    paper = TrainSchedule.from_config(config)
    assert (paper.max_train_steps, paper.train_batch_size, paper.learning_rate) == (100_000, 72, 8e-6)
    toy = apply_toy_schedule(config)
    assert toy_overrides(config) == {"checkpointing_steps": 250, "ema_decay": 0.95, "learning_rate": 1e-4,
                                     "max_train_steps": 1000, "train_batch_size": 32, "cond_proj_init": "zero",
                                     "w_min": 2.0, "w_max": 2.0, "loss_type": "huber", "lr_scheduler": "cosine",
                                     "lr_warmup_steps": 20}
    assert (toy.max_train_steps, toy.train_batch_size, toy.learning_rate, toy.ema_decay) == (1000, 32, 1e-4, 0.95)
    assert toy.loss_type == "huber" and config.loss_type == "l2"
    assert toy.time_cond_proj_dim == 256 and toy.sigma_data == 0.5      # only what the toy schedule sets changes
    assert TrainSchedule.from_config(toy, max_train_steps=7).max_train_steps == 7
    # --config toy_X=none drops X from the toy schedule
    assert "ema_decay" not in toy_overrides(apply_config_overrides(config, "toy_ema_decay=none"))


def test_toy_students_distil_the_guidance_the_toy_suite_scores_at():
    """On a toy teacher each student targets the teacher's DDIM at the suite's guidance, the
    baseline the toy leaderboard compares it with (methods.consistency, toy_w_min)."""
    g = TEACHER_SPECS["toy"].default_guidance_scale
    for config in (LCMConfig(), LCMLoRAConfig(), SPLAMConfig()):
        toy = apply_toy_schedule(config.resolved())
        assert toy.w_min == toy.w_max == lcm_w_from_guidance_scale(g), type(config).__name__
    scott = apply_toy_schedule(SCottConfig().resolved())      # the paper's range: measured better on the toy
    assert scott.w_min == lcm_w_from_guidance_scale(g) and scott.w_max == 14.0
    assert apply_toy_schedule(MCMConfig()).guidance_scale is None        # None: the teacher's default
    assert apply_toy_schedule(DMDConfig()).real_guidance_scale == g


def test_toy_losses_are_the_measured_ones_and_real_teachers_keep_the_papers():
    configs = {"lcm": LCMConfig(), "lcm-lora": LCMLoRAConfig(), "scott": SCottConfig(), "splam": SPLAMConfig()}
    toy = {name: apply_toy_schedule(config.resolved()) for name, config in configs.items()}
    paper = {name: config.resolved() for name, config in configs.items()}
    assert {name: c.loss_type for name, c in toy.items()} == {"lcm": "huber", "lcm-lora": "l2", "scott": "huber",
                                                             "splam": "huber"}
    assert {name: c.loss_type for name, c in paper.items()} == {"lcm": "l2", "lcm-lora": "l2", "scott": "l2",
                                                               "splam": "huber"}
    # The lr schedules measured best on the toy (methods/lcm.py, scott.py, splam.py): a cosine decay
    # for lcm, scott (which inherits it) and splam; lcm-lora keeps the code's constant lr everywhere.
    assert {name: (c.lr_scheduler, c.lr_warmup_steps) for name, c in toy.items()} == {
        "lcm": ("cosine", 20), "scott": ("cosine", 20), "lcm-lora": ("constant", 500), "splam": ("cosine", 20)}
    assert {c.lr_scheduler for c in paper.values()} == {"constant"}
    # MCM's toy schedule (methods/mcm.py, measured): 4000 steps with a cosine lr; the paper's stays.
    mcm_toy, mcm_paper = apply_toy_schedule(MCMConfig()), MCMConfig()
    assert (mcm_toy.lr_scheduler, mcm_toy.max_train_steps) == ("cosine", 4000)
    assert (mcm_paper.lr_scheduler, mcm_paper.max_train_steps) == ("constant", 30_000)


def test_an_explicit_config_value_wins_over_its_toy_twin():
    config = apply_config_overrides(LCMConfig(), "w_min=5,w_max=15,learning_rate=3e-4")
    toy = apply_toy_schedule(config.resolved())
    assert (toy.w_min, toy.w_max, toy.learning_rate) == (5.0, 15.0, 3e-4)
    assert toy.max_train_steps == 1000                   # fields not given keep their toy value
    both = apply_toy_schedule(apply_config_overrides(LCMConfig(), "learning_rate=3e-4,toy_learning_rate=2e-4"))
    assert both.learning_rate == 2e-4                    # both given: the toy twin applies on a toy


def test_list_verbose_shows_each_field_with_its_toy_value(capsys):
    assert main(["list", "--verbose"]) == 0
    out = capsys.readouterr().out
    lcm = out[out.index("  lcm "):out.index("  lcm-lora ")]
    assert "      w_max = 14.0  (toy: 2.0)\n" in lcm and "      loss_type = 'l2'  (toy: 'huber')\n" in lcm
    assert "      time_cond_proj_dim = 256\n" in lcm
    assert "toy = " not in out and "--config toy_K=V" in out
    mcm = out[out.index("  mcm "):]
    assert "      toy short_schedule = {'from_segments': 8, 'max_train_steps': 500, 'lr_scheduler': 'constant'}\n" in mcm


def test_synthetic_pairs_are_a_function_of_seed_and_index():
    data = SyntheticPairs(resolution=16, seed=3)
    a, ca = data.batch(5, 4)
    b, cb = SyntheticPairs(resolution=16, seed=3).batch(5, 4)
    assert torch.equal(a, b) and ca == cb
    assert a.shape == (4, 3, 16, 16) and a.dtype == torch.float32 and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, data.batch(6, 4)[0])
    assert not torch.equal(a, SyntheticPairs(resolution=16, seed=4).batch(5, 4)[0])
    assert batch_seed(0, 1) != batch_seed(1, 0)


def test_toy_world_pairs():
    data = ToyWorldPairs(seed=1)
    images, captions = data.batch(2, 3)
    again, _ = ToyWorldPairs(seed=1).batch(2, 3)
    assert images.shape[0] == 3 and images.shape[1] == 3 and len(captions) == 3
    assert torch.equal(images, again) and images.min() >= -1 and images.max() <= 1
    # batch 2 of size 3 is items 6..8 of the world's draw
    from bench.assets.toy.world import draw_pairs

    ref, ref_captions = draw_pairs(1, 9)
    assert captions == ref_captions[6:9]


def test_image_caption_folder(tmp_path):
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for i in range(5):
        pixels = (torch.rand(20 + i, 24, 3, generator=rng) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f"{i:03d}.png")
        if i != 4:
            (tmp_path / f"{i:03d}.txt").write_text(f"caption {i}\n")
    data = ImageCaptionFolder(tmp_path, resolution=16, seed=0)
    assert len(data) == 4 and data.skipped == 1
    images, captions = data.batch(0, 4)
    assert images.shape == (4, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert sorted(captions) == [f"caption {i}" for i in range(4)]          # one epoch = a permutation
    images2, captions2 = ImageCaptionFolder(tmp_path, resolution=16, seed=0).batch(0, 4)
    assert torch.equal(images, images2) and captions == captions2
    assert ImageCaptionFolder(tmp_path, resolution=16, seed=1).identity != data.identity
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="same-stem"):
        ImageCaptionFolder(empty, resolution=16)


def test_training_data_for_teachers(teacher, monkeypatch, tmp_path):
    monkeypatch.delenv("BENCH_TRAIN_DATA", raising=False)
    assert isinstance(training_data_for(teacher), SyntheticPairs)
    real = dataclasses.replace(teacher, name="sd15", identity={"name": "sd15", "hub_id": "x"})
    with pytest.raises(BenchError, match="BENCH_TRAIN_DATA"):
        training_data_for(real)
    (tmp_path / "a.txt").write_text("a cat")
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    monkeypatch.setenv("BENCH_TRAIN_DATA", str(tmp_path))
    assert isinstance(training_data_for(real), ImageCaptionFolder)


# ------------------------------------------------------------------------------------------------
# Kill and resume
# ------------------------------------------------------------------------------------------------


def _method(name: str):
    if name == "lcm":
        return LCM(LCMConfig(ema_decay=0.9, loss_type="huber", lr_scheduler="constant_with_warmup", lr_warmup_steps=3))
    return LCMLoRA(LCMLoRAConfig(lora_rank=4, lora_alpha=4.0, w_min=5.0, w_max=15.0))


def _schedule(**kw) -> TrainSchedule:
    values = dict(max_train_steps=4, train_batch_size=2, learning_rate=1e-4, gradient_accumulation_steps=2,
                  checkpointing_steps=2)
    values.update(kw)
    return TrainSchedule(**values)


@pytest.mark.parametrize("name", ["lcm", "lcm-lora"])
def test_resume_after_interruption_reproduces_the_uninterrupted_run(teacher, tmp_path, name):
    """4 optimizer steps x 2 accumulated micro-batches, checkpoint every 2 steps. Run A goes
    straight through. Run B is killed during step 3 (micro-batch 5), then a new Trainer and a
    freshly built state resume from the step-2 checkpoint. Same parameters, EMA target and loss
    history, bit for bit."""
    data = SyntheticPairs(resolution=teacher.resolution)

    method = _method(name)
    straight = Trainer(_schedule(), tmp_path / "a", device="cpu", progress=False)
    state_a = method.init_training_state(TrainingContext(teacher, straight, None))
    straight.fit(state_a, method.training_step, data, teacher)
    student_a = method.student_from_state(state_a, TrainingContext(teacher, straight, None))

    with pytest.raises(Killed):
        method.train(TrainingContext(teacher, Trainer(_schedule(), tmp_path / "b", device="cpu", progress=False), KilledAt(data, 5)))
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["step-00000002"]

    resumed = Trainer(_schedule(), tmp_path / "b", device="cpu", progress=False)
    state_b = method.init_training_state(TrainingContext(teacher, resumed, None))
    report = resumed.fit(state_b, method.training_step, data, teacher)
    student_b = method.student_from_state(state_b, TrainingContext(teacher, resumed, None))

    assert report.resumed_from == 2 and report.steps == 4
    assert report.losses == straight.report.losses
    for net_a, net_b in [(student_a.unet, student_b.unet)] + (
            [(state_a.target, state_b.target)] if name == "lcm" else []):
        a, b = net_a.state_dict(), net_b.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    if name == "lcm":   # the EMA target moved (so its checkpointing was exercised)
        online = student_a.unet.state_dict()
        assert any(not torch.equal(v, online[k]) for k, v in state_a.target.state_dict().items())


def test_checkpoints_are_pruned_and_stale_temp_folders_removed(teacher, tmp_path):
    method = _method("lcm-lora")
    stale = tmp_path / ".step-00000003.tmp"
    stale.mkdir(parents=True)
    trainer = Trainer(_schedule(max_train_steps=5, gradient_accumulation_steps=1, checkpointing_steps=1,
                                checkpoints_total_limit=2), tmp_path, device="cpu", progress=False)
    method.train(TrainingContext(teacher, trainer, SyntheticPairs(resolution=teacher.resolution)))
    # steps 1..4 checkpointed (not the last: the student is saved instead), newest two kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-00000004"]
    files = {p.name for p in (tmp_path / "step-00000004").iterdir()}
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
            "extra_state.safetensors", "trainer_state.json"} <= files
    assert json.loads((tmp_path / "step-00000004" / "trainer_state.json").read_text())["step"] == 4


def test_a_damaged_checkpoint_falls_back_to_the_one_before(teacher, tmp_path, caplog):
    """4 KB overwritten in the middle of the newest checkpoint's weights (size kept): resume moves it
    aside with one warning naming the file, resumes from the previous checkpoint and ends bit-identical
    to the uninterrupted run."""
    data = SyntheticPairs(resolution=teacher.resolution)
    method = _method("lcm-lora")
    schedule = dict(max_train_steps=5, gradient_accumulation_steps=1, checkpointing_steps=1)
    straight = Trainer(_schedule(**schedule), tmp_path / "a", device="cpu", progress=False)
    expected = method.train(TrainingContext(teacher, straight, data)).unet.state_dict()
    with pytest.raises(Killed):
        method.train(TrainingContext(teacher, Trainer(_schedule(**schedule), tmp_path / "b", device="cpu",
                                                      progress=False), KilledAt(data, 4)))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["step-00000003", "step-00000004"]
    weights = tmp_path / "b" / "step-00000004" / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(b"\xff" * 4096)
    assert weights.stat().st_size == size
    resumed = Trainer(_schedule(**schedule), tmp_path / "b", device="cpu", progress=False)
    with caplog.at_level("WARNING"):
        student = method.train(TrainingContext(teacher, resumed, data))
    assert resumed.report.resumed_from == 3
    assert any("step-00000004 is damaged (model.safetensors does not hash" in r.getMessage() and
               "resuming from step-00000003" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "b" / ".step-00000004.damaged").is_dir()
    assert all(torch.equal(v, expected[k]) for k, v in student.unet.state_dict().items())


# ------------------------------------------------------------------------------------------------
# NaN guard
# ------------------------------------------------------------------------------------------------


def test_non_finite_loss_stops_with_the_step_and_the_last_good_checkpoint(teacher, tmp_path):
    method = _method("lcm")
    trainer = Trainer(_schedule(max_train_steps=5, gradient_accumulation_steps=1, checkpointing_steps=2),
                      tmp_path, device="cpu", progress=False)
    state = method.init_training_state(TrainingContext(teacher, trainer, None))

    def poisoned(state, batch):
        loss = method.training_step(state, batch)
        return loss * float("nan") if batch.step == 2 else loss      # step 3 (1-based)

    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(state, poisoned, SyntheticPairs(resolution=teacher.resolution), teacher)
    message = str(info.value)
    assert "training step 3 of 5" in message and "nan" in message
    assert str(tmp_path / "step-00000002") in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002"]   # kept, nothing newer
    # and the kept checkpoint resumes
    again = Trainer(trainer.schedule, tmp_path, device="cpu", progress=False)
    report = again.fit(method.init_training_state(TrainingContext(teacher, again, None)), method.training_step,
                       SyntheticPairs(resolution=teacher.resolution), teacher)
    assert report.resumed_from == 2 and report.steps == 5 and all(map(torch.isfinite, torch.tensor(report.losses)))


def test_non_finite_gradient_is_caught_before_the_update(teacher, tmp_path):
    method = _method("lcm-lora")
    trainer = Trainer(_schedule(max_train_steps=2, gradient_accumulation_steps=1, checkpointing_steps=0),
                      None, device="cpu", progress=False)
    state = method.init_training_state(TrainingContext(teacher, trainer, None))
    before = [p.detach().clone() for p in state.params]
    state.params[0].register_hook(lambda grad: grad * float("inf"))    # finite loss, infinite gradient

    with pytest.raises(NonFiniteLossError, match="gradient norm is (inf|nan) at training step 1 of 2"):
        trainer.fit(state, method.training_step, SyntheticPairs(resolution=teacher.resolution), teacher)
    assert all(torch.equal(a, b) for a, b in zip(before, state.params))


def _loss_scaled_trainer(max_train_steps: int) -> Trainer:
    """A Trainer with fp16-style dynamic loss scaling on the CPU: accelerate creates its GradScaler
    only for fp16 on CUDA, so one is put where ``prepare`` picks it up (the optimizer's scaler)."""
    trainer = Trainer(_schedule(max_train_steps=max_train_steps, gradient_accumulation_steps=1,
                                checkpointing_steps=0), None, device="cpu", progress=False)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    return trainer


def test_fp16_loss_scaling_overflow_skips_the_step_and_lowers_the_scale(teacher):
    """The first gradients overflow (as fp16 AMP's do at a scale of 2**16): GradScaler skips those
    steps and halves the scale each time; training goes on and counts them."""
    method = _method("lcm-lora")
    trainer = _loss_scaled_trainer(max_train_steps=5)
    state = method.init_training_state(TrainingContext(teacher, trainer, None))
    backward_calls = []

    def overflow_three_times(grad):
        backward_calls.append(1)
        return grad * float("inf") if len(backward_calls) <= 3 else grad

    state.params[0].register_hook(overflow_three_times)
    before = [p.detach().clone() for p in state.params]
    updated_at = []
    step = method.training_step

    def watch(state, batch):
        updated_at.append(not all(torch.equal(a, b) for a, b in zip(before, state.params)))
        return step(state, batch)

    report = trainer.fit(state, watch, SyntheticPairs(resolution=teacher.resolution), teacher)
    assert report.steps == 5 and report.skipped_steps == 3 == trainer.skipped_steps
    assert trainer.accelerator.scaler.get_scale() == 2.0**13
    assert updated_at == [False, False, False, False, True]   # steps 1-3 skipped, step 4 updated


def test_fp16_loss_scaling_stops_when_the_gradients_stay_non_finite(teacher, monkeypatch):
    from bench.engine import training

    monkeypatch.setattr(training, "MAX_SKIPPED_IN_A_ROW", 3)
    method = _method("lcm-lora")
    trainer = _loss_scaled_trainer(max_train_steps=10)
    state = method.init_training_state(TrainingContext(teacher, trainer, None))
    state.params[0].register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(NonFiniteLossError,
                       match=r"gradient norm after 3 skipped fp16 steps in a row is (inf|nan) at training step 4 of"):
        trainer.fit(state, method.training_step, SyntheticPairs(resolution=teacher.resolution), teacher)
    assert trainer.skipped_steps == 3


# ------------------------------------------------------------------------------------------------
# The student cache
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lcm", "lcm-lora"])
def test_load_student_trains_once_saves_and_exports(teacher, tmp_path, monkeypatch, name):
    from bench.engine import students
    from methods.base import SampleRequest

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCH_TRAIN_DATA", raising=False)
    cls, config_cls = (LCM, LCMConfig) if name == "lcm" else (LCMLoRA, LCMLoRAConfig)
    # toy schedule (tiny is a random-weight teacher), shrunk further for the test
    method = cls(with_toy(config_cls, dict(train_batch_size=2, checkpointing_steps=1)))
    first = students.load_student(method, teacher, steps=2, max_train_steps=2, progress=False)
    info = json.loads((first.path / "student.json").read_text())
    assert info["fingerprint"] == first.fingerprint and info["trained_steps"] == 2
    assert info["schedule"]["train_batch_size"] == 2 and info["schedule"]["learning_rate"] == 1e-4
    assert info["final_loss"] is not None and info["training_seconds"] > 0
    assert info["torch_threads"] == torch.get_num_threads()
    assert (first.path / ("unet" if name == "lcm" else "pytorch_lora_weights.safetensors")).exists()
    assert not any(p.name.endswith(".work") for p in first.path.parent.iterdir())   # checkpoints removed

    monkeypatch.setattr(cls, "train", lambda *a, **k: pytest.fail("retrained a cached student"))
    second = students.load_student(method, teacher, steps=4, max_train_steps=2, progress=False)
    assert second.fingerprint == first.fingerprint and second.path == first.path
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]   # noqa: E731
    request = lambda: SampleRequest(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9)),  # noqa: E731
                                    teacher.encode_prompts(["a", "b"]), teacher.encode_prompts(["", ""]),
                                    gens(), 2, 1.0)
    assert torch.equal(method.sample(first.denoiser, request()), method.sample(second.denoiser, request()))
    # the sampling-only fields do not change the student; the schedule does
    respaced = cls(with_toy(config_cls, dict(train_batch_size=2, checkpointing_steps=1), timestep_spacing="original"))
    assert students.load_student(respaced, teacher, steps=2, max_train_steps=2, progress=False).path == first.path
    # --config toy_max_train_steps=2 names the same student as --max-train-steps 2
    same = cls(with_toy(config_cls, dict(train_batch_size=2, checkpointing_steps=1, max_train_steps=2)))
    assert students.load_student(same, teacher, steps=2, progress=False).path == first.path
    plan = students.training_plan(method, teacher, max_train_steps=3)[1]
    data = training_data_for(teacher)
    assert students.student_fingerprint(method, teacher, plan, data) != first.fingerprint

    out = students.export_student(first, tmp_path / "export")
    assert json.loads((out / "student.json").read_text())["fingerprint"] == first.fingerprint
    assert students.export_student(first, out) == out                     # same student: no-op
    (tmp_path / "other").mkdir()
    with pytest.raises(UsageError):
        students.export_student(first, tmp_path / "other")


def test_load_student_resumes_a_killed_training(teacher, tmp_path, monkeypatch):
    from bench.engine import students

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    method = LCMLoRA(with_toy(LCMLoRAConfig, dict(train_batch_size=2, checkpointing_steps=1), lora_rank=4, lora_alpha=4.0))
    data = SyntheticPairs(resolution=teacher.resolution)
    with pytest.raises(Killed):
        students.load_student(method, teacher, steps=1, max_train_steps=3, data=KilledAt(data, 2), progress=False)
    loaded = students.load_student(method, teacher, steps=1, max_train_steps=3, data=data, progress=False)
    assert loaded.info["resumed_from_step"] == 2 and loaded.info["trained_steps"] == 3


def test_a_captions_file_trains_dmd_and_is_refused_for_image_methods(teacher, tmp_path, monkeypatch):
    """BENCH_TRAIN_DATA=FILE.txt: prompts only. DMD (no GAN) trains on it; a method that noises real
    images (LCM) is refused before any work with one error naming the fix."""
    from bench.assets.train_data import CaptionFile, training_data_for
    from bench.engine import students
    from methods.dmd import DMD

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    captions = tmp_path / "captions.txt"
    captions.write_text("a red cube\n\na blue ball on grass\na green cone\n")
    monkeypatch.setenv("BENCH_TRAIN_DATA", str(captions))
    data = training_data_for(teacher, seed=0)
    assert isinstance(data, CaptionFile) and len(data) == 3 and not data.has_images
    images, first = data.batch(0, 5)
    assert images is None and first == data.batch(0, 5)[1] and sorted(first[:3]) == sorted(data.captions)
    loaded = students.load_student(DMD(), teacher, steps=1, max_train_steps=2, progress=False)
    assert loaded.info["trained_steps"] == 2 and loaded.info["data"]["source"] == "caption-file"
    with pytest.raises(UsageError, match="lcm trains on real images.*folder of images"):
        students.load_student(LCM(), teacher, steps=1, max_train_steps=2, progress=False)
    assert not list((tmp_path / "cache" / "students").glob("lcm-*"))
