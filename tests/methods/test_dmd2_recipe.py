"""DMD2's recipes against tianweiy/DMD2's scripts (the presets, the toy schedule over them), its
LR schedule (both schedulers stepped every iteration, the warm-up divided by the number of
processes as accelerate steps a prepared scheduler) against diffusers' get_scheduler, and stage 2's
start from a stage-1 student (exact weights, fingerprinted by sha256, one clear error without it)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types

import pytest
import torch
from conftest import trainer

from bench.assets.train_data import SyntheticPairs
from bench.core.errors import UsageError
from bench.core.spec import apply_toy_schedule, load_method
from methods.base import Student, TrainingContext
from methods.dmd import DMD, DMD2, DMD2_PRESETS, DMD2Config, DMDConfig

pytestmark = pytest.mark.usefixtures("one_thread", "isolated_cache")

# The scripts' constants (tianweiy/DMD2, commit 8d8fa55; flags a script leaves out are main/train_sd.py's
# argparse defaults; iterations from the experiments' README model zoo).
SD15_STAGE1 = "experiments/sdv1.5/laion6.25_sd_baseline_8node_guidance1.75_lr1e-5_seed10_dfake10_from_scratch.sh"
SD15_STAGE2 = ("experiments/sdv1.5/laion6.25_sd_baseline_8node_guidance1.75_lr5e-7_seed10_dfake10_diffusion1000_"
               "gan1e-3_noode_resume_fixdata.sh")
SDXL_4STEP = ("experiments/sdxl/sdxl_cond999_8node_lr5e-7_denoising4step_diffusion1000_gan5e-3_guidance8_noinit_"
              "noode_backsim_scratch.sh")
SCRIPTS = {
    # --conditioning_timestep 999 (default), --real_guidance_scale 1.75, --dfake_gen_update_ratio 10,
    # --generator_lr/--guidance_lr 1e-5, --batch_size 32, no --cls_on_clean_image; README: 39k iters
    "sd15-stage1": dict(denoising_step_list=(999,), step_counts=(1,), real_guidance_scale=1.75,
                        generator_update_ratio=10, learning_rate=1e-5, gan=False, train_batch_size=32,
                        max_train_steps=39_000),
    # stage 1's flags, lr 5e-7, --gen_cls_loss_weight 1e-3 --guidance_cls_loss_weight 1e-2, --ckpt_only_path
    # (stage 1's checkpoint_model_039000); README: 2k more iters
    "sd15-stage2": dict(denoising_step_list=(999,), step_counts=(1,), real_guidance_scale=1.75,
                        generator_update_ratio=10, learning_rate=5e-7, gan=True, gen_gan_weight=1e-3,
                        disc_gan_weight=1e-2, train_batch_size=32, max_train_steps=2_000),
    # --num_denoising_step 4 --denoising_timestep 1000 (range(999, 0, -250)) --backward_simulation,
    # --real_guidance_scale 8, --dfake_gen_update_ratio 5, lr 5e-7, --gen_cls_loss_weight 5e-3
    # --guidance_cls_loss_weight 1e-2, --batch_size 2; README: 19k iters, sampled with --num_step 4
    "sdxl-4step": dict(denoising_step_list=(999, 749, 499, 249), step_counts=(1, 4), backward_simulation=True,
                       real_guidance_scale=8.0, generator_update_ratio=5, learning_rate=5e-7, gan=True,
                       gen_gan_weight=5e-3, disc_gan_weight=1e-2, train_batch_size=2, max_train_steps=19_000),
}
#: every script: main/train_sd.py defaults --warmup_step 500, --max_grad_norm 10 (also passed),
#: --min_step_percent 0.02, --max_step_percent 0.98; AdamW betas (0.9, 0.999), weight_decay 0.01;
#: get_scheduler("constant_with_warmup"); --guidance_lr = --generator_lr; --diffusion_gan_max_timestep 1000
COMMON = dict(lr_warmup_steps=500, max_grad_norm=10.0, min_step_percent=0.02, max_step_percent=0.98,
              adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=0.01, lr_scheduler="constant_with_warmup",
              fake_learning_rate=None, gan_max_timestep=1000, regression_weight=0.0,
              lr_scheduler_stepping="every-iteration")


def stage2(path, **kw) -> DMD2:
    return DMD2(DMD2Config(preset="sd15-stage2", generator_init=str(path), gradient_checkpointing=False, **kw))


# ------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(SCRIPTS))
def test_presets_are_the_scripts_values(preset, tmp_path):
    extra = {"generator_init": str(tmp_path)} if preset == "sd15-stage2" else {}
    config = DMD2(DMD2Config(preset=preset, **extra)).config
    for name, value in {**SCRIPTS[preset], **COMMON}.items():
        assert getattr(config, name) == value, (preset, name)
    assert set(DMD2_PRESETS) == set(SCRIPTS)
    # the default is stage 1; an explicit field wins over the preset, on the command line too
    assert DMD2().config == DMD2(DMD2Config(preset="sd15-stage1")).config
    assert DMD2(DMD2Config(preset=preset, real_guidance_scale=3.0, **extra)).config.real_guidance_scale == 3.0
    cli = load_method("dmd2", f"preset={preset},learning_rate=2e-6" + "".join(f",{k}={v}" for k, v in extra.items()))
    assert (cli.config.preset, cli.config.learning_rate) == (preset, 2e-6)
    assert cli.config.generator_update_ratio == SCRIPTS[preset]["generator_update_ratio"]


def test_dmd_keeps_its_config_and_identity():
    """DMD (v1) has none of DMD2's new fields: its training identity, hence its fingerprint, is
    unchanged (every DMDConfig field but the sampling-only step_counts)."""
    names = {f.name for f in dataclasses.fields(DMDConfig)}
    assert not names & {"preset", "generator_init", "fake_score_init", "lr_scheduler_stepping"}
    assert set(DMD().training_identity()) == names - {"step_counts"}
    assert DMD().config.generator_update_ratio == 1 and DMD().config.lr_warmup_steps == 500


def test_the_toy_schedule_keeps_its_measured_values():
    """methods/configs/dmd2/toy.toml over the one-step default: the 4-step toy list for 1 and 4
    steps, r = 5, GAN with the sdv1.5 stage-2 weights, lr 5e-5, 20 warm-up steps, 2400 steps."""
    toy = apply_toy_schedule(DMD2().config)
    assert (toy.denoising_step_list, toy.step_counts, toy.backward_simulation) == ((399, 299, 199, 99), (1, 4), True)
    assert (toy.generator_update_ratio, toy.gan, toy.gen_gan_weight, toy.disc_gan_weight) == (5, True, 1e-3, 1e-2)
    assert (toy.learning_rate, toy.lr_warmup_steps, toy.max_train_steps, toy.train_batch_size) == (5e-5, 20, 2400, 32)
    assert (toy.real_guidance_scale, toy.regression_weight, toy.fake_learning_rate) == (1.75, 0.0, None)
    assert toy.lr_scheduler_stepping == "every-iteration"


# ------------------------------------------------------------------------------------------------
# LR schedule: every iteration, warm-up / num_processes
# ------------------------------------------------------------------------------------------------


def _lrs_per_iteration(method, teacher, iterations: int, lr: float) -> list[tuple[float, float]]:
    """(generator lr, fake lr) in effect at each iteration's optimizer steps."""
    tr = trainer(iterations, lr=lr)
    state = method.init_training_state(TrainingContext(teacher, tr, None))
    seen = []

    def step(state, batch):
        seen.append(tuple(u.optimizer.param_groups[0]["lr"] for u in state.updates))
        return method.training_step(state, batch)

    tr.fit(state, step, SyntheticPairs(resolution=teacher.resolution), teacher)
    return seen


