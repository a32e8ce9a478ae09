"""What a command uses when a flag is left out."""
from __future__ import annotations

#: the embedded default world: the toy teacher and suite run offline on a CPU (README, "The toy world")
DEFAULT_TEACHER = "toy"
DEFAULT_SUITE = "toy"

__all__ = ["DEFAULT_TEACHER", "DEFAULT_SUITE"]
