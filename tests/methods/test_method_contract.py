"""One contract test over every registered method, in the spirit of diffusers' SchedulerCommonTest:
what the harness relies on of any method, built-in or plugin. The per-method test files keep what
is specific to each method (its equations against the official code, its schedules)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.assets.train_data import SyntheticPairs
from bench.core.errors import UsageError
from bench.core.spec import (
    apply_config_overrides,
    apply_toy_schedule,
    format_config_value,
)
from bench.engine.training import Trainer
from methods import SampleRequest, get_method_class, method_names
from methods.base import Denoiser, Method, Student, TrainingContext, TrainingMethod
from methods.toy_schedule import TOY_FIELD, TOY_PREFIX, toy_overrides

pytestmark = pytest.mark.usefixtures("one_thread", "isolated_cache")

NAMES = method_names()
TRAINING = [name for name in NAMES if get_method_class(name).trains]


def first_supported_steps(method: Method) -> int:
    return next(s for s in (1, 2, 4, 8) if method.unsupported_steps_reason(s) is None)


def plumbing_context(method: TrainingMethod, teacher, max_train_steps: int = 1) -> tuple[TrainingMethod, TrainingContext]:
    """The method on the tiny teacher's plumbing schedule, and a context for one step at batch 2."""
    from bench.engine.students import training_plan

    steps = 1 if method.student_per_step_count else None
    train_method, schedule = training_plan(method, teacher, max_train_steps=max_train_steps, steps=steps)
    schedule = dataclasses.replace(schedule, train_batch_size=2, checkpointing_steps=0)
    trainer = Trainer(schedule, None, device="cpu", progress=False)
    return train_method, TrainingContext(teacher, trainer, SyntheticPairs(resolution=teacher.resolution), steps)


@pytest.mark.parametrize("name", NAMES)
def test_declares_what_the_harness_reads(name):
    cls = get_method_class(name)
    assert cls.name == name and cls.summary and "arXiv:" in cls.paper
    assert dataclasses.is_dataclass(cls.config_class)
    method = cls()
    assert isinstance(method, TrainingMethod) is cls.trains
    assert cls.supported_steps is None or all(isinstance(s, int) and s >= 1 for s in cls.supported_steps)
    assert first_supported_steps(method) >= 1 and method.nfe(1, 1.0) >= 1
    assert isinstance(cls.reported_names, tuple) and all(isinstance(n, str) for n in cls.reported_names)
    if cls.trains:
        identity = method.training_identity()
        assert set(identity) <= {f.name for f in dataclasses.fields(cls.config_class)}


@pytest.mark.parametrize("name", NAMES)
def test_every_config_field_round_trips_through_config(name):
    """`--config` can write every default of the config and of its toy schedule (``toy_X=v``,
    ``toy_T.k=v`` for a table), and parses it back to the same config."""
    config = get_method_class(name).config_class()
    items = [f"{f.name}={format_config_value(getattr(config, f.name))}" for f in dataclasses.fields(config)
             if f.name != TOY_FIELD]
    for key, value in getattr(config, TOY_FIELD, {}).items():
        entries = value.items() if isinstance(value, dict) else [(None, value)]
        items += [f"{TOY_PREFIX}{key}{'' if sub is None else '.' + sub}={format_config_value(v)}" for sub, v in entries]
    assert apply_config_overrides(type(config)(), ",".join(items)) == config


@pytest.mark.parametrize("name", NAMES)
def test_a_toy_schedule_names_real_fields(name):
    """Every trained method has a toy schedule (methods/configs/<name>/toy.toml) whose entries are
    fields (a typo would be ignored silently). A table is the method's own toy setting: dropping
    it must change the toy schedule of some step count."""
    cls = get_method_class(name)
    config = cls.config_class()
    toy = getattr(config, TOY_FIELD, None)
    assert not cls.trains or toy, f"{name}: a trained method needs methods/configs/{name}/toy.toml"
    toy_overrides(config)                                   # raises on a name that is not a field
    for table in sorted(k for k, v in (toy or {}).items() if isinstance(v, dict)):
        assert cls.trains and cls.student_per_step_count, f"{name}: toy table {table} is read by nothing"
        other = cls(apply_config_overrides(config, f"{TOY_PREFIX}{table}=none"))
        plans = [(cls().toy_config_for_steps(apply_toy_schedule(config), S),
                  other.toy_config_for_steps(apply_toy_schedule(other.config), S)) for S in (1, 2, 4, 8, 16)]

        def rest(c):
            return {k: v for k, v in dataclasses.asdict(c).items() if k != TOY_FIELD}

        assert any(rest(a) != rest(b) for a, b in plans), f"{name}: toy table {table} changes no toy schedule"


def test_a_toy_schedule_typo_is_one_clear_error():
    """A toy schedule entry that names no field: a ValueError from the file, a UsageError from
    --config, each naming the entry."""
    from methods.lcm import LCMConfig

    with pytest.raises(ValueError, match=r"LCMConfig: its toy schedule sets \['max_train_step'\], which are not fields"):
        apply_toy_schedule(dataclasses.replace(LCMConfig(), toy={"max_train_step": 3}))
    with pytest.raises(UsageError, match="toy_max_train_step: 'max_train_step' is not a field"):
        apply_config_overrides(LCMConfig(), "toy_max_train_step=3")
    with pytest.raises(UsageError, match="has no field 'toy'"):
        apply_config_overrides(LCMConfig(), "toy=3")


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_deterministic_on_the_tiny_teacher(name, teacher):
    """Two samplings from the same noise and per-image generators give the same latents, of the
    noise's shape, finite; a training method samples with the (untrained) student it starts from."""
    method = get_method_class(name)()
    unet = teacher.unet
    if method.trains:
        train_method, ctx = plumbing_context(method, teacher)
        student = train_method.student_from_state(train_method.init_training_state(ctx), ctx)
        assert isinstance(student, Student) and student.kind in ("unet", "lora")
        unet, method = student.unet, train_method
    denoiser = Denoiser(unet, teacher.schedule, images_per_call=None, scheduler_config=teacher.scheduler_config)
    steps = first_supported_steps(method)

    def request() -> SampleRequest:
        noise = torch.randn(2, *teacher.latent_shape, generator=torch.Generator().manual_seed(5))
        return SampleRequest(noise, teacher.encode_prompts(["a red circle", "a blue square"]),
                             teacher.encode_prompts(["", ""]), [torch.Generator().manual_seed(i) for i in (7, 8)],
                             steps, 3.0)

    first, second = method.sample(denoiser, request()), method.sample(denoiser, request())
    assert first.shape == (2, *teacher.latent_shape) and torch.isfinite(first).all()
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", TRAINING)
def test_one_training_step_gives_a_finite_loss(name, teacher):
    train_method, ctx = plumbing_context(get_method_class(name)(), teacher)
    state = train_method.init_training_state(ctx)
    report = ctx.trainer.fit(state, train_method.training_step, ctx.data, teacher)
    assert report.steps == 1 and report.losses and all(math.isfinite(loss) for loss in report.losses)