def _reference_lrs(lr: float, warmup: int, iterations: int, num_processes: int) -> list[float]:
    """diffusers' constant_with_warmup stepped num_processes times per iteration (DMD2's
    scheduler.step() every iteration through accelerate's AcceleratedScheduler)."""
    from diffusers.optimization import get_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = get_scheduler("constant_with_warmup", opt, num_warmup_steps=warmup)
    out = []
    for _ in range(iterations):
        out.append(opt.param_groups[0]["lr"])
        for _ in range(num_processes):
            opt.step()
            scheduler.step()
    return out


@pytest.mark.parametrize("num_processes", [1, 2])
def test_dmd2_steps_both_schedulers_every_iteration(teacher, monkeypatch, num_processes):
    """r = 3, warm-up 6, lr 1e-3 over 8 iterations: both optimizers see diffusers' lr of the
    iteration (not of the generator's update count), and with 2 processes (accelerate steps a
    prepared scheduler twice per call) the full lr is reached after 6 / 2 = 3 iterations."""
    import accelerate.scheduler

    monkeypatch.setattr(accelerate.scheduler, "AcceleratorState", lambda: types.SimpleNamespace(
        num_processes=num_processes))
    method = DMD2(DMD2Config(generator_update_ratio=3, lr_warmup_steps=6, gradient_checkpointing=False))
    seen = _lrs_per_iteration(method, teacher, 8, lr=1e-3)
    ref = _reference_lrs(1e-3, 6, 8, num_processes)
    assert [g for g, _ in seen] == pytest.approx(ref, rel=1e-12, abs=1e-18)
    assert [f for _, f in seen] == pytest.approx(ref, rel=1e-12, abs=1e-18)
    expected = [1e-3 * min(1.0, i * num_processes / 6) for i in range(8)]
    assert [g for g, _ in seen] == pytest.approx(expected, rel=1e-12, abs=1e-18)
    full_from = 6 // num_processes
    assert seen[full_from - 1][0] < 1e-3 and all(g == pytest.approx(1e-3) for g, _ in seen[full_from:])
    # the generator's updates (iterations 0, 3, 6) take the iteration's lr
    assert seen[3][0] == pytest.approx(1e-3 * min(1.0, 3 * num_processes / 6))


