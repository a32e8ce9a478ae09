"""`bench benchmark lcm-step` on the CPU with the tiny teacher. What makes its timing a like-for-like
comparison: given the same draws (t, noise, w, the VAE posterior sample) and the same initial
weights, the transcribed diffusers step (bench/perf/lcm_reference_step.py) and the project's
``lcm`` step through ``Trainer.fit`` compute the same losses, the same gradients and the same
updated student and EMA weights. Then the timing loop (alternation, the medians' ratio) and the CLI.
The GPU path (fp16 autocast, GradScaler, CUDA synchronisation) runs only on a GPU:
`python -m bench benchmark lcm-step --teacher sd15-arch --batch 8 --steps 20`."""
from __future__ import annotations

import dataclasses
import math
import re
import statistics

import pytest
import torch

from bench.cli import main
from bench.core.errors import UsageError
from bench.perf.lcm_reference_step import (
    GridDDIM,
    boundary_scalings,
    w_embedding,
)
from bench.perf.lcm_step_compare import (
    LcmStepResult,
    build_pair,
    differences_from_script,
    format_result,
    measure_pair,
    reference_config_for,
)
from methods.consistency import lcm_grid
from methods.diffusion_math import consistency_boundary_scalings, guidance_scale_embedding
from methods.lcm import LCMConfig

STEPS = 3
BATCH = 4
#: the script's step values (w ~ U[5, 15], L2, weight decay 1e-2, constant lr, default cond_proj
#: init), a larger lr to move the weights, and Adam eps 1e-3: with the default 1e-8 an element whose
#: gradient is ~1e-8 moves by a fraction of lr that float rounding decides, so the updated weights
#: could not be compared element by element
SCRIPT_VALUES = LCMConfig(toy={}, w_min=5.0, w_max=15.0, loss_type="l2", ema_decay=0.95, learning_rate=1e-3,
                          lr_scheduler="constant", cond_proj_init="default", adam_weight_decay=1e-2,
                          adam_epsilon=1e-3)


def _record_gradients(pair) -> dict[str, list[list[torch.Tensor]]]:
    """Each side's gradients as its optimizer sees them (after clipping), one list per step."""
    seen: dict[str, list[list[torch.Tensor]]] = {"ours": [], "reference": []}

    def hook(side):
        def snapshot(optimizer, args, kwargs):
            seen[side].append([p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]])
        return snapshot

    pair.state.optimizer.optimizer.register_step_pre_hook(hook("ours"))
    pair.reference.optimizer.optimizer.register_step_pre_hook(hook("reference"))
    return seen


def _max_diff(a, b) -> float:
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b, strict=True))


def _student_params(pair):
    ours = list(pair.trainer.unwrap(pair.state.student).parameters())
    reference = list(pair.reference.accelerator.unwrap_model(pair.reference.unet).parameters())
    return ours, reference


@pytest.mark.parametrize("config", [SCRIPT_VALUES, None], ids=["script-values", "toy-schedule"])
def test_reference_step_matches_lcm_step(teacher, one_thread, config):
    pair = build_pair(teacher, BATCH, STEPS, config)
    ours_start, ref_start = _student_params(pair)
    assert _max_diff(ours_start, ref_start) == 0.0                   # the same initial weights
    initial = [p.detach().clone() for p in ours_start]
    grads = _record_gradients(pair)

    for i in range(STEPS):
        ours = pair.ours_step()
        reference = pair.reference_step(pair.shared_randomness(i))
        assert ours == pytest.approx(reference, rel=1e-5), f"step {i}"

    # gradients: equal at the first step (same weights; 1e-4: the pseudo-Huber's gradient d / sqrt(d^2 + c^2)
    # with c = 1e-3 magnifies the float rounding of d), and after it (weights equal to rounding)
    assert len(grads["ours"]) == len(grads["reference"]) == STEPS
    for i, (g_ours, g_ref) in enumerate(zip(grads["ours"], grads["reference"])):
        scale = max(g.abs().max().item() for g in g_ref)
        assert scale > 0
        assert _max_diff(g_ours, g_ref) <= (1e-4 if i == 0 else 1e-3) * scale, f"gradients at step {i}"

    ours_end, ref_end = _student_params(pair)
    moved = max((p.detach() - q).abs().max().item() for p, q in zip(ours_end, initial))
    ours_target = list(pair.state.target.parameters())
    ref_target = list(pair.reference.target_unet.parameters())
    if config is SCRIPT_VALUES:
        lr = pair.reference.config.learning_rate
        assert moved > 0.5 * lr                                       # the optimizer moved the weights
        assert _max_diff(ours_end, ref_end) <= 1e-3 * lr
        assert _max_diff(ours_target, ref_target) <= 1e-3 * lr
    else:
        # the toy schedule warms the lr up from 0 (cosine, 20 warm-up steps): small moves; with Adam eps 1e-8
        # rounding decides part of a tiny-gradient element's move (measured here: 1.5 % of the largest move)
        assert moved > 0
        assert _max_diff(ours_end, ref_end) <= 0.1 * moved
        assert _max_diff(ours_target, ref_target) <= 0.1 * moved


