"""Published students (``--student``), offline: fake checkpoints of every zoo entry, built from the
tiny teacher in each published format and laid out in a Hugging Face cache under the real ids
(``HF_HUB_CACHE`` a temporary folder, ``HF_HUB_OFFLINE=1``). ``bench sample --student`` must write,
for image i, the PNG the stock diffusers pipeline makes from the same files with batch 1 and
``torch.Generator("cpu").manual_seed(seed_i)``, seed_i read from metadata.json."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_lora_unet
from PIL import Image

from bench.assets.published import locate_student, read_state_dict
from bench.assets.teachers import save_teacher
from bench.assets.zoo import ZOO, parse_student_ref
from bench.cli import main
from bench.core.errors import MissingResourceError, UsageError
from bench.engine.published import published_unet, resolve_published
from bench.engine.students import save_lora_weights
from methods.lcm import build_w_conditioned_unet

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red cube", "an astronaut riding a horse on the moon, digital art", "a photo of a cat"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def snapshot(cache: Path, repo_id: str) -> Path:
    """An empty snapshot folder of ``repo_id`` in the cache layout huggingface_hub reads offline."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    folder = repo / "snapshots" / COMMIT
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def perturbed(unet, seed: int):
    """``unet`` with every weight moved a little: a student that is not its teacher."""
    unet = copy.deepcopy(unet)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, teacher):
    """A Hugging Face cache holding the tiny teacher as SD-1.5 and one fake checkpoint per zoo entry."""
    cache = tmp_path_factory.mktemp("hub")
    save_teacher(teacher, snapshot(cache, SD15) / "sd15")
    for item in (snapshot(cache, SD15) / "sd15").iterdir():
        item.rename(snapshot(cache, SD15) / item.name)
    lcm = build_w_conditioned_unet(teacher.unet, 256, seed=0)
    perturbed(lcm, 2).save_pretrained(str(snapshot(cache, "latent-consistency/lcm-sdv1-5")), safe_serialization=True)
    save_lora_weights(random_lora_unet(teacher), snapshot(cache, "latent-consistency/lcm-lora-sdv1-5"))
    for name, seed in (("dmd2-sd15", 3), ("dmd2-sd15-gan", 4)):
        path = snapshot(cache, "tianweiy/DMD2") / ZOO[name].path
        path.parent.mkdir(parents=True)
        torch.save(perturbed(teacher.unet, seed).state_dict(), path)
    pipeline = snapshot(cache, "SimianLuo/LCM_Dreamshaper_v7")
    own = copy.copy(teacher)
    own.unet = perturbed(build_w_conditioned_unet(teacher.unet, 256, seed=0), 5)
    save_teacher(own, pipeline / "p")
    for item in (pipeline / "p").iterdir():
        item.rename(pipeline / item.name)
    index = json.loads((pipeline / "model_index.json").read_text())
    index.update(_class_name="LatentConsistencyModelPipeline", safety_checker=[None, None],
                 feature_extractor=[None, None], requires_safety_checker=False)
    (pipeline / "model_index.json").write_text(json.dumps(index))
    return cache


@pytest.fixture
def offline(hub, monkeypatch, isolated_cache):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def sample(tmp_path: Path, *flags: str) -> tuple[Path, dict]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    assert main(["sample", *flags, "--prompts-file", str(prompts), "--out", str(out), "--quiet"]) == 0
    return out, json.loads((out / "metadata.json").read_text())


def pixel_differences(out: Path, metadata: dict, stock) -> np.ndarray:
    """|ours - stock| of every pixel of every image; ``stock(prompt, generator)`` is a PIL image."""
    differences = []
    for record in metadata["prompts"]:
        ours = np.asarray(Image.open(out / record["file"]).convert("RGB"), dtype=np.int16)
        theirs = np.asarray(stock(record["prompt"], torch.Generator("cpu").manual_seed(record["seed"])),
                            dtype=np.int16)
        assert ours.shape == theirs.shape
        differences.append(np.abs(ours - theirs).ravel())
    return np.concatenate(differences)


def max_pixel_difference(out: Path, metadata: dict, stock) -> int:
    """Largest |ours - stock| over every pixel of every image."""
    return int(pixel_differences(out, metadata, stock).max())


def sd15_parts(hub: Path) -> dict:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(snapshot(hub, SD15)), safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    return dict(pipe.components)


def stock(pipe, steps: int, guidance: float, **kwargs):
    from diffusers import LCMScheduler

    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return lambda prompt, generator: pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=16,
                                          width=16, generator=generator, **kwargs).images[0]


# ------------------------------------------------------------------------------------------------
# Each zoo entry == its stock pipeline
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 4])
def test_lcm_sd15_unet_at_the_repo_root_equals_latent_consistency_pipeline(offline, tmp_path, steps):
    from diffusers import LatentConsistencyModelPipeline, UNet2DConditionModel

    out, metadata = sample(tmp_path, "--student", "lcm-sd15", "--steps", str(steps))
    parts = sd15_parts(offline)
    parts["unet"] = UNet2DConditionModel.from_pretrained(str(snapshot(offline, "latent-consistency/lcm-sdv1-5")))
    pipe = LatentConsistencyModelPipeline(**parts)
    assert metadata["guidance_scale"] == 8.0 and metadata["student"] == "published"
    assert max_pixel_difference(out, metadata, stock(pipe, steps, 8.0, original_inference_steps=50)) == 0


