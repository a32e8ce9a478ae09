"""Method registry: every method is a class in its own module, registered here by name."""
from __future__ import annotations

from methods.base import Denoiser, Method, SampleRequest, Student, per_sample_randn


def _method_classes() -> tuple[type[Method], ...]:
    # Imported here, not at module level, so that `methods.base` / `methods.diffusion_math`
    # can be imported without pulling every method in.
    from methods.ddim import DDIM
    from methods.dmd import DMD, DMD2
    from methods.dpmpp import DPMSolverPP
    from methods.er_sde import ERSDE
    from methods.pndm import PNDM
    from methods.lcm import LCM, LCMLoRA
    from methods.mcm import MultistepCM
    from methods.scott import SCott
    from methods.splam import SPLAM

    return (DDIM, DPMSolverPP, ERSDE, LCM, LCMLoRA, MultistepCM, SCott, SPLAM, PNDM, DMD, DMD2)


def method_names() -> list[str]:
    return [cls.name for cls in _method_classes()]


def get_method_class(name: str) -> type[Method]:
    """The registered class called ``name``; KeyError with the known names otherwise."""
    for cls in _method_classes():
        if cls.name == name:
            return cls
    raise KeyError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")


__all__ = ["Denoiser", "Method", "SampleRequest", "Student", "per_sample_randn",
           "method_names", "get_method_class"]
