"""CLIP score (bench/scoring/metrics/clip_score.py) and latency (bench/scoring/metrics/latency.py)."""
from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import time

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torch import nn

from bench.core.errors import BenchError, MissingResourceError, UsageError
from bench.core.fingerprint import sha256_file
from bench.scoring.metrics.clip_score import (
    GIGAGAN_PREFIX,
    ClipScoreConfig,
    ClipScorer,
    as_paper_scale,
    resolve_clip_weights,
    weights_sha256,
)
from bench.scoring.metrics.latency import (
    LatencyResult,
    measure_latency,
    summarize_timings,
)

SOT, EOT = 49406, 49407

TINY_CFG = dict(
    embed_dim=16,
    vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
    text_cfg=dict(context_length=77, vocab_size=49408, width=16, heads=2, layers=1),
)


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG).eval()
    preprocess = open_clip.image_transform(32, is_train=False)
    tokenizer = open_clip.get_tokenizer("ViT-g-14")
    return model, preprocess, tokenizer


def _images(n: int, seed: int = 0, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


PROMPTS = ["a red cube on a table", "two dogs in the snow", "a bowl of fruit", "an old city street at night", "a cat"]


# ---------------------------------------------------------------- CLIP score


def test_score_equals_direct_open_clip_computation(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    images = _images(len(PROMPTS))
    scorer = ClipScorer.from_model(model, preprocess, tokenizer, identity="tiny-seed0", config=ClipScoreConfig(batch_size=2))
    result = scorer.score(images, PROMPTS, progress=False)

    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im in images]))
        txt = model.encode_text(tokenizer(PROMPTS))
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        expected = (img * txt).sum(-1).double().numpy()

    assert result.per_image.shape == (len(PROMPTS),)
    np.testing.assert_allclose(result.per_image, expected, atol=1e-6, rtol=0)
    assert abs(result.mean_cosine - expected.mean()) < 1e-6
    assert result.protocol["weights"] == "tiny-seed0"
    assert result.protocol["prefix"] is None


def test_score_from_folder_uses_natural_order(tiny_clip, tmp_path):
    model, preprocess, tokenizer = tiny_clip
    images = _images(3, seed=1)
    names = ["2.png", "10.png", "1.png"]  # natural order: 1, 2, 10
    for name, image in zip(names, images):
        image.save(tmp_path / name)
    scorer = ClipScorer.from_model(model, preprocess, tokenizer, identity="tiny")
    ordered = [images[2], images[0], images[1]]
    from_folder = scorer.score(tmp_path, PROMPTS[:3], progress=False)
    from_list = scorer.score(ordered, PROMPTS[:3], progress=False)
    np.testing.assert_allclose(from_folder.per_image, from_list.per_image, atol=1e-6, rtol=0)
    with pytest.raises(UsageError, match="one prompt per image"):
        scorer.score(tmp_path, PROMPTS[:2], progress=False)


def test_loader_workers_give_the_same_cosines(tiny_clip, tmp_path, monkeypatch):
    """On a GPU, image files are decoded by DataLoader workers (batches of 2 here, 5 images): the
    per-image cosines equal the main-process loop's exactly."""
    from bench.scoring.metrics import clip_score

    model, preprocess, tokenizer = tiny_clip
    for i, image in enumerate(_images(5, seed=3)):
        image.save(tmp_path / f"{i}.png")
    scorer = ClipScorer.from_model(model, preprocess, tokenizer, identity="tiny",
                                   config=ClipScoreConfig(batch_size=2, image_size=24))
    in_process = scorer.score(tmp_path, PROMPTS, progress=False).per_image
    monkeypatch.setattr(clip_score, "feature_loading", lambda device: (256, 2))
    with_workers = scorer.score(tmp_path, PROMPTS, progress=False).per_image
    np.testing.assert_array_equal(with_workers, in_process)
    expected = scorer.cosines([tmp_path / f"{i}.png" for i in range(5)], PROMPTS).double().numpy()
    np.testing.assert_allclose(in_process, expected, atol=1e-6, rtol=0)


