"""Fault classes through the real CLI: each asserts the exit code, the one-line message and what is
on disk afterwards (README "Determinism, resume and sharding"; the kill series is
test_kill_series.py). The tiny teacher and the smoke suite keep each case to seconds."""
from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest

from bench.assets.teachers import load_teacher, save_teacher
from bench.cli import main
from bench.core.errors import BenchError
from bench.engine.sampling import LOCK_FILE, MARKER_FILE, SamplingSpec, sample_to_folder
from methods.base import Denoiser
from methods.ddim import DDIM

pytestmark = pytest.mark.usefixtures("isolated_cache", "one_thread")


def sample(out: Path, *flags: str, num_images: int = 3) -> int:
    return main(["sample", "--method", "ddim", "--steps", "2", "--teacher", "tiny", "--suite", "smoke",
                 "--num-images", str(num_images), "--out", str(out), "--quiet", *flags])


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


# ------------------------------------------------------------------------------------------------
# --out ownership
# ------------------------------------------------------------------------------------------------


def test_files_the_tool_did_not_write_are_refused_then_overwritten_on_request(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "00000.png").write_bytes(b"my own picture")
    (out / "notes.txt").write_text("keep me")
    assert sample(out) == 2
    message = last_error(capsys)
    assert f"--out {out} holds 2 file(s) this run did not write (e.g. 00000.png, notes.txt)" in message
    assert "--overwrite" in message
    assert (out / "00000.png").read_bytes() == b"my own picture" and not (out / "metadata.json").exists()
    assert sample(out, "--overwrite") == 0
    assert sorted(pngs(out)) == ["00000.png", "00001.png", "00002.png"] and not (out / "notes.txt").exists()


