"""The method registry (methods.registry): built-in methods by decorator, plugins by entry point
(examples/custom-method is a real plugin package; its method is loaded here through a simulated
entry point, without installing it)."""
from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest
import torch

from methods import SampleRequest, get_method_class
from methods.base import Denoiser, TeacherSolver
from methods.registry import BUILTIN_MODULES, ENTRY_POINT_GROUP, REGISTRY, register_method

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom-method"


@pytest.fixture
def plugin_registry(monkeypatch):
    """The registry with two entry points loaded, the example's ``heun`` and a broken one;
    forgotten again afterwards."""
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    entries = [importlib.metadata.EntryPoint("heun", "heun_solver:Heun", ENTRY_POINT_GROUP),
               importlib.metadata.EntryPoint("broken", "no_such_plugin_module:Method", ENTRY_POINT_GROUP)]
    REGISTRY.names()
    for name in ("heun", "broken"):    # the example installed for real (README) is loaded afresh below
        REGISTRY.unregister(name)
    sys.modules.pop("heun_solver", None)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: entries if group == ENTRY_POINT_GROUP else [])
    assert REGISTRY.load_plugins() == ["heun", "broken"]
    yield REGISTRY
    for name in ("heun", "broken"):
        REGISTRY.unregister(name)
    sys.modules.pop("heun_solver", None)


def test_builtin_methods_register_in_a_fixed_order():
    # plugins installed in this environment (e.g. the example, `pip install -e examples/custom-method`) come after
    builtin = [name for name in REGISTRY.names() if get_method_class(name).__module__ in BUILTIN_MODULES]
    assert builtin[:3] == ["ddim", "dpmpp", "er-sde"] and builtin[-2:] == ["dmd", "dmd2"]
    assert REGISTRY.names()[:len(builtin)] == builtin
    assert all(get_method_class(name).name == name for name in REGISTRY.names())


def test_an_entry_point_adds_a_method_and_a_broken_one_is_named(plugin_registry):
    names = plugin_registry.names()
    assert names[-1] == "heun" and "broken" not in names and names[:3] == ["ddim", "dpmpp", "er-sde"]
    heun = plugin_registry.get("heun")
    assert heun.name == "heun" and issubclass(heun, TeacherSolver)
    with pytest.raises(KeyError, match=r"plugin broken failed to load \(no_such_plugin_module:Method: ModuleNotFoundError"):
        plugin_registry.get("broken")


def test_a_taken_name_is_refused():
    class Other(TeacherSolver):
        config_class = dict

    with pytest.raises(ValueError, match="method name 'ddim' is taken by methods.ddim.DDIM"):
        register_method("ddim")(Other)
    with pytest.raises(TypeError, match="Method subclass"):
        register_method("not-a-method")(dict)


def test_the_example_plugin_samples_and_its_euler_mode_is_ddim(plugin_registry, tiny_teacher):
    """The example's Heun solver on the tiny teacher: with second_order=false it is Euler on the
    probability-flow ODE, i.e. DDIM (eta = 0), to float32 rounding; second order differs."""
    heun = plugin_registry.get("heun")
    teacher = tiny_teacher
    denoiser = Denoiser(teacher.unet, teacher.schedule, scheduler_config=teacher.scheduler_config)

    def request() -> SampleRequest:
        noise = torch.randn(2, *teacher.latent_shape, generator=torch.Generator().manual_seed(1))
        return SampleRequest(noise, teacher.encode_prompts(["a", "b"]), teacher.encode_prompts(["", ""]),
                             [torch.Generator().manual_seed(i) for i in range(2)], 4, 3.0)

    ddim = get_method_class("ddim")().sample(denoiser, request())
    euler = heun(heun.config_class(second_order=False)).sample(denoiser, request())
    second = heun().sample(denoiser, request())
    assert (euler - ddim).abs().max() < 1e-4 < (second - ddim).abs().max()
    assert heun().nfe(4, 3.0) == 14 and heun(heun.config_class(second_order=False)).nfe(4, 1.0) == 4


def test_the_cli_lists_and_runs_a_plugin(plugin_registry, tmp_path, capsys):
    from bench.cli import main

    assert main(["list", "--names"]) == 0
    assert capsys.readouterr().out.strip().endswith(",heun")
    code = main(["run", "--methods", "heun", "--steps", "2", "--teacher", "tiny", "--suite", "smoke",
                 "--num-images", "2", "--metrics", "fid", "--out", str(tmp_path), "--quiet"])
    assert code == 0 and len(list((tmp_path / "samples").rglob("heun/*/*.png"))) == 2
