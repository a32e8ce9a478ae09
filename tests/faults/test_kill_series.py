"""SIGKILL at seeded random moments of `sample`, `train`, `eval` and `run` (the real CLI in a
subprocess), each followed by the same command run to the end: its outputs must be bit-identical
to those of an uninterrupted run (PNG bytes, the student's weight hashes, result values). Slow
(minutes): `pytest -m slow tests/faults`, run by CI."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = ["--teacher", "tiny", "--quiet"]
COMMANDS = {
    "sample": ["sample", "--method", "er-sde", "--steps", "4", "--suite", "smoke", "--batch-size", "1", *TINY],
    "train": ["train", "--method", "lcm-lora", "--max-train-steps", "10", "--config", "checkpointing_steps=2", *TINY],
    "run": ["run", "--methods", "ddim,lcm", "--steps", "1,2", "--suite", "smoke", "--metrics", "fid,clip", *TINY],
}
KILLS = {"sample": 6, "train": 6, "eval": 4, "run": 6}


def env(cache: Path) -> dict:
    return {**os.environ, "BENCH_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def command(name: str, out: Path) -> list[str]:
    if name == "eval":
        return ["eval", "--samples", str(out / "samples"), "--suite", "smoke", "--metrics", "fid,clip,coverage",
                "--results", str(out / "results"), "--quiet"]
    flag = [] if name == "train" else ["--out", str(out / name)]
    return [*COMMANDS[name], *flag]


def launch(args: list[str], cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, env=env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outputs(name: str, out: Path, cache: Path) -> dict:
    """What a finished command leaves: every PNG's bytes, the student's record, result values."""
    found: dict = {}
    for png in sorted(out.rglob("*.png")):
        found[str(png.relative_to(out))] = png.read_bytes()
    for record in sorted((cache / "students").glob("*/student.json")):
        info = json.loads(record.read_text())
        found[f"student:{info['method']}"] = (info["weights_sha256"], info["trained_steps"], info["final_loss"])
    # result values: a resumed run copies the rows its killed attempts recorded into its own run file
    # (reuse by fingerprint), so the cells are compared as a set; within one run file a cell is
    # never recorded twice
    for results in sorted(out.rglob("results/*.jsonl")):
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        cells = [(r["method"], r["steps"], r["metric"]) for r in rows]
        assert len(cells) == len(set(cells)), f"a cell recorded twice in {results}"
        found.setdefault("rows", set()).update((r["method"], r["steps"], r["metric"], r["value"]) for r in rows)
    return found


def prepare(name: str, out: Path, cache: Path) -> None:
    """eval needs a samples folder first (not killed: only eval is)."""
    if name == "eval":
        args = ["sample", "--method", "ddim", "--steps", "2", "--suite", "smoke", "--out", str(out / "samples"),
                *TINY]
        assert subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=env(cache),
                              capture_output=True).returncode == 0


@pytest.mark.parametrize("name", list(KILLS))
def test_kill_9_at_random_moments_then_resume_is_bit_identical(tmp_path, name):
    rng = random.Random(f"kill-series:{name}{os.environ.get('KILL_SERIES_SEED', '')}")
    reference_out, reference_cache = tmp_path / "reference", tmp_path / "reference-cache"
    prepare(name, reference_out, reference_cache)
    started = time.monotonic()
    done = launch(command(name, reference_out), reference_cache)
    _, err = done.communicate(timeout=600)
    assert done.returncode == 0, err
    duration = time.monotonic() - started
    expected = outputs(name, reference_out, reference_cache)

    out, cache = tmp_path / "killed", tmp_path / "killed-cache"
    prepare(name, out, cache)
    survived = 0
    for _ in range(KILLS[name]):
        proc = launch(command(name, out), cache)
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            survived += 1
        proc.communicate(timeout=600)
    finish = launch(command(name, out), cache)
    _, err = finish.communicate(timeout=600)
    assert finish.returncode == 0, err
    assert survived >= KILLS[name] // 2, f"only {survived} of the kills landed while {name} was running"
    assert outputs(name, out, cache) == expected
    assert not [p for p in out.rglob("*.tmp")] and not [p for p in cache.rglob(".*.tmp")]
    print(f"{name}: {survived} SIGKILLs survived, outputs bit-identical")
    shutil.rmtree(tmp_path, ignore_errors=True)
