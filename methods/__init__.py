"""The methods: each a class in its own module, registered by name with ``@register_method``
(``methods.registry``; plugins from other packages through the ``distill_bench.methods`` entry
points). ``methods`` depends on torch and diffusers only, never on the harness (``bench``)."""
from __future__ import annotations

from methods.base import (
           Denoiser,
           Method,
           SampleRequest,
           Student,
           TrainingContext,
           TrainingMethod,
           per_sample_randn,
)
from methods.registry import get_method_class, method_names, register_method

__all__ = ["Denoiser", "Method", "TrainingMethod", "TrainingContext", "SampleRequest", "Student", "per_sample_randn",
           "method_names", "get_method_class", "register_method"]
