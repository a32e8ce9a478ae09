"""Teachers and the offline CLIP tokenizer: parity with open_clip, the config-built teachers, the
diffusers-folder round trip, and the offline failure paths (fast, one clear error, nothing written)."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from bench.assets.teachers import load_teacher, save_teacher
from bench.assets.teachers.built import read_teacher_configs
from bench.assets.teachers.model import TEACHER_SPECS, IdentityCodec, Teacher, VaeCodec, teacher_names
from bench.assets.tokenizer import BOS_ID, EOS_ID, build_clip_tokenizer
from bench.core.errors import MissingResourceError, UsageError
from methods.diffusion_math import SD15_SCHEDULER_CONFIG

SD15_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@pytest.fixture(scope="module", autouse=True)
def _isolated_env(tmp_path_factory):
    """Tool cache in a temp folder; no teacher path or HF settings leaking in from the shell."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.mktemp("bench-cache")))
        for var in ("BENCH_TEACHER_PATH", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT",
                    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "BENCH_HUB_TIMEOUT"):
            mp.delenv(var, raising=False)
        yield


@pytest.fixture(scope="module")
def tiny() -> Teacher:
    return load_teacher("tiny")


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory) -> Path:
    return save_teacher(tiny, tmp_path_factory.mktemp("saved") / "tiny-teacher")


def _empty_hf_home(monkeypatch, tmp_path) -> Path:
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    return home