def test_dmd_keeps_warmup_in_generator_updates(teacher):
    """DMD: each scheduler steps with its optimizer. r = 3, warm-up 6: the generator's k-th update
    (iterations 0, 3, 6) runs at k / 6 of the lr, the fake score's at iteration i at i / 6."""
    method = DMD(DMDConfig(generator_update_ratio=3, lr_warmup_steps=6, regression_weight=0.0,
                           gradient_checkpointing=False))
    seen = _lrs_per_iteration(method, teacher, 7, lr=1e-3)
    assert [seen[i][0] for i in (0, 3, 6)] == pytest.approx([0.0, 1e-3 / 6, 2e-3 / 6], rel=1e-12, abs=1e-18)
    assert [f for _, f in seen] == pytest.approx([1e-3 * i / 6 for i in range(7)], rel=1e-12, abs=1e-18)


# ------------------------------------------------------------------------------------------------
# Stage 2 from a stage-1 student
# ------------------------------------------------------------------------------------------------


def _stage1_unet(teacher, seed: int = 0):
    """A stand-in stage-1 student: the tiny teacher's U-Net with every weight moved."""
    import copy

    unet = copy.deepcopy(teacher.unet).float()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return unet


def _state(method, teacher, tr=None):
    tr = tr or trainer(1)
    return tr, method.init_training_state(TrainingContext(teacher, tr, None))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


def test_stage2_starts_from_the_stage1_weights_exactly(teacher, tmp_path):
    from safetensors.torch import save_file

    from bench.engine.students import save_student

    unet = _stage1_unet(teacher)
    weights = {k: v.detach().clone().contiguous() for k, v in unet.state_dict().items()}
    folder = save_student(Student(unet=unet), tmp_path / "dmd2-stage1", {"fingerprint": "x", "kind": "unet"})
    save_file(weights, str(tmp_path / "g.safetensors"))
    torch.save(weights, tmp_path / "pytorch_model.bin")            # DMD2's own checkpoint file
    for path in (folder, tmp_path / "g.safetensors", tmp_path / "pytorch_model.bin"):
        method = stage2(path, generator_ema_decay=0.5)
        tr, state = _state(method, teacher)
        assert _equal(tr.unwrap(state.generator).state_dict(), weights), path
        assert _equal(state.generator_ema.state_dict(), weights)
        fake = tr.unwrap(state.fake)
        assert _equal(fake.unet.state_dict(), teacher.unet.state_dict())    # no fake_score_init: the teacher
        assert fake.head is not None and method.config.gan and method.config.learning_rate == 5e-7
    # the fake score from DMD2's guidance checkpoint (fake_unet.* beside real_unet.*)
    fake_weights = {k: v.detach().clone() for k, v in _stage1_unet(teacher, seed=1).state_dict().items()}
    guidance = {**{f"fake_unet.{k}": v for k, v in fake_weights.items()},
                **{f"real_unet.{k}": v for k, v in teacher.unet.state_dict().items()}}
    torch.save(guidance, tmp_path / "pytorch_model_1.bin")
    tr, state = _state(stage2(folder, fake_score_init=str(tmp_path / "pytorch_model_1.bin")), teacher)
    assert _equal(tr.unwrap(state.fake).unet.state_dict(), fake_weights)
    assert _equal(tr.unwrap(state.generator).state_dict(), weights)