def test_another_process_of_another_run_is_locked_out(tmp_path, capsys):
    """A process holding the folder (its lock shared, its marker another fingerprint) stops a second
    run at once; --overwrite does not take the folder from it either."""
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER_FILE).write_text(json.dumps({"fingerprint": "other", "method": "lcm", "steps": 4, "seed": 9}))
    with open(out / LOCK_FILE, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        assert sample(out) == 2
        assert f"another process is writing {out} (a run with method lcm, steps 4, seed 9)" in last_error(capsys)
        assert sample(out, "--overwrite") == 2
        assert "--overwrite waits for it to finish" in last_error(capsys)
    assert not pngs(out)


def test_fewer_images_into_a_run_folder_then_eval_scores_the_first_n(tmp_path, capsys):
    out = tmp_path / "out"
    assert sample(out, num_images=5) == 0
    before = pngs(out)
    assert sample(out, num_images=3) == 0                     # same run: nothing new to write
    assert pngs(out) == before
    capsys.readouterr()
    assert main(["eval", "--samples", str(out), "--suite", "smoke", "--num-images", "3", "--metrics", "fid,clip",
                 "--quiet"]) == 0
    assert "scoring the first 3" in capsys.readouterr().err


def test_eval_refuses_a_folder_that_mixes_runs_unless_told(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert sample(a) == 0 and sample(b, "--seed", "1") == 0
    shutil.copy(b / "00001.png", a / "00001.png")              # an image of another run slipped in
    flags = ["eval", "--samples", str(a), "--suite", "smoke", "--num-images", "3", "--metrics", "fid", "--quiet"]
    assert main(flags) == 2
    message = last_error(capsys)
    assert f"{a} mixes images of 2 run(s)" in message and "00001.png" in message and "--foreign" in message
    assert main([*flags, "--foreign"]) == 0


def test_a_truncated_png_is_named_by_eval(tmp_path, capsys):
    out = tmp_path / "out"
    assert sample(out) == 0
    data = (out / "00002.png").read_bytes()
    (out / "00002.png").write_bytes(data[: len(data) // 2])
    assert main(["eval", "--samples", str(out), "--suite", "smoke", "--num-images", "3", "--metrics", "fid",
                 "--quiet"]) == 2
    message = last_error(capsys)
    assert f"{out / '00002.png'} is not a readable image" in message and "sample again" in message


def test_out_pointing_at_a_file_is_a_usage_error_before_any_model_loads(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert sample(target) == 2
    assert f"--out {target} is a file" in last_error(capsys)


# ------------------------------------------------------------------------------------------------
# Numbers out of range, non-finite images
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ddim", "dpmpp", "er-sde", "pndm"])
def test_a_step_count_beyond_the_schedule_is_a_usage_error_for_every_solver(tmp_path, capsys, method):
    assert main(["sample", "--method", method, "--steps", "1001", "--teacher", "tiny", "--suite", "smoke",
                 "--num-images", "1", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert f"{method}: at most 1000 steps (the teacher's schedule has 1000 timesteps)" in last_error(capsys)
    assert not (tmp_path / "o").exists() or not pngs(tmp_path / "o")


class Diverging(DDIM):
    def sample(self, denoiser, request):
        out = super().sample(denoiser, request)
        out[1] = float("nan")
        return out


def test_non_finite_images_are_not_written(tmp_path):
    teacher = load_teacher("tiny")
    method = Diverging()
    spec = SamplingSpec(method="ddim", method_config={}, student="teacher", teacher=teacher.identity,
                        resolution=teacher.resolution, steps=2, guidance_scale=3.0, seed=0)
    with pytest.raises(BenchError, match=r"non-finite values in image\(s\) 1 \(nothing of this batch was written\)"):
        sample_to_folder(teacher, Denoiser(teacher.unet, teacher.schedule), method, ["a", "b", "c"], spec,
                         tmp_path / "o", batch_size=3, progress=False)
    assert not pngs(tmp_path / "o") and not (tmp_path / "o" / "metadata.json").exists()


# ------------------------------------------------------------------------------------------------
# Broken inputs, interruptions, disk full
# ------------------------------------------------------------------------------------------------


def test_a_broken_teacher_config_is_named(tmp_path, capsys):
    folder = tmp_path / "teacher"
    save_teacher(load_teacher("tiny"), folder)
    (folder / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel", ')
    assert main(["sample", "--method", "ddim", "--steps", "2", "--teacher-path", str(folder), "--suite", "smoke",
                 "--num-images", "1", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert f"{folder / 'unet' / 'config.json'} is not a readable JSON config" in last_error(capsys)


@pytest.mark.parametrize("command, says", [
    (["train", "--method", "lcm"], "training resumes from its last checkpoint"),
    (["sample", "--method", "ddim", "--steps", "1", "--out", "x"], "finished images are kept"),
    (["eval", "--samples", "x", "--suite", "smoke"], "nothing was written"),
])
def test_ctrl_c_says_what_each_command_keeps(monkeypatch, capsys, command, says):
    import bench.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.cli, "_dispatch", interrupted)
    assert main(command) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"interrupted: {bench.cli.INTERRUPTED[command[0]]}" and says in err


def _tmpfs(path: Path, size: str) -> bool:
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_disk_full_during_run_stops_cleanly_and_resumes(tmp_path, capsys):
    """`bench run` into a 1 MiB tmpfs that a filler file leaves almost full: exit 1 with one line
    naming the file and the fix, no temp or half-written file left; with the filler gone the same
    command finishes with the rows and images of a run that had room."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN); the disk-full case is not exercised")
    try:
        flags = ["run", "--methods", "ddim", "--steps", "1,2,4", "--teacher", "tiny", "--suite", "smoke",
                 "--metrics", "fid", "--quiet"]
        assert main([*flags, "--out", str(tmp_path / "roomy")]) == 0
        filler = disk / "filler"
        with open(filler, "wb") as handle:
            try:
                handle.write(b"\0" * (1 << 20))
            except OSError:
                pass
        filler.write_bytes(b"\0" * (filler.stat().st_size - 12_000))   # about 12 KB left: a few PNGs fit
        capsys.readouterr()
        assert main([*flags, "--out", str(disk / "runs")]) == 1
        message = last_error(capsys)
        assert message.startswith("error: no space left on the device writing ")
        assert "run the same command again" in message
        leftovers = [p for p in (disk / "runs").rglob(".*.tmp")]
        assert not leftovers
        for png in (disk / "runs").rglob("*.png"):
            assert png.read_bytes() == (tmp_path / "roomy" / png.relative_to(disk / "runs")).read_bytes()
        filler.unlink()
        assert main([*flags, "--out", str(disk / "runs")]) == 0
        for png in (tmp_path / "roomy").rglob("*.png"):
            assert (disk / "runs" / png.relative_to(tmp_path / "roomy")).read_bytes() == png.read_bytes()
    finally:
        import subprocess

        subprocess.run(["umount", str(disk)], capture_output=True)
