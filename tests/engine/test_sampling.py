"""The sampling engine: per-image determinism, resume after SIGKILL, sharding, CLI errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from bench.cli import main
from bench.engine.sampling import image_seed

REPO = Path(__file__).resolve().parents[2]


def _sample(out: Path, *extra: str, method: str = "ddim", steps: int = 2, num_images: int = 5) -> int:
    return main(["sample", "--method", method, "--steps", str(steps), "--teacher", "tiny", "--suite", "smoke",
                 "--num-images", str(num_images), "--out", str(out), "--quiet", *extra])


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_image_seed_depends_only_on_seed_and_index():
    seeds = {image_seed(s, i) for s in range(3) for i in range(50)}
    assert len(seeds) == 150  # seeds s and s+1 share no images
    assert image_seed(0, 7) == image_seed(0, 7)
    assert 0 <= image_seed(123, 4) < 2**63


@pytest.mark.parametrize("method,config", [("ddim", None), ("er-sde", None), ("ddim", "eta=0.7")])
def test_identical_png_bytes_whatever_batch_size(tmp_path, method, config):
    extra = ["--config", config] if config else []
    assert _sample(tmp_path / "b1", "--batch-size", "1", *extra, method=method) == 0
    assert _sample(tmp_path / "b3", "--batch-size", "3", *extra, method=method) == 0
    one, three = _pngs(tmp_path / "b1"), _pngs(tmp_path / "b3")
    assert list(one) == [f"{i:05d}.png" for i in range(5)]
    assert one == three


def test_writes_exactly_n_pngs_and_metadata(tmp_path):
    assert _sample(tmp_path, num_images=4) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    # and the two hidden files of folder ownership (bench.engine.sampling.owned_folder)
    assert names == [".bench-samples.json", ".bench-samples.lock", "00000.png", "00001.png", "00002.png",
                     "00003.png", "metadata.json"]
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert json.loads((tmp_path / ".bench-samples.json").read_text())["fingerprint"] == meta["image_fingerprint"]
    assert meta["num_images"] == 4 and meta["method"] == "ddim" and meta["steps"] == 2
    assert [p["index"] for p in meta["prompts"]] == [0, 1, 2, 3]
    assert meta["prompts"][2]["seed"] == image_seed(0, 2)
    with Image.open(tmp_path / "00002.png") as image:
        assert image.size == (16, 16)
        assert image.text["bench_fingerprint"] == meta["image_fingerprint"]
        assert image.text["bench_prompt"] == meta["prompts"][2]["prompt"]


def test_png_writer_overlaps_writes_and_raises_a_failed_write(tmp_path, monkeypatch):
    """PNGs are written on a background thread (bench.engine.sampling.PngWriter): the bytes equal
    those written in line, and a write that fails (disk full on the second batch) is the command's
    error, with the first batch on disk, no temp file left, and a resume that completes the folder."""
    import errno
    import threading

    from bench.engine import sampling

    written_on: set[str] = set()
    original = sampling.write_pngs

    def write_off_the_main_thread(out_dir, spec_fp, seed, indices, *rest):
        written_on.add(threading.current_thread().name)
        if indices[0] == 2 and not (tmp_path / "failed-once").exists():
            (tmp_path / "failed-once").touch()
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(out_dir, spec_fp, seed, indices, *rest)

    assert _sample(tmp_path / "inline", "--batch-size", "2") == 0
    monkeypatch.setattr(sampling, "write_pngs", write_off_the_main_thread)
    assert _sample(tmp_path / "threaded", "--batch-size", "2") == 1           # the ENOSPC of batch [2, 3]
    assert written_on and all(name.startswith("png-writer") for name in written_on)
    names = sorted(p.name for p in (tmp_path / "threaded").iterdir() if not p.name.startswith(".bench"))
    assert names[:2] == ["00000.png", "00001.png"] and "00002.png" not in names and "metadata.json" not in names
    assert not any(".tmp" in name for name in names)
    assert _sample(tmp_path / "threaded", "--batch-size", "2") == 0            # resume redoes the rest
    assert _pngs(tmp_path / "threaded") == _pngs(tmp_path / "inline")


def test_resume_skips_matching_and_redoes_mismatched(tmp_path, capsys):
    assert _sample(tmp_path, num_images=4) == 0
    before = _pngs(tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")}
    (tmp_path / "00001.png").write_bytes(before["00001.png"][:40])  # a truncated file
    capsys.readouterr()
    assert _sample(tmp_path, num_images=4) == 0
    assert "1 written, 3 already done" in capsys.readouterr().out
    assert _pngs(tmp_path) == before
    assert all(tmp_path.joinpath(n).stat().st_mtime_ns == m for n, m in mtimes.items() if n != "00001.png")
    # another seed into the same folder: refused (the folder belongs to seed 0), nothing touched;
    # --overwrite empties it and redoes everything
    assert _sample(tmp_path, "--seed", "1", num_images=4) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path} holds the images of another run (method ddim, steps 2" in err and "--overwrite" in err
    assert _pngs(tmp_path) == before
    assert _sample(tmp_path, "--seed", "1", "--overwrite", num_images=4) == 0
    assert "4 written, 0 already done" in capsys.readouterr().out
    assert _pngs(tmp_path) != before


def test_kill_9_then_resume_gives_the_uninterrupted_images(tmp_path):
    reference = tmp_path / "reference"
    assert _sample(reference, "--batch-size", "4", method="er-sde", num_images=8, steps=4) == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bench", "sample", "--method", "er-sde", "--steps", "4", "--teacher", "tiny",
           "--suite", "smoke", "--num-images", "8", "--batch-size", "1", "--out", str(killed), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.glob("*.png"))) < 3:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(killed.glob("*.png")))
    assert 3 <= done_before < 8, "the run should have been killed part-way"
    assert not (killed / "metadata.json").exists()

    assert subprocess.run(cmd, cwd=REPO, capture_output=True).returncode == 0
    assert _pngs(killed) == _pngs(reference)
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_accelerate_two_processes_give_the_same_images(tmp_path):
    single = tmp_path / "single"
    assert _sample(single, num_images=6) == 0
    sharded = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "bench", "sample", "--method", "ddim", "--steps", "2", "--teacher", "tiny", "--suite", "smoke",
           "--num-images", "6", "--out", str(sharded), "--quiet"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _pngs(sharded) == _pngs(single)
    assert json.loads((sharded / "metadata.json").read_text())["num_images"] == 6


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["--method", "nope", "--steps", "2", "--teacher", "tiny"], "unknown method 'nope'"),
    (["--method", "ddim", "--steps", "2", "--teacher", "nope"], "nope"),
    (["--method", "ddim", "--steps", "2", "--teacher", "tiny", "--suite", "nope"], "nope"),
    (["--method", "ddim", "--steps", "0", "--teacher", "tiny"], "step count must be >= 1"),
    (["--method", "ddim", "--steps", "2", "--teacher", "tiny", "--config", "etaa=1"], "has no field 'etaa'"),
    (["--method", "ddim", "--steps", "2", "--teacher", "tiny", "--batch-size", "0"], "--batch-size"),
    (["--method", "ddim", "--steps", "two", "--teacher", "tiny"], "--steps"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) if "two" in args else _no_raise() as raised:
        code = main(["sample", "--out", str(tmp_path / "out"), "--num-images", "2", "--quiet", *args])
    code = raised.value.code if "two" in args else code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    assert not any((tmp_path / "out").glob("*.png"))


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_missing_weights_offline_fail_fast_and_write_nothing(tmp_path):
    start = time.time()
    result = _cli("sample", "--method", "ddim", "--steps", "1", "--teacher", "sd15", "--suite", "smoke",
                  "--out", str(tmp_path / "out"),
                  env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "stable-diffusion-v1-5" in lines[0] and "--teacher-path" in lines[0], lines
    assert time.time() - start < 60
    assert not (tmp_path / "out").exists()
    assert not any((tmp_path / "hf").rglob("*.safetensors"))


def test_run_samples_every_method_and_step_count(tmp_path, capsys):
    code = main(["run", "--methods", "ddim,dpmpp", "--steps", "1,2", "--teacher", "tiny", "--suite", "smoke",
                 "--num-images", "2", "--out", str(tmp_path), "--quiet", "--metrics", "fid"])
    assert code == 0
    out = capsys.readouterr().out
    for method in ("ddim", "dpmpp"):
        for steps in (1, 2):
            folder = tmp_path / "samples" / "smoke" / "tiny" / method / f"steps{steps}-g3-seed0"
            assert len(list(folder.glob("*.png"))) == 2, out


def test_run_skips_unsupported_step_counts_with_a_note_and_goes_on(tmp_path, capsys):
    from methods.ddim import DDIM
    from methods.registry import REGISTRY

    class OneStepDDIM(DDIM):  # stands in for a one-step method such as DMD
        supported_steps = (1,)

    with REGISTRY.temporarily("one-step-ddim", OneStepDDIM):
        code = main(["run", "--methods", "one-step-ddim,ddim", "--steps", "1,2", "--teacher", "tiny", "--suite",
                     "smoke", "--num-images", "2", "--out", str(tmp_path), "--quiet", "--metrics", "fid"])
    assert code == 0
    captured = capsys.readouterr()
    assert "one-step-ddim supports 1 step(s) only; 2 skipped" in captured.out
    root = tmp_path / "samples" / "smoke" / "tiny"
    assert len(list((root / "one-step-ddim" / "steps1-g3-seed0").glob("*.png"))) == 2
    assert not (root / "one-step-ddim" / "steps2-g3-seed0").exists()
    assert len(list((root / "ddim" / "steps2-g3-seed0").glob("*.png"))) == 2