def test_lcm_lora_sd15_equals_stable_diffusion_pipeline_with_load_lora_weights(offline, tmp_path):
    from diffusers import StableDiffusionPipeline

    out, metadata = sample(tmp_path, "--student", "lcm-lora-sd15", "--steps", "4")
    pipe = StableDiffusionPipeline(**sd15_parts(offline))
    pipe.load_lora_weights(str(snapshot(offline, "latent-consistency/lcm-lora-sdv1-5")))
    pipe.fuse_lora()      # the harness samples with the LoRA fused into the U-Net
    assert max_pixel_difference(out, metadata, stock(pipe, 4, 1.0)) == 0


def test_lcm_dreamshaper_pipeline_folder_equals_its_own_pipeline(offline, tmp_path):
    from diffusers import LatentConsistencyModelPipeline

    out, metadata = sample(tmp_path, "--student", "lcm-dreamshaper-v7", "--steps", "2")
    pipe = LatentConsistencyModelPipeline.from_pretrained(str(snapshot(offline, "SimianLuo/LCM_Dreamshaper_v7")),
                                                          safety_checker=None, local_files_only=True)
    assert max_pixel_difference(out, metadata, stock(pipe, 2, 8.0)) == 0


@pytest.mark.parametrize("name", ["dmd2-sd15", "dmd2-sd15-gan"])
def test_dmd2_state_dict_loads_as_dmd2_does_and_equals_one_lcm_step_at_999(offline, tmp_path, teacher, name):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    out, metadata = sample(tmp_path, "--student", name, "--steps", "1")
    file = snapshot(offline, "tianweiy/DMD2") / ZOO[name].path
    # tianweiy/DMD2 main/test_folder_sd.py::create_generator: the teacher's U-Net, then
    # load_state_dict(torch.load(checkpoint), strict=True)
    theirs = UNet2DConditionModel.from_pretrained(str(snapshot(offline, SD15)), subfolder="unet")
    theirs.load_state_dict(torch.load(file, map_location="cpu", weights_only=True), strict=True)
    ours = published_unet(resolve_published(name), teacher)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.state_dict().items())
    parts = sd15_parts(offline)
    parts["unet"] = theirs
    pipe = StableDiffusionPipeline(**parts)
    # One step at t = 999. DMD2 samples x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) (as we do);
    # LCMScheduler, the way DMD2's README runs the checkpoint in diffusers, adds its boundary
    # scalings, c_skip * x + c_out * x0, which are the identity there only to ~1e-8. That can move a
    # value across a rounding boundary of the uint8 image (library versions decide which; seen with
    # transformers 5.25 / accelerate 1.16): at most 1 of 255, in a handful of pixels.
    differences = pixel_differences(out, metadata, stock(pipe, 1, 1.0, timesteps=[999]))
    assert differences.max() <= 1 and np.count_nonzero(differences) <= differences.size // 1000


# ------------------------------------------------------------------------------------------------
# Local files in every format, and the errors
# ------------------------------------------------------------------------------------------------


def test_local_formats_load_the_same_weights(offline, tmp_path, teacher):
    """A UNet folder in unet/, a safetensors state dict and a LoRA folder, given as local paths."""
    from safetensors.torch import save_file

    unet = perturbed(teacher.unet, 7)
    unet.save_pretrained(str(tmp_path / "folder" / "unet"), safe_serialization=True)
    save_file(unet.state_dict(), str(tmp_path / "generator.safetensors"))
    (tmp_path / "lora").mkdir()
    save_lora_weights(random_lora_unet(teacher), tmp_path / "lora")
    expected = unet.state_dict()
    for path, fmt in ((tmp_path / "folder", "unet-folder"), (tmp_path / "generator.safetensors", "state-dict")):
        student = resolve_published(str(path), "dmd2")
        assert student.located.format == fmt
        loaded = published_unet(student, teacher).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    lora = resolve_published(str(tmp_path / "lora"), "lcm-lora")
    assert lora.located.format == "lora"
    stock_unet = random_lora_unet(teacher)
    stock_unet.fuse_lora(lora_scale=1.0)
    stock_unet.unload_lora()
    fused = published_unet(lora, teacher).state_dict()
    assert all(torch.allclose(fused[k], v, atol=1e-6) for k, v in stock_unet.state_dict().items())