def test_stage2_is_fingerprinted_by_the_weights_sha256_not_the_path(teacher, tmp_path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _stage1_unet(teacher).state_dict().items()},
              str(tmp_path / "a.safetensors"))
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "b.safetensors").write_bytes((tmp_path / "a.safetensors").read_bytes())
    save_file({k: v.contiguous() for k, v in _stage1_unet(teacher, 2).state_dict().items()},
              str(tmp_path / "c.safetensors"))
    identity = stage2(tmp_path / "a.safetensors").training_identity()
    assert identity["generator_init"] == hashlib.sha256((tmp_path / "a.safetensors").read_bytes()).hexdigest()
    assert identity["fake_score_init"] is None and "preset" not in identity
    assert str(tmp_path) not in json.dumps(identity)
    assert stage2(tmp_path / "copy" / "b.safetensors").training_identity() == identity
    assert stage2(tmp_path / "c.safetensors").training_identity()["generator_init"] != identity["generator_init"]


def test_stage2_without_a_stage1_student_is_one_clear_error(teacher, tmp_path):
    with pytest.raises(ValueError, match=r"preset sd15-stage2 resumes from a stage-1 student .*set generator_init"):
        DMD2Config(preset="sd15-stage2")
    with pytest.raises(UsageError, match="generator_init=PATH"):
        load_method("dmd2", "preset=sd15-stage2")
    with pytest.raises(ValueError, match="preset must be one of"):
        DMD2Config(preset="sd15")
    missing = tmp_path / "no-such-student"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}: no such file or folder")):
        stage2(missing).training_identity()
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        _state(stage2(missing), teacher)
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "student.json").write_text(json.dumps({"kind": "lora"}))
    with pytest.raises(ValueError, match="a 'lora' student"):
        stage2(tmp_path / "lora").training_identity()
    torch.save({"conv_in.weight": torch.zeros(1)}, tmp_path / "other.bin")               # another U-Net
    with pytest.raises(ValueError, match="generator_init=.*other.bin: its weights do not fit the teacher's U-Net"):
        _state(stage2(tmp_path / "other.bin"), teacher)
    torch.save({"conv_in.weight": teacher.unet.conv_in.weight.detach()}, tmp_path / "part.bin")    # a part of one
    with pytest.raises(ValueError, match=r"part.bin: its weights do not fit the teacher's U-Net \(missing \["):
        _state(stage2(tmp_path / "part.bin"), teacher)


def test_stage2_from_a_student_trained_here(teacher, tmp_path):
    """End to end on the tiny teacher: a stage-1 student trained (1 step) and cached by the harness,
    then stage 2 from its folder: the generator starts as that student, the recipes' fingerprints differ."""
    from bench.engine import students

    stage1 = students.load_student(DMD2(), teacher, steps=1, max_train_steps=1, progress=False)
    method = stage2(stage1.path)
    tr, state = _state(method, teacher)
    assert _equal(tr.unwrap(state.generator).state_dict(), stage1.denoiser.unet.state_dict())
    data = SyntheticPairs(resolution=teacher.resolution)

    def fingerprint(m):
        train_method, schedule = students.training_plan(m, teacher, max_train_steps=1)
        return students.student_fingerprint(train_method, teacher, schedule, data)

    assert fingerprint(method) != fingerprint(DMD2())


def test_a_count_only_the_toy_schedule_serves_is_skipped_on_a_real_teacher(teacher):
    """DMD2's default (SD-1.5 stage 1) serves 1 step; its toy schedule 1 and 4. The harness judges
    a count on the config the teacher trains with, before any training."""
    from types import SimpleNamespace

    from bench.engine.students import unsupported_steps_on

    method = DMD2()
    real = SimpleNamespace(**{**vars(teacher), "training_scale": "paper"})
    assert unsupported_steps_on(method, teacher, 4) is None          # tiny: the toy schedule applies
    assert "4 steps skipped" in unsupported_steps_on(method, real, 4)
    assert unsupported_steps_on(method, real, 1) is None
