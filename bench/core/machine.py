"""The machine a checkpoint was trained on or a latency was measured on, as records state it.

CPU training is bit-reproducible only on the same machine type, library versions and thread count,
and the machine type is more than ``platform.machine()``: an AMD EPYC and an Intel Xeon, both
AVX512 under the same torch, train the same toy student to different weights. So a record names
the CPU's model, vendor and the instruction set torch dispatches to."""
from __future__ import annotations

import os
import platform
from typing import Any

import torch


def cpu_info(field: str) -> str:
    """A field of the first processor in /proc/cpuinfo ("vendor_id", "model name", ...); "" where
    there is none (another OS, or a field this CPU does not report)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 7B13 64-Core Processor"), or the best the platform says."""
    return cpu_info("model name") or platform.processor() or platform.machine() or "unknown cpu"


def machine_record() -> dict[str, Any]:
    """What a training record says about the machine."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu": cpu_name(), "cpu_vendor": cpu_info("vendor_id"),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


__all__ = ["cpu_info", "cpu_name", "machine_record"]