def test_reference_config_is_the_projects(teacher):
    pair = build_pair(teacher, 2, 5, SCRIPT_VALUES)
    ref = pair.reference.config
    assert (ref.w_min, ref.w_max, ref.loss_type, ref.ema_decay, ref.adam_weight_decay) == (5.0, 15.0, "l2", 0.95, 1e-2)
    assert (ref.learning_rate, ref.max_train_steps, ref.mixed_precision) == (1e-3, 5, "no")
    assert sorted(d.split()[0] for d in differences_from_script(ref)) == ["adam_epsilon", "learning_rate",
                                                                          "max_train_steps"]
    fp16 = reference_config_for(pair.method.config, dataclasses.replace(pair.trainer.schedule, mixed_precision="fp16"))
    assert fp16.weight_dtype == torch.float16
    with pytest.raises(UsageError, match="sigma_data"):
        reference_config_for(dataclasses.replace(pair.method.config, sigma_data=1.0), pair.trainer.schedule)


def test_transcribed_helpers_equal_the_projects_math(teacher):
    abar = teacher.schedule.alphas_cumprod.float().numpy()
    solver = GridDDIM(abar, 1000, 50)
    assert solver.timesteps.tolist() == lcm_grid(1000, 50)
    below = [teacher.schedule.abar(max(t - 20, 0)).item() for t in lcm_grid(1000, 50)]
    assert solver.abar_below.double().tolist() == pytest.approx(below, rel=1e-6)
    w = torch.tensor([0.0, 2.0, 7.5, 14.0])
    assert torch.allclose(w_embedding(w, 256), guidance_scale_embedding(w, 256), atol=1e-4)
    t = torch.tensor([0, 19, 499, 999])
    for ours, ref in zip(boundary_scalings(t), consistency_boundary_scalings(t)):
        assert torch.allclose(ours.double(), ref, rtol=1e-6)
    assert boundary_scalings(t)[0][0].item() == 1.0 and boundary_scalings(t)[1][0].item() == 0.0


def test_steps_alternate_and_ratio_is_of_the_medians(teacher, one_thread):
    pair = build_pair(teacher, 2, 3)
    calls = []
    ours_step, reference_step = pair.ours_step, pair.reference_step
    pair.ours_step = lambda: calls.append("ours") or ours_step()
    pair.reference_step = lambda: calls.append("reference") or reference_step()
    ours_ms, ref_ms, ours_loss, ref_loss = measure_pair(pair, steps=2, warmup=1)
    assert calls == ["ours", "reference", "reference", "ours", "ours", "reference"]
    assert len(ours_ms) == len(ref_ms) == len(ours_loss) == len(ref_loss) == 2
    assert pair.ours_steps == pair.reference_steps == 3 and pair.trainer.report.steps == 3
    assert all(ms > 0 for ms in ours_ms + ref_ms)
    assert all(math.isfinite(loss) and loss > 0 for loss in ours_loss + ref_loss)   # the script's own draws too
    result = LcmStepResult("tiny", 2, "cpu (1 thread)", "no", 1, ours_ms, ref_ms, ours_loss, ref_loss)
    assert result.ratio == pytest.approx(statistics.median(ours_ms) / statistics.median(ref_ms))
    assert f"ratio ours/reference: {result.ratio:.3f}" in format_result(result)


def test_cli_prints_medians_and_their_ratio(capsys, one_thread):
    code = main(["benchmark", "lcm-step", "--teacher", "tiny", "--batch", "2", "--steps", "3", "--warmup", "1",
                 "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    ours, ref = (float(v) for v in re.findall(r"median\s+([\d.]+) ms/step", out))
    ratio = float(re.search(r"ratio ours/reference: ([\d.]+)", out).group(1))
    assert ratio == pytest.approx(ours / ref, abs=2e-3)
    assert "batch 2" in out and "1 warm-up + 3 timed steps per side" in out
    assert "loss_type huber (script l2)" in out                       # the tiny teacher's plumbing schedule
    assert "CPU: a smoke check only" in out


@pytest.mark.parametrize("argv, message", [
    (["--teacher", "tiny", "--batch", "0"], "--batch"),
    (["--teacher", "toy"], "no VAE"),
    (["--teacher", "no-such-teacher"], "unknown teacher"),
], ids=["batch-0", "pixel-space-teacher", "unknown-teacher"])
def test_cli_usage_errors(capsys, argv, message):
    assert main(["benchmark", "lcm-step", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_sd15_arch_needs_a_gpu(capsys):
    assert main(["benchmark", "lcm-step"]) == 2
    assert "needs a GPU" in capsys.readouterr().err