def _files_under(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*")] if folder.exists() else []


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------

PROMPTS = [
    "a photo of a cat",
    "  A  PHOTO of\tthe   Eiffel Tower!!  ",
    "café naïve façade 123,456.78",
    "it's a dog's life, isn't it? you'll see; we'd've",
    "emoji 🐱🚀 and 日本語 text",
    "an astronaut riding a horse on mars, trending on artstation, 4k",
    "",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokenizer_matches_open_clip(prompt):
    from open_clip import tokenize

    ours = build_clip_tokenizer()(prompt, padding="max_length", truncation=True, max_length=77).input_ids
    reference = tokenize([prompt])[0].tolist()  # open_clip pads with 0 after the end token
    end = reference.index(EOS_ID) + 1
    assert len(ours) == 77
    assert ours[:end] == reference[:end]
    assert ours[end:] == [EOS_ID] * (77 - end)  # SD pads with <|endoftext|>


def test_tokenizer_matches_simple_tokenizer_and_truncates():
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = build_clip_tokenizer()
    simple = SimpleTokenizer()
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (BOS_ID, EOS_ID, EOS_ID)
    assert tokenizer.model_max_length == 77 and len(tokenizer) == 49408
    for prompt in PROMPTS:
        assert tokenizer(prompt, add_special_tokens=False).input_ids == simple.encode(prompt)
    long = " ".join(f"word{i} and more" for i in range(60))
    ids = tokenizer(long, padding="max_length", truncation=True, max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert ids[1:76] == simple.encode(long)[:75]
    from open_clip import tokenize

    assert ids == tokenize([long])[0].tolist()


# ------------------------------------------------------------------------------------------------
# Config-built teachers
# ------------------------------------------------------------------------------------------------


def test_tiny_teacher_builds_fast_and_frozen(tiny):
    start = time.perf_counter()
    again = load_teacher("tiny")
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"tiny teacher took {elapsed:.2f} s"
    assert again.latent_shape == (4, 8, 8) and again.resolution == 16
    assert again.default_guidance_scale == 3.0
    assert again.scheduler_config == SD15_SCHEDULER_CONFIG
    assert torch.equal(again.schedule.alphas_cumprod, again.schedule.sd15().alphas_cumprod)
    for module in (again.unet, again.text_encoder, again.codec.vae):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert again.identity["weights"] == "random-init:0"
    assert len(again.identity["config_hash"]) == 16


def test_tiny_weights_are_deterministic_and_leave_global_rng_alone(tiny):
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    other = load_teacher("tiny")
    assert torch.equal(torch.rand(3), expected_next)  # building did not consume the caller's RNG
    for a, b in ((tiny.unet, other.unet), (tiny.codec.vae, other.codec.vae), (tiny.text_encoder, other.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert tiny.identity == other.identity


def test_encode_prompts_shape_and_sd_convention(tiny):
    prompts = ["a red cube on a table", "", "x " * 200]
    emb = tiny.encode_prompts(prompts)
    assert emb.shape == (3, 77, 32) and emb.dtype == torch.float32
    ids = tiny.tokenizer(prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
    assert ids[2, -1].item() == EOS_ID
    torch.testing.assert_close(emb, tiny.text_encoder(ids).last_hidden_state, rtol=0, atol=0)
    assert not torch.equal(emb[0], emb[1])
    with pytest.raises(TypeError):
        tiny.encode_prompts("a single string")


def test_vae_codec_round_trip_shapes_and_determinism(tiny):
    codec = tiny.codec
    assert isinstance(codec, VaeCodec) and (codec.channels, codec.downsample) == (4, 2)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z1, z2 = codec.encode(images), codec.encode(images)
        assert z1.shape == (2, *tiny.latent_shape)
        assert torch.equal(z1, z2)  # mode(): deterministic
        s1 = codec.encode(images, generator=torch.Generator().manual_seed(1))
        s2 = codec.encode(images, generator=torch.Generator().manual_seed(1))
        assert torch.equal(s1, s2) and not torch.equal(s1, z1)
        # scaling: latents are scaling_factor * posterior mean
        mean = codec.vae.encode(images).latent_dist.mean
        torch.testing.assert_close(z1, mean * 0.18215)
        out = codec.decode(z1)
        assert out.shape == images.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, codec.vae.decode(z1 / 0.18215).sample)


def test_vae_stays_fp32_when_unet_runs_in_half():
    teacher = load_teacher("tiny", dtype=torch.bfloat16)
    assert next(teacher.unet.parameters()).dtype == torch.bfloat16
    assert next(teacher.codec.vae.parameters()).dtype == torch.float32
    assert teacher.encode_prompts(["a"]).dtype == torch.bfloat16
    latents = torch.randn(1, *teacher.latent_shape, dtype=torch.bfloat16)
    assert teacher.codec.decode(latents).dtype == torch.float32
    low = load_teacher("tiny", dtype=torch.bfloat16, vae_upcast=False)
    assert next(low.codec.vae.parameters()).dtype == torch.bfloat16


def test_identity_codec():
    codec = IdentityCodec(3)
    x = torch.randn(2, 3, 8, 8)
    assert codec.downsample == 1 and torch.equal(codec.decode(codec.encode(x)), x)
    with pytest.raises(ValueError):
        codec.encode(torch.randn(2, 4, 8, 8))


def test_config_files():
    sd15, tiny = read_teacher_configs("sd15"), read_teacher_configs("tiny")
    assert sd15["scheduler"] == SD15_SCHEDULER_CONFIG and tiny["scheduler"] == SD15_SCHEDULER_CONFIG
    assert sd15["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert sd15["vae"]["scaling_factor"] == 0.18215
    assert sd15["text_encoder"]["hidden_act"] == "quick_gelu"
    assert tiny["unet"]["cross_attention_dim"] == tiny["text_encoder"]["hidden_size"]


def test_sd15_arch_parameter_counts():
    """The published SD-1.5 sizes: U-Net 859,520,964; VAE 83,653,863; CLIP ViT-L/14 text 123,060,480."""
    teacher = load_teacher("sd15-arch")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(teacher.unet) == 859_520_964
    assert count(teacher.codec.vae) == 83_653_863
    assert count(teacher.text_encoder) == 123_060_480
    assert teacher.latent_shape == (4, 64, 64)
    assert teacher.identity["weights"] == "random-init:0"
    assert teacher.encode_prompts(["a cat"]).shape == (1, 77, 768)


# ------------------------------------------------------------------------------------------------
# Names, specs, usage errors
# ------------------------------------------------------------------------------------------------


def test_specs_and_unknown_name():
    assert teacher_names() == ["sd15", "rv51", "sd15-arch", "toy", "tiny"]
    assert TEACHER_SPECS["sd15"].hub_id == SD15_ID
    assert TEACHER_SPECS["rv51"].vae_id == "stabilityai/sd-vae-ft-mse"
    assert all(spec.default_guidance_scale == 3.0 for spec in TEACHER_SPECS.values())
    with pytest.raises(UsageError) as err:
        load_teacher("sd2")
    assert "sd2" in str(err.value) and all(name in str(err.value) for name in teacher_names())
    with pytest.raises(UsageError):
        load_teacher(None)
    with pytest.raises(UsageError):
        load_teacher("tiny", path="/somewhere")


# ------------------------------------------------------------------------------------------------
# Hub teachers without the weights
# ------------------------------------------------------------------------------------------------


def test_sd15_offline_fails_fast_with_one_clear_message(monkeypatch, tmp_path):
    home = _empty_hf_home(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(MissingResourceError) as err:
        load_teacher("sd15")
    elapsed = time.perf_counter() - start
    message = str(err.value)
    assert elapsed < 5.0
    assert SD15_ID in message and "--teacher-path" in message and "BENCH_TEACHER_PATH" in message
    assert str(home / "hub") in message and "runwayml/stable-diffusion-v1-5" in message
    assert "hf download" in message and "HF_HUB_OFFLINE" in message
    assert _files_under(home) == []


def test_rv51_offline_names_both_repos(monkeypatch, tmp_path):
    _empty_hf_home(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingResourceError) as err:
        load_teacher("rv51")
    message = str(err.value)
    assert "SG161222/Realistic_Vision_V5.1_noVAE" in message and "stabilityai/sd-vae-ft-mse" in message


class _SilentServer:
    """Accepts TCP connections and never answers: a network that drops packets."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns, self.stop = [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                continue

    def close(self):
        self.stop.set()
        self.thread.join()
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("network", ["silent", "refused"])
def test_sd15_without_network_fails_fast_and_writes_nothing(monkeypatch, tmp_path, network):
    """Not offline by configuration, but the Hub is unreachable: the bounded probe fails in seconds."""
    home = _empty_hf_home(monkeypatch, tmp_path)
    server = _SilentServer() if network == "silent" else None
    if server is None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there: connection refused
    else:
        port = server.port
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("BENCH_HUB_TIMEOUT", "1")
    try:
        start = time.perf_counter()
        with pytest.raises(MissingResourceError) as err:
            load_teacher("sd15")
        elapsed = time.perf_counter() - start
    finally:
        if server is not None:
            server.close()
    assert elapsed < 5.0, f"took {elapsed:.1f} s"
    assert SD15_ID in str(err.value) and "--teacher-path" in str(err.value)
    assert "could not be reached" in str(err.value)
    assert _files_under(home) == []


# ------------------------------------------------------------------------------------------------
# Diffusers-format folders
# ------------------------------------------------------------------------------------------------


def _assert_same_teacher(a: Teacher, b: Teacher):
    for x, y in ((a.unet, b.unet), (a.codec.vae, b.codec.vae), (a.text_encoder, b.text_encoder)):
        sx, sy = x.state_dict(), y.state_dict()
        assert sx.keys() == sy.keys() and all(torch.equal(sx[k], sy[k]) for k in sx)
    prompts = ["a blue ball", ""]
    emb = a.encode_prompts(prompts)
    assert torch.equal(emb, b.encode_prompts(prompts))
    latents = torch.randn(2, *a.latent_shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([999, 10])
    with torch.no_grad():
        assert torch.equal(a.unet(latents, t, encoder_hidden_states=emb).sample,
                           b.unet(latents, t, encoder_hidden_states=emb).sample)
        assert torch.equal(a.codec.decode(latents), b.codec.decode(latents))
    assert a.scheduler_config == b.scheduler_config


def test_local_folder_round_trip(tiny, tiny_folder):
    assert {p.name for p in tiny_folder.iterdir()} >= {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert not list(tiny_folder.rglob("*.bin"))  # safetensors only
    loaded = load_teacher(None, path=tiny_folder)
    assert loaded.name == "local:tiny-teacher" and loaded.resolution == 16
    _assert_same_teacher(tiny, loaded)
    assert loaded.identity["source"] == "local-folder"
    assert loaded.identity["weights"] == load_teacher(None, path=tiny_folder).identity["weights"]
    assert not any(p.name.endswith(".tmp") for p in tiny_folder.parent.iterdir())
    with pytest.raises(UsageError):
        save_teacher(tiny, tiny_folder)  # never overwrites


def test_teacher_path_env_and_identity_tracks_weights(monkeypatch, tiny, tiny_folder, tmp_path):
    monkeypatch.setenv("BENCH_TEACHER_PATH", str(tiny_folder))
    via_env = load_teacher("sd15")  # a local copy of a hub teacher: its name, the folder's weights
    assert via_env.name == "sd15" and via_env.identity["hub_id"] == SD15_ID
    _assert_same_teacher(tiny, via_env)
    changed = tmp_path / "changed"
    shutil.copytree(tiny_folder, changed)
    from safetensors.torch import load_file, save_file

    weights = changed / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = sorted(state)[0]
    state[key] = state[key] + 1.0
    save_file(state, weights, metadata={"format": "pt"})
    assert load_teacher(None, path=changed).identity["weights"] != load_teacher(None, path=tiny_folder).identity["weights"]


def test_malformed_folder_names_what_is_missing(tiny_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(UsageError) as err:
        load_teacher(None, path=broken)
    assert str(broken) in str(err.value) and "unet/config.json" in str(err.value)
    with pytest.raises(UsageError) as err:
        load_teacher(None, path=tmp_path / "nowhere")
    assert "does not exist" in str(err.value)


def _fake_hub_cache(source: Path, cache: Path, repo_id: str, commit: str) -> Path:
    """The Hugging Face cache layout: blobs named by sha256, snapshot files linking to them."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        shutil.copyfile(file, blob)
        link = repo / "snapshots" / commit / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return repo


def test_sd15_from_hub_cache_offline(monkeypatch, tmp_path, tiny, tiny_folder):
    home = _empty_hf_home(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = _fake_hub_cache(tiny_folder, home / "hub", SD15_ID, commit)
    teacher = load_teacher("sd15")
    assert teacher.identity["revision"] == commit and teacher.identity["source"] == "huggingface"
    # the side its weights are built for (U-Net sample_size x VAE factor): 512 for the real SD-1.5 repo
    assert teacher.resolution == tiny.resolution == 16
    _assert_same_teacher(tiny, teacher)
    # a cached snapshot without the U-Net weights is "missing", named precisely
    (repo / "snapshots" / commit / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MissingResourceError) as err:
        load_teacher("sd15")
    assert "unet/diffusion_pytorch_model.safetensors" in str(err.value)


def test_saved_folder_is_a_diffusers_pipeline_with_the_same_prompt_encoding(tiny, tiny_folder):
    """diffusers' own StableDiffusionPipeline loads the folder, and its prompt encoding (SD's
    convention) equals Teacher.encode_prompts."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(tiny_folder), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    assert pipe.vae_scale_factor == tiny.codec.downsample
    prompts = ["a green frog", "two cats on a sofa, photo"]
    cond, uncond = pipe.encode_prompt(prompts, torch.device("cpu"), 1, True, negative_prompt=["", ""])
    torch.testing.assert_close(cond, tiny.encode_prompts(prompts), rtol=0, atol=0)
    torch.testing.assert_close(uncond, tiny.encode_prompts(["", ""]), rtol=0, atol=0)
