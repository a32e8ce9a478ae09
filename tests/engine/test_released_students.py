"""Released students (bench.assets.released, bench.engine.students.load_student, bench.engine.toy_students): released
first, then the cache, then training; hash-checked; float16; LoRA students as LoRA weights only;
the plumbing schedule of the tiny teacher; the committed toy students match the current recipes."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from pathlib import Path

import pytest
import torch
from conftest import with_toy
from safetensors import safe_open

from bench.assets.released import (
    ReleasedStudentError,
    ReleasedStudents,
    default_released_dir,
)
from bench.assets.train_data import training_data_for
from bench.core.errors import MissingResourceError
from bench.core.machine import cpu_info, machine_record
from bench.engine import students
from methods.lcm import LCM, LCMConfig, LCMLoRA, LCMLoRAConfig

pytestmark = pytest.mark.usefixtures("one_thread", "isolated_cache")

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "training_hashes.json"


def small(cls, config_cls, **fields):
    return cls(with_toy(config_cls, dict(train_batch_size=2, checkpointing_steps=0), **fields))


def output_of(unet, teacher) -> torch.Tensor:
    x = torch.randn(1, *teacher.latent_shape, generator=torch.Generator().manual_seed(3))
    kwargs = {}
    if getattr(unet.config, "time_cond_proj_dim", None):
        kwargs["timestep_cond"] = torch.zeros(1, unet.config.time_cond_proj_dim)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=teacher.encode_prompts(["a"]), **kwargs).sample


def release(loaded, root: Path) -> ReleasedStudents:
    store = ReleasedStudents(root)
    students.release_student(loaded, store)
    return store


# ------------------------------------------------------------------------------------------------
# The plumbing schedule of the tiny teacher
# ------------------------------------------------------------------------------------------------


def test_tiny_trains_on_a_plumbing_schedule_recorded_in_the_fingerprint(teacher):
    from methods import get_method_class, method_names

    toy_scaled = dataclasses.replace(teacher, training_scale="toy")
    data = training_data_for(teacher)
    for name in method_names():
        cls = get_method_class(name)
        if not cls.trains:
            continue
        method, schedule = students.training_plan(cls(), teacher, steps=4)
        toy_method, toy_schedule = students.training_plan(cls(), toy_scaled, steps=4)
        assert schedule.max_train_steps == 10 < toy_schedule.max_train_steps, name
        assert students.student_fingerprint(method, teacher, schedule, data, 4) != students.student_fingerprint(
            toy_method, teacher, toy_schedule, data, 4), name
        if hasattr(method.config, "num_regression_pairs"):
            assert method.config.num_regression_pairs == 8 < toy_method.config.num_regression_pairs
    # an explicit step count wins over the cap
    assert students.training_plan(LCM(), teacher, max_train_steps=25)[1].max_train_steps == 25


# ------------------------------------------------------------------------------------------------
# Released, then cached, then trained
# ------------------------------------------------------------------------------------------------


def test_released_student_is_float16_hash_checked_and_loaded_first(teacher, tmp_path, monkeypatch):
    method = small(LCM, LCMConfig)
    trained = students.load_student(method, teacher, steps=2, max_train_steps=2, progress=False)
    assert trained.source == "trained" and trained.row_label == "trained"
    store = release(trained, tmp_path / "released")
    record = store.records()["lcm"]
    assert record["fingerprint"] == trained.fingerprint and record["kind"] == "unet"
    assert record["sha256"] == hashlib.sha256((tmp_path / "released" / "lcm.safetensors").read_bytes()).hexdigest()
    assert record["training"]["trained_steps"] == 2 and record["training"]["torch_threads"] == 1
    assert record["machine"]["cpu_count"] and record["versions"]["torch"] == torch.__version__.split("+")[0]
    # the machine type a training hash holds for (see _machine_key), not just "x86_64"
    assert record["machine"]["cpu_vendor"] == cpu_info("vendor_id")
    assert record["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    with safe_open(str(tmp_path / "released" / "lcm.safetensors"), framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}

    monkeypatch.setattr(LCM, "train", lambda *a, **k: pytest.fail("trained although a released student exists"))
    policy = students.StudentPolicy(released=store)
    released = students.load_student(method, teacher, steps=4, max_train_steps=2, progress=False, policy=policy)
    assert released.source == "released" and released.fingerprint == trained.fingerprint
    assert released.identity != trained.identity                      # never share a sample folder or a row
    cached = {k: v.half().float() for k, v in trained.denoiser.unet.state_dict().items()}
    assert all(torch.equal(cached[k], v) for k, v in released.denoiser.unet.state_dict().items())
    # --student-source trained skips the released one
    again = students.load_student(method, teacher, steps=4, max_train_steps=2, progress=False,
                                  policy=students.StudentPolicy(source="trained", released=store))
    assert again.source == "trained" and again.path == trained.path
    # `bench train --out DIR` writes a released student as a student folder the loaders read
    out = students.export_student(released, tmp_path / "export")
    exported = students.load_student_unet(out, teacher).state_dict()
    assert all(torch.equal(exported[k], v) for k, v in released.denoiser.unet.state_dict().items())


def test_lora_student_is_released_as_its_lora_weights_only(teacher, tmp_path):
    method = small(LCMLoRA, LCMLoRAConfig, lora_rank=4, lora_alpha=4.0)
    trained = students.load_student(method, teacher, steps=2, max_train_steps=2, progress=False)
    store = release(trained, tmp_path / "released")
    path = tmp_path / "released" / "lcm-lora.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
        assert {handle.get_tensor(k).dtype for k in keys} == {torch.float16}
    teacher_params = sum(p.numel() for p in teacher.unet.parameters())
    with safe_open(str(path), framework="pt") as handle:
        assert sum(handle.get_tensor(k).numel() for k in keys) < teacher_params
    released = students.load_student(method, teacher, steps=2, max_train_steps=2, progress=False,
                                     policy=students.StudentPolicy(released=store))
    assert released.source == "released"
    # the fused U-Net of the float16 LoRA weights is the trained one up to float16 rounding
    ours, reference = output_of(released.denoiser.unet, teacher), output_of(trained.denoiser.unet, teacher)
    assert not torch.equal(ours, output_of(teacher.unet, teacher))
    assert torch.allclose(ours, reference, atol=2e-3, rtol=0)


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_released_student_stops_with_the_rebuild_command(teacher, tmp_path, monkeypatch, damage):
    method = small(LCM, LCMConfig)
    trained = students.load_student(method, teacher, steps=2, max_train_steps=2, progress=False)
    store = release(trained, tmp_path / "released")
    path = tmp_path / "released" / "lcm.safetensors"
    if damage == "corrupt":       # same size, 4 KB of the middle overwritten
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 4096] = bytes(4096)
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    monkeypatch.setattr(LCM, "train", lambda *a, **k: pytest.fail("fell back to training silently"))
    with pytest.raises(ReleasedStudentError) as error:
        students.load_student(method, teacher, steps=2, max_train_steps=2, progress=False,
                              policy=students.StudentPolicy(released=store))
    message = str(error.value)
    assert str(path) in message and "python -m bench toy train --what students --students lcm" in message
    assert ("corrupted" if damage == "corrupt" else "missing") in message and "--student-source trained" in message


def test_the_cli_reports_a_damaged_released_toy_student_in_one_line(tmp_path, monkeypatch, capsys):
    """`bench sample` on the toy world with a corrupted copy of the committed released lcm: exit 1,
    one line naming the file and the rebuild command, no image written."""
    import shutil

    from bench.cli import main

    root = tmp_path / "released"
    shutil.copytree(default_released_dir(), root)
    with open(root / "lcm.safetensors", "r+b") as handle:
        handle.seek(4096)
        handle.write(bytes(4096))
    monkeypatch.setattr("bench.assets.released.default_released_dir", lambda: root)
    out = tmp_path / "samples"
    code = main(["sample", "--method", "lcm", "--steps", "1", "--num-images", "2", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "lcm.safetensors" in err[0] and "python -m bench toy train --what students --students lcm" in err[0]
    assert not out.exists() or not list(out.glob("*.png"))


def test_released_only_fails_when_no_released_student_matches(teacher, tmp_path):
    method = small(LCM, LCMConfig)
    with pytest.raises(MissingResourceError, match="no released student of lcm"):
        students.load_student(method, teacher, steps=2, max_train_steps=2, progress=False,
                              policy=students.StudentPolicy(source="released", released=ReleasedStudents(tmp_path)))


def test_retrain_trains_anew_once_per_command(teacher, tmp_path, monkeypatch):
    method = small(LCM, LCMConfig)
    first = students.load_student(method, teacher, steps=2, max_train_steps=2, progress=False)
    store = release(first, tmp_path / "released")
    calls = []
    real_train = LCM.train
    monkeypatch.setattr(LCM, "train", lambda self, *a, **k: calls.append(1) or real_train(self, *a, **k))
    policy = students.StudentPolicy(retrain=True, released=store)
    retrained = students.load_student(method, teacher, steps=2, max_train_steps=2, progress=False, policy=policy)
    assert calls == [1] and retrained.source == "trained" and retrained.path == first.path
    # the same command's next cell (another step count) uses the student it just trained
    assert students.load_student(method, teacher, steps=4, max_train_steps=2, progress=False,
                                 policy=policy).path == first.path and calls == [1]
    # CPU training from the same seed at the same thread count is bit-reproducible: same weights
    assert retrained.weights == first.weights


def test_student_policy_rejects_retrain_with_released_only():
    from bench.core.errors import UsageError

    with pytest.raises(UsageError, match="--retrain"):
        students.StudentPolicy(source="released", retrain=True)


# ------------------------------------------------------------------------------------------------
# The committed toy students
# ------------------------------------------------------------------------------------------------


def test_the_committed_toy_students_match_the_current_recipes():
    """Every registered distillation method (mcm: S = 1, 2, 4, 8) has a released toy student whose
    file hashes as recorded and whose fingerprint is the one the current code trains under: a change
    to a default config, a toy schedule or the teacher fails here until the students are rebuilt."""
    from bench.engine.toy_students import released_plan, verify_students

    names = [p.name for p in released_plan()]
    assert {"lcm", "lcm-lora", "scott", "splam", "dmd", "dmd2", "mcm-s1", "mcm-s2", "mcm-s4", "mcm-s8"} <= set(names)
    lines = verify_students()
    assert len(lines) == len(names) and all(": ok (" in line for line in lines)
    total = sum(record["bytes"] for record in ReleasedStudents().records().values())
    assert total < 25 * 2**20


def _machine_key() -> str:
    """The machine type a training hash holds for. The CPU vendor is part of it: an Intel Xeon and an
    AMD EPYC, both AVX512 under the same torch, give different hashes (tests/golden/training_hashes.json)."""
    machine = machine_record()        # what the training records say, so that the two name the same type
    vendor = machine["cpu_vendor"] or platform.processor() or "unknown-vendor"
    return (f"{platform.machine()}-{vendor}-torch{torch.__version__}-{machine['cpu_capability']}"
            f"-threads{machine['torch_threads']}")


def _state_sha256(unet) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(unet.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_training_a_toy_student_reproduces_its_recorded_hash():
    """The honest training check: lcm on the toy teacher, 3 steps from seed 0 at one thread, hashed;
    equal to the hash recorded for this machine type (CPU vendor, torch version, CPU capability, threads),
    which is how the released students were trained. Another machine type has no recorded hash."""
    from bench.assets.teachers.built import load_toy_teacher

    teacher = load_toy_teacher()
    loaded = students.load_student(LCM(), teacher, steps=1, max_train_steps=3, progress=False,
                                   policy=students.StudentPolicy(source="trained"))
    assert loaded.info["trained_steps"] == 3
    recorded = json.loads(GOLDEN.read_text())["lcm-toy-3-steps"]
    key = _machine_key()
    if key not in recorded:
        pytest.skip(f"no recorded training hash for {key}; recorded: {', '.join(recorded)}")
    cpu = f"{cpu_info('model name')}, family {cpu_info('cpu family')} model {cpu_info('model')}"
    assert _state_sha256(loaded.denoiser.unet) == recorded[key], (
        f"lcm's 3 toy training steps no longer hash to the value recorded for {key} ({cpu}): either a change "
        "moved training, or this CPU model trains differently from the recorded one of the same vendor and "
        "capability (then add the CPU model to _machine_key and record a hash per model)")


def test_run_rows_record_their_student_and_released_only_fails_fast(tmp_path, capsys):
    """`bench run` on the tiny teacher: lcm trains on the plumbing schedule and its rows say
    "trained"; the teacher solver's say nothing; `--student-source released` stops with exit 1
    before sampling when no released student matches."""
    from bench.cli import main
    from bench.scoring.results import load_all

    common = ["--teacher", "tiny", "--suite", "smoke", "--num-images", "2", "--metrics", "fid", "--quiet"]
    assert main(["run", "--methods", "ddim,lcm", "--steps", "1", "--out", str(tmp_path / "a"), *common]) == 0
    frame = load_all(tmp_path / "a" / "results")
    assert dict(zip(frame["method"], frame["student"])) == {"ddim": "", "lcm": "trained"}
    meta = json.loads(next((tmp_path / "a" / "samples").rglob("lcm/*/metadata.json")).read_text())
    assert meta["student"] == "trained" and meta["spec"]["student"].startswith("trained:")
    capsys.readouterr()
    code = main(["run", "--methods", "lcm", "--steps", "1", "--student-source", "released",
                 "--out", str(tmp_path / "b"), *common])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "no released student of lcm for teacher tiny (the one in" in err[0]
    assert not list((tmp_path / "b").rglob("*.png"))


def test_a_damaged_cached_student_is_an_error_not_black_images(teacher, tmp_path, capsys):
    """4 KB overwritten in the middle of a cached student's weights, size kept: the next load names
    the folder and the fix; `bench train --max-train-steps 0` and a repeated step count are usage
    errors (exit 2), before anything is trained or sampled."""
    from bench.cli import main
    from bench.core.errors import BenchError

    method = small(LCM, LCMConfig)
    trained = students.load_student(method, teacher, steps=2, max_train_steps=2, progress=False)
    weights = next(trained.path.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = bytes(4096)
    weights.write_bytes(bytes(data))
    with pytest.raises(BenchError, match=rf"cached student {trained.path} is damaged: .* delete the folder"):
        students.load_student(method, teacher, steps=2, max_train_steps=2, progress=False)
    common = ["--teacher", "tiny", "--quiet"]
    assert main(["train", "--method", "lcm", "--max-train-steps", "0", *common]) == 2
    assert "--max-train-steps must be >= 1" in capsys.readouterr().err
    assert main(["run", "--methods", "ddim", "--steps", "1,1", "--suite", "smoke", "--out", str(tmp_path / "r"),
                 *common]) == 2
    assert "lists a value twice" in capsys.readouterr().err and not (tmp_path / "r").exists()