@pytest.mark.parametrize("style", ["peft", "kohya"])
def test_lora_key_styles_load_as_load_lora_weights_takes_them(offline, tmp_path, teacher, style):
    """A bare LoRA file with peft keys (``unet.x.lora_A.weight``, what this tool and diffusers save)
    or kohya keys (``lora_unet_x.lora_down.weight`` + ``.alpha``) gives the same fused U-Net."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    adapter = random_lora_unet(teacher)
    peft_keys = get_peft_model_state_dict(adapter)
    if style == "peft":
        tensors = {f"unet.{k}": v.contiguous() for k, v in peft_keys.items()}
    else:
        tensors = {}
        for key, value in peft_keys.items():
            module, _, rest = key.rpartition(".lora_")
            name = "lora_unet_" + module.replace(".", "_")
            tensors[f"{name}.{'lora_down' if rest.startswith('A') else 'lora_up'}.weight"] = value.contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(8.0)     # alpha / rank = 1, as lora_alpha 8 at rank 8
    save_file(tensors, str(tmp_path / "adapter.safetensors"))
    student = resolve_published(str(tmp_path / "adapter.safetensors"), "lcm-lora")
    assert student.located.format == "lora"
    adapter.fuse_lora(lora_scale=1.0)
    adapter.unload_lora()
    fused = published_unet(student, teacher).state_dict()
    assert max(float((fused[k] - v).abs().max()) for k, v in adapter.state_dict().items()) < 1e-6


def test_the_weights_hashes_fingerprint_the_samples(offline, tmp_path, teacher):
    """Another file under the same name is another student: the identity holds each file's sha256."""
    from bench.core.fingerprint import sha256_file

    path = tmp_path / "g.safetensors"
    from safetensors.torch import save_file

    save_file(perturbed(teacher.unet, 8).state_dict(), str(path))
    first = resolve_published(str(path), "dmd2").located.identity
    assert first["files"] == {"g.safetensors": sha256_file(path)}
    save_file(perturbed(teacher.unet, 9).state_dict(), str(path))
    assert resolve_published(str(path), "dmd2").located.identity["weights"] != first["weights"]


def test_a_bin_with_code_in_its_pickle_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": Payload()}, path)
    with pytest.raises(UsageError, match="weights_only=True"):
        read_state_dict(path)


def test_missing_offline_is_one_error_with_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingResourceError) as err:
        locate_student(parse_student_ref("lcm-lora-sd15"))
    message = str(err.value)
    for part in ("latent-consistency/lcm-lora-sdv1-5", str(tmp_path / "empty"),
                 "hf download latent-consistency/lcm-lora-sdv1-5 pytorch_lora_weights.safetensors", "--student PATH"):
        assert part in message
    assert main(["sample", "--student", "lcm-lora-sd15", "--steps", "4", "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_usage_errors(offline, tmp_path):
    with pytest.raises(UsageError, match="is sampled by lcm, not --method dmd2"):
        resolve_published("lcm-sd15", "dmd2")
    with pytest.raises(UsageError, match="name the method"):
        resolve_published("some-owner/some-student")
    with pytest.raises(UsageError, match="teacher solver"):
        resolve_published(str(snapshot(offline, "latent-consistency/lcm-sdv1-5")), "ddim")
    with pytest.raises(UsageError, match="not a zoo name"):
        parse_student_ref("./no/such/folder")


def test_profile_times_a_published_student(offline, tmp_path):
    """`bench profile --student`: the zoo entry's method and teacher, beside stock diffusers."""
    out = tmp_path / "profile"
    assert main(["profile", "--student", "lcm-sd15", "--steps", "2", "--no-train", "--device", "cpu",
                 "--batches", "2", "--throughput-runs", "1", "--no-batch-search", "--out", str(out), "--quiet"]) == 0
    report = json.loads(next(out.glob("*.json")).read_text())
    rows = {(r["method"], r["pipeline"]): r for r in report["latency"] if r["dtype"] == "fp32"}
    assert set(rows) == {("lcm", "ours"), ("lcm", "diffusers")}
    assert rows["lcm", "ours"]["median_ms"] > 0 and rows["lcm", "diffusers"]["median_ms"] > 0
    assert report["teacher"]["identity"]["hub_id"] == SD15
    assert "--student lcm-sd15" in report["command"]


def test_run_scores_published_students_under_their_labels(offline, tmp_path):
    """`bench run --student A,B`: one row label per student, the published samples reused by `sample`,
    the config routed per label, the latency timed on the published weights."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "run"
    assert main(["run", "--student", "lcm-sd15,lcm-lora-sd15", "--steps", "1,2", "--prompts-file", str(prompts),
                 "--metrics", "latency", "--latency-runs", "20", "--throughput-batch", "2",
                 "--config", "lcm-sd15:original_inference_steps=25", "--out", str(out), "--quiet"]) == 0
    from bench.scoring.results import load_all

    rows = load_all(out / "results")
    assert set(zip(rows["method"], rows["steps"])) == {(m, s) for m in ("lcm-sd15", "lcm-lora-sd15") for s in (1, 2)}
    assert set(rows["student"]) == {"published"}
    metadata = json.loads(next((out / "samples").rglob("lcm-sd15/steps2-*/metadata.json")).read_text())
    assert metadata["spec"]["method_config"]["original_inference_steps"] == 25
    lora = json.loads(next((out / "samples").rglob("lcm-lora-sd15/steps2-*/metadata.json")).read_text())
    assert lora["spec"]["method_config"]["original_inference_steps"] == 50
    assert main(["run", "--student", "lcm-sd15", "--config", "dmd:seed=1", "--out", str(out)]) == 2
