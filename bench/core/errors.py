"""Errors the CLI turns into one clear line and an exit code (2: usage, 1: runtime failure)."""
from __future__ import annotations


class BenchError(Exception):
    """A failure the user can act on; the message names the problem and the fix."""

    exit_code = 1


class UsageError(BenchError):
    """Bad input on the command line or in a file the user pointed at (exit code 2)."""

    exit_code = 2


class MissingResourceError(BenchError):
    """Weights, data or a checkpoint that is not available offline (exit code 1)."""

    exit_code = 1