class _AngleClip(nn.Module):
    """Embeddings set by hand: image i at angle pi*red_i in the xy plane (length 2),
    text at angle 0.1*(number of BPE tokens) (length 5). Cosine = cos(difference of angles)."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        theta = math.pi * pixels[:, 0].double()
        return 2.0 * torch.stack([theta.cos(), theta.sin(), torch.zeros_like(theta)], dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        n_bpe = ((tokens != 0).sum(-1) - 2).double()
        phi = 0.1 * n_bpe
        return 5.0 * torch.stack([phi.cos(), phi.sin(), torch.zeros_like(phi)], dim=-1)


def _red_preprocess(image: Image.Image) -> torch.Tensor:
    return torch.tensor([image.getpixel((0, 0))[0] / 255.0])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_closed_form_cosine_pairs_image_i_with_prompt_i(batch_size):
    tokenizer = open_clip.get_tokenizer("ViT-g-14")
    reds = [51, 204]  # theta = 0.2*pi, 0.8*pi
    images = [Image.new("RGB", (8, 8), (r, 0, 0)) for r in reds]
    prompts = ["cat", "cat dog bird"]  # 1 and 3 BPE tokens: phi = 0.1, 0.3
    scorer = ClipScorer.from_model(_AngleClip(), _red_preprocess, tokenizer, "stub", ClipScoreConfig(batch_size=batch_size))
    result = scorer.score(images, prompts, progress=False)
    expected = np.array([math.cos(0.2 * math.pi - 0.1), math.cos(0.8 * math.pi - 0.3)])
    np.testing.assert_allclose(result.per_image, expected, atol=1e-6, rtol=0)
    assert result.per_image[1] < 0  # raw cosine: no clamp at 0 (torchmetrics clamps)
    assert result.mean_cosine == pytest.approx(expected.mean(), abs=1e-6)
    assert as_paper_scale(result.mean_cosine) == pytest.approx(100 * expected.mean(), abs=1e-4)


class _SpyTokenizer:
    def __init__(self, inner):
        self.inner = inner
        self.context_length = inner.context_length
        self.eot_token_id = inner.eot_token_id
        self.seen: list[str] = []

    def __call__(self, texts):
        self.seen.extend(texts)
        return self.inner(texts)


def test_prefix_changes_the_tokenised_text(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    images = _images(2, seed=2)
    spy_plain, spy_prefix = _SpyTokenizer(tokenizer), _SpyTokenizer(tokenizer)
    plain = ClipScorer.from_model(model, preprocess, spy_plain, "tiny", ClipScoreConfig())
    prefixed = ClipScorer.from_model(model, preprocess, spy_prefix, "tiny", ClipScoreConfig(prefix=GIGAGAN_PREFIX))
    r_plain = plain.score(images, PROMPTS[:2], progress=False)
    r_prefix = prefixed.score(images, PROMPTS[:2], progress=False)

    assert spy_plain.seen == PROMPTS[:2]
    assert spy_prefix.seen == [f"A photo depicts {p}" for p in PROMPTS[:2]]
    tokens = prefixed.tokenize(PROMPTS[:1])[0]
    prefix_bpe = tokenizer([GIGAGAN_PREFIX])[0][1:4]  # 3 BPE tokens after SOT
    assert torch.equal(tokens[1:4], prefix_bpe)
    assert not torch.equal(tokens, plain.tokenize(PROMPTS[:1])[0])
    assert r_prefix.protocol["prefix"] == GIGAGAN_PREFIX
    assert not np.allclose(r_plain.per_image, r_prefix.per_image)


@pytest.mark.parametrize("prefix", [None, GIGAGAN_PREFIX])
def test_long_prompt_truncates_to_77_keeping_eot(prefix):
    tokenizer = open_clip.get_tokenizer("ViT-g-14")
    words = ["red", "house", "under", "a", "blue", "sky", "with", "clouds"]
    long_prompt = " ".join(words[i % len(words)] for i in range(200))
    scorer = ClipScorer.from_model(_AngleClip(), _red_preprocess, tokenizer, "stub", ClipScoreConfig(prefix=prefix))
    tokens = scorer.tokenize([long_prompt, "a cat"])
    assert tokens.shape == (2, 77)
    assert tokens[0, 0].item() == SOT and tokens[0, -1].item() == EOT
    assert bool((tokens[0] != 0).all())
    assert (tokens[0] == EOT).sum().item() == 1  # argmax pooling lands on the last slot
    assert tokens[0].argmax().item() == 76
    assert tokens[1, -1].item() == 0  # a short prompt is padded, not touched


def test_tokenizer_that_drops_eot_is_rejected():
    inner = open_clip.get_tokenizer("ViT-g-14")

    class SlicingTokenizer(_SpyTokenizer):  # torchmetrics-style: slice to 77, EOT lost
        def __call__(self, texts):
            rows = [[SOT] + self.inner.encode(t) + [EOT] for t in texts]
            out = torch.zeros(len(rows), 77, dtype=torch.long)
            for i, row in enumerate(rows):
                row = row[:77]
                out[i, : len(row)] = torch.tensor(row)
            return out

    scorer = ClipScorer.from_model(_AngleClip(), _red_preprocess, SlicingTokenizer(inner), "stub")
    with pytest.raises(RuntimeError, match="end-of-text"):
        scorer.tokenize(["word " * 200])


@pytest.fixture
def offline_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "BENCH_CLIP_PATH"):
        monkeypatch.delenv(name, raising=False)

    def no_build(*args, **kwargs):
        raise AssertionError("model built before the weights were found")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_build)
    return tmp_path


def test_missing_default_weights_offline_fails_fast_with_one_clear_message(offline_env):
    t0 = time.perf_counter()
    with pytest.raises(MissingResourceError) as info:
        ClipScorer.from_config(ClipScoreConfig())
    elapsed = time.perf_counter() - t0
    message = str(info.value)
    assert elapsed < 5.0
    for needle in (
        "ViT-g-14",
        "laion2b_s12b_b42k",
        "laion/CLIP-ViT-g-14-laion2B-s12B-b42K",
        str(offline_env / "hf" / "hub"),
        "--clip-weights",
        "BENCH_CLIP_PATH",
        "HF_HUB_OFFLINE",
    ):
        assert needle in message, needle


def test_missing_explicit_weights_path_is_named(offline_env):
    bad = str(offline_env / "nope.safetensors")
    with pytest.raises(MissingResourceError, match="nope.safetensors"):
        resolve_clip_weights(ClipScoreConfig(weights_path=bad))
    with pytest.raises(MissingResourceError, match="env:BENCH_CLIP_PATH"):
        resolve_clip_weights(ClipScoreConfig(), environ={"BENCH_CLIP_PATH": bad})


def test_weights_found_in_hf_cache_layout(offline_env):
    cache = offline_env / "hf" / "hub"
    repo = cache / "models--laion--CLIP-ViT-g-14-laion2B-s12B-b42K"
    payload = b"not really weights"
    digest = hashlib.sha256(payload).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / digest).write_bytes(payload)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    os.symlink(f"../../blobs/{digest}", snapshot / "open_clip_pytorch_model.bin")

    resolved = resolve_clip_weights(ClipScoreConfig())
    assert resolved.source == "hf-cache:laion/CLIP-ViT-g-14-laion2B-s12B-b42K"
    assert resolved.path == str(snapshot / "open_clip_pytorch_model.bin")
    assert weights_sha256(resolved.path) == digest
    # the other tag is a different repo: still missing
    with pytest.raises(MissingResourceError, match="laion2B-s34B-b88K"):
        resolve_clip_weights(ClipScoreConfig(pretrained="laion2b_s34b_b88k"))


def test_from_config_loads_local_file_through_open_clip(tiny_clip, monkeypatch, tmp_path):
    """The real loading path (create_model_and_transforms with a file) on a tiny registered config."""
    from safetensors.torch import save_file

    model, _, tokenizer = tiny_clip
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "bench-test-tiny", json.loads(json.dumps(TINY_CFG)))
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    monkeypatch.setenv("BENCH_CLIP_PATH", str(path))

    loaded = ClipScorer.from_config(ClipScoreConfig(model_name="bench-test-tiny", pretrained=None, batch_size=3))
    assert loaded.identity == sha256_file(path)
    reference = ClipScorer.from_model(model, open_clip.image_transform(32, is_train=False), tokenizer, "ref")
    images = _images(4, seed=3)
    np.testing.assert_allclose(
        loaded.score(images, PROMPTS[:4], progress=False).per_image,
        reference.score(images, PROMPTS[:4], progress=False).per_image,
        atol=1e-6,
        rtol=0,
    )


def test_fp16_autocast_is_checked_against_fp32_and_recorded(tiny_clip):
    """--clip-precision fp16 (the default on CUDA): the encoders run under fp16 autocast, the first
    batch is also scored in fp32 and must agree within fp16_tolerance, and the protocol says so;
    beyond the tolerance the score stops with one error naming --clip-precision fp32."""
    model, preprocess, tokenizer = tiny_clip
    images = _images(len(PROMPTS))
    full = ClipScorer.from_model(model, preprocess, tokenizer, "tiny", ClipScoreConfig(batch_size=2))
    half = ClipScorer.from_model(model, preprocess, tokenizer, "tiny", ClipScoreConfig(batch_size=2, precision="fp16"))
    assert full.precision == "fp32" and "precision" not in full.protocol()      # fp32 rows keep their fingerprints
    reference = full.score(images, PROMPTS, progress=False).per_image
    result = half.score(images, PROMPTS, progress=False)
    assert 0 < np.abs(result.per_image - reference).max() <= 2e-3                # fp16 really ran, and agrees
    assert result.protocol["precision"].startswith("fp16 autocast")
    strict = ClipScorer.from_model(model, preprocess, tokenizer, "tiny",
                                   ClipScoreConfig(batch_size=2, precision="fp16", fp16_tolerance=1e-9))
    with pytest.raises(BenchError, match="rerun with --clip-precision fp32"):
        strict.score(images, PROMPTS, progress=False)
    assert ClipScorer.from_model(model, preprocess, tokenizer, "tiny", device="cpu").precision == "fp32"  # auto, CPU


def test_config_rejects_bad_values():
    with pytest.raises(UsageError):
        ClipScoreConfig(batch_size=0)
    with pytest.raises(UsageError):
        ClipScoreConfig(prefix="  ")
    with pytest.raises(UsageError, match="--clip-precision"):
        ClipScoreConfig(precision="fp8")


# ---------------------------------------------------------------- latency


def test_summarize_timings_exact():
    timings = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 10.0]
    median, p90, mean = summarize_timings(timings)
    assert median == 5.5
    assert p90 == pytest.approx(9.1, abs=1e-12)  # linear: rank 0.9*(10-1) = 8.1 -> 9 + 0.1*(10-9)
    assert mean == 5.5
    assert p90 == float(np.percentile(timings, 90, method="linear"))
    rng = np.random.default_rng(0)
    many = rng.gamma(2.0, 3.0, size=37).tolist()
    assert summarize_timings(many) == (
        float(np.median(many)),
        float(np.percentile(many, 90, method="linear")),
        float(np.mean(many)),
    )
    with pytest.raises(UsageError):
        summarize_timings([])


def _sleeper(ms: float, counter: list[int] | None = None):
    def run():
        if counter is not None:
            counter[0] += 1
        time.sleep(ms / 1000.0)

    return run


def test_sleep_closures_give_median_share_and_throughput():
    calls = [0]
    result = measure_latency(
        _sleeper(10.0, calls),
        _sleeper(5.0),
        warmup=1,
        runs=20,
        throughput_fn=_sleeper(10.0),
        throughput_batch=4,
        dtype="float32",
    )
    assert isinstance(result, LatencyResult)
    assert calls[0] == 21  # warmup + runs, end-to-end only once each
    assert len(result.timings_ms) == 20 and len(result.denoiser_timings_ms) == 20
    assert 9.5 <= result.median_ms <= 25.0
    assert result.p90_ms >= result.median_ms
    assert 4.5 <= result.denoiser_median_ms <= 20.0
    assert 0.3 <= result.denoiser_share <= 0.7
    assert 150.0 <= result.throughput_images_per_s <= 410.0  # 4 images / ~10 ms
    assert result.throughput_batch == 4
    assert result.device_type == "cpu" and result.device_name
    assert result.dtype == "float32" and result.torch_version == torch.__version__
    assert (result.median_ms, result.p90_ms, result.mean_ms) == summarize_timings(result.timings_ms)


def test_runs_and_warmup_are_enforced():
    with pytest.raises(UsageError, match="20"):
        measure_latency(_sleeper(0), None, runs=19)
    with pytest.raises(UsageError, match="warm"):
        measure_latency(_sleeper(0), None, warmup=0)
    with pytest.raises(UsageError, match="throughput"):
        measure_latency(_sleeper(0), None, throughput_fn=_sleeper(0))


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS reset needs Linux /proc")
def test_cpu_peak_memory_is_the_peak_rss_during_runs():
    def rss_mib() -> float:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024

    size = 512  # MiB, touched inside the runs only: the peak must include it on top of the RSS now

    def allocate():
        # Fresh pages from the kernel (an anonymous mapping, one byte written per page). np.ones would
        # go through the C allocator, which may hand back free heap pages that are already resident
        # in a long test process: the RSS then rightly does not grow.
        block = mmap.mmap(-1, size * 2**20)
        pages = np.frombuffer(block, dtype=np.uint8)
        pages[::mmap.PAGESIZE] = 1
        del pages
        block.close()

    before = rss_mib()
    result = measure_latency(allocate, None, warmup=1, runs=20)
    assert result.peak_memory_kind == "cpu_peak_rss"
    assert before + 0.9 * size <= result.peak_memory_mb <= before + 4 * size
    assert result.denoiser_share is None and result.throughput_images_per_s is None


def test_rows_and_dict_are_serialisable():
    result = measure_latency(_sleeper(0.1), _sleeper(0.05), warmup=1, runs=20, dtype="float16")
    as_dict = json.loads(json.dumps(result.as_dict()))
    assert as_dict["median_ms"] == result.median_ms and as_dict["percentile_method"] == "linear"
    rows = result.as_rows()
    metrics = {row["metric"]: row for row in rows}
    assert metrics["latency_median"]["value"] == result.median_ms
    assert metrics["denoiser_share"]["value"] == result.denoiser_share
    assert "throughput" not in metrics
    assert all(row["dtype"] == "float16" and row["runs"] == 20 for row in rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events_and_peak_memory():
    a = torch.randn(2048, 2048, device="cuda")

    def matmul():
        return a @ a

    result = measure_latency(matmul, matmul, warmup=3, runs=20, device="cuda")
    assert result.device_name == torch.cuda.get_device_name()
    assert result.peak_memory_kind == "cuda_max_allocated"
    assert result.peak_memory_mb >= 2 * 16.0  # a and the product, 16 MiB each
    assert result.median_ms > 0 and 0.5 <= result.denoiser_share <= 2.0
