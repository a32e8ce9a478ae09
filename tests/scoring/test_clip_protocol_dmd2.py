"""CLIP score per-suite protocol: parity with DMD2's ``compute_clip_score`` and what rows record.

``_dmd2_compute_clip_score`` below is a transcription of ``compute_clip_score`` (with its
``CenterCropLongEdge`` and ``CLIPScoreDataset``) from tianweiy/DMD2 ``main/coco_eval/coco_evaluator.py``
(commit 8d8fa55633d47cfb81bbc7a892e7248f9518763f), kept line for line except:

* the model and its preprocessing transform are passed in (DMD2 builds
  ``open_clip.create_model_and_transforms("ViT-g-14", pretrained="laion2b_s12b_b42k")``; here the same
  call on a tiny registered config with random weights: no download);
* ``openai_clip.tokenize(..., truncate=True)`` (OpenAI's ``clip`` package, not installed) is
  ``open_clip.tokenize``: the same BPE vocabulary and cleaning, and it also truncates to 77 keeping EOT
  in the last slot;
* ``num_workers=0`` and ``device="cpu"`` (a DataLoader with 8 workers gives the same order).
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms as transforms
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bench.core.errors import UsageError
from bench.scoring.evaluate import Evaluator, MetricModels, Reference, metric_models_for
from bench.scoring.metrics.clip_score import (
    DMD2_CLIP_PROTOCOL,
    GIGAGAN_PREFIX,
    RAW_CLIP_PROTOCOL,
    ClipProtocol,
    ClipScoreConfig,
    ClipScorer,
    clip_protocol_for_suite,
    resolve_clip_protocol,
)
from bench.scoring.metrics.features import protocol_for_suite

TINY_NAME = "bench-test-tiny-224"
TINY_CFG = dict(  # ViT-g-14's input size and preprocessing, a few thousand random weights
    embed_dim=16,
    vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=32, image_size=224),
    text_cfg=dict(context_length=77, vocab_size=49408, width=16, heads=2, layers=1),
)


# ------------------------------------------------------------------ DMD2, transcribed (see the docstring)


class CenterCropLongEdge(object):
    def __call__(self, img):
        return transforms.functional.center_crop(img, min(img.size))


class CLIPScoreDataset(Dataset):
    def __init__(self, images, captions, transform, preprocessor) -> None:
        super().__init__()
        self.images = images
        self.captions = captions
        self.transform = transform
        self.preprocessor = preprocessor

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        image_pil = self.transform(image)
        image_pil = self.preprocessor(image_pil)
        caption = self.captions[index]
        return image_pil, caption


def _dmd2_splice_prefix(tokens, tokenize):
    prepend_text = "A photo depicts "
    prepend_text_token = tokenize(prepend_text)[:, 1:4]
    prepend_text_tokens = prepend_text_token.expand(tokens.shape[0], -1)

    start_tokens = tokens[:, :1]
    new_text_tokens = torch.cat(
        [start_tokens, prepend_text_tokens, tokens[:, 1:]], dim=1)[:, :77]
    last_cols = new_text_tokens[:, 77 - 1:77]
    last_cols[last_cols > 0] = 49407  # eot token
    new_text_tokens = torch.cat([new_text_tokens[:, :76], last_cols], dim=1)
    return new_text_tokens


@torch.no_grad()
def _dmd2_compute_clip_score(images, captions, clip, clip_preprocessor, tokenize, device="cpu", how_many=30000):
    def resize_and_center_crop(image_np, resize_size=256):
        image_pil = Image.fromarray(image_np)
        image_pil = CenterCropLongEdge()(image_pil)

        if resize_size is not None:
            image_pil = image_pil.resize((resize_size, resize_size),
                                         Image.LANCZOS)
        return image_pil

    def simple_collate(batch):
        images, captions = [], []
        for img, cap in batch:
            images.append(img)
            captions.append(cap)
        return images, captions

    dataset = CLIPScoreDataset(
        images, captions, transform=resize_and_center_crop,
        preprocessor=clip_preprocessor
    )
    dataloader = DataLoader(dataset, batch_size=64, shuffle=False, num_workers=0, collate_fn=simple_collate)

    cos_sims = []
    count = 0
    for index, (imgs_pil, txts) in enumerate(dataloader):
        imgs = torch.stack(imgs_pil, dim=0).to(device)
        tokens = tokenize(txts).to(device)  # openai_clip.tokenize(txts, truncate=True)
        new_text_tokens = _dmd2_splice_prefix(tokens, tokenize)

        img_embs = clip.encode_image(imgs)
        text_embs = clip.encode_text(new_text_tokens)

        similarities = torch.nn.functional.cosine_similarity(img_embs, text_embs, dim=1)
        cos_sims.append(similarities)
        count += similarities.shape[0]
        if count >= how_many:
            break

    per_image = torch.cat(cos_sims, dim=0)[:how_many]
    clip_score = per_image.mean()
    clip_score = clip_score.detach().cpu().numpy()
    return clip_score, per_image.numpy()


# ------------------------------------------------------------------ fixtures


CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "two dogs playing in the snow",
    "Crème brûlée on a plate, naïve café style — 3 spoons!",
    "A kitchen with   stainless steel appliances\nand a window.",
    " ".join(["a red house under a blue sky with clouds"] * 12),  # over 77 tokens: truncated
    "cat",
]
SIZES = [(640, 480), (333, 500), (256, 256), (120, 90), (517, 389), (64, 200)]  # (width, height)


def _image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float64)
    return np.clip(smooth + rng.normal(0, 25, smooth.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def tiny_registered(monkeypatch, tmp_path):
    """(model, preprocess, weights file) of a tiny open_clip config built by open_clip's own factory."""
    from safetensors.torch import save_file

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, TINY_NAME, json.loads(json.dumps(TINY_CFG)))
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_NAME, pretrained=None)
    model = model.float().eval()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, preprocess, path


def _suite(name: str, n: int):
    return SimpleNamespace(name=name, prompts=tuple(CAPTIONS[:n]), fingerprint="f" * 16)


# ------------------------------------------------------------------ tests


def test_coco_clip_score_equals_dmd2_compute_clip_score(tiny_registered, tmp_path):
    model, preprocess, weights = tiny_registered
    rng = np.random.default_rng(0)
    arrays = [_image(rng, w, h) for w, h in SIZES]
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"{i:05d}.png")

    expected_mean, expected = _dmd2_compute_clip_score(arrays, list(CAPTIONS), model, preprocess, open_clip.tokenize)

    for suite_name in ("coco2014-30k", "coco2017-5k"):
        # the path `bench run` / `bench eval` take for a COCO suite (a local weights file, the suite's protocol)
        models = metric_models_for(_suite(suite_name, len(CAPTIONS)), ("clip",), clip_weights=str(weights),
                                   clip_model=TINY_NAME, device="cpu")
        assert models.clip.config.clip_protocol == DMD2_CLIP_PROTOCOL
        result = models.clip.score(folder, list(CAPTIONS), progress=False)
        per_image_diff = float(np.abs(result.per_image - expected.astype(np.float64)).max())
        mean_diff = abs(result.mean_cosine - float(expected_mean))
        print(f"{suite_name}: max |per-image diff| {per_image_diff:.3g}, |mean diff| {mean_diff:.3g}")
        assert per_image_diff < 1e-7 and mean_diff < 1e-7  # measured: 0 and 3.1e-9 (float32 vs float64 mean)

    # the same images without the crop + Lanczos 256 step or the prefix score differently
    raw = metric_models_for(_suite("coco2014-30k", len(CAPTIONS)), ("clip",), clip_weights=str(weights),
                            clip_model=TINY_NAME, clip_prefix="none", clip_resize="raw", device="cpu")
    raw_result = raw.clip.score(folder, list(CAPTIONS), progress=False)
    assert np.abs(raw_result.per_image - expected).max() > 1e-3


def test_prefix_tokens_equal_dmd2_token_splice():
    """Prepending the text and tokenising == DMD2's splice of the prefix tokens, for every caption length
    around the 77-token limit (72 caption tokens fit with the prefix)."""
    tokenizer = open_clip.get_tokenizer("ViT-g-14")
    scorer = ClipScorer.from_model(object(), lambda im: im, tokenizer, "stub", ClipScoreConfig(prefix=GIGAGAN_PREFIX))
    captions = [" ".join(["dog"] * n) for n in range(0, 80)] + list(CAPTIONS)
    ours = scorer.tokenize(captions)
    theirs = _dmd2_splice_prefix(open_clip.tokenize(captions), open_clip.tokenize)
    assert torch.equal(ours, theirs)


def test_image_path_equals_dmd2_crop_and_lanczos(tiny_registered):
    _, preprocess, _ = tiny_registered
    scorer = ClipScorer.from_model(object(), preprocess, open_clip.get_tokenizer(TINY_NAME), "stub",
                                   ClipScoreConfig(image_size=256))
    rng = np.random.default_rng(1)
    for width, height in SIZES + [(301, 300), (300, 303)]:
        array = _image(rng, width, height)
        dmd2 = CenterCropLongEdge()(Image.fromarray(array)).resize((256, 256), Image.LANCZOS)
        ours = scorer.prepare_image(Image.fromarray(array))
        assert np.array_equal(np.asarray(ours), np.asarray(dmd2))


def test_suite_protocols_and_variants():
    for name in ("coco2014-30k", "coco2017-5k", "mjhq-5k"):
        assert clip_protocol_for_suite(name) == DMD2_CLIP_PROTOCOL == ClipProtocol("A photo depicts", 256)
    for name in ("toy", "smoke", "prompts-file"):
        assert clip_protocol_for_suite(name) == RAW_CLIP_PROTOCOL and RAW_CLIP_PROTOCOL.recorded() is None
    assert protocol_for_suite("coco2014-30k").resolution == DMD2_CLIP_PROTOCOL.image_size  # FID's crop too

    assert resolve_clip_protocol("coco2014-30k") == DMD2_CLIP_PROTOCOL
    assert resolve_clip_protocol("coco2014-30k", "none") == ClipProtocol(None, 256)
    assert resolve_clip_protocol("coco2014-30k", resize="raw") == ClipProtocol("A photo depicts", None)
    assert resolve_clip_protocol("coco2017-5k", "None", "raw") == RAW_CLIP_PROTOCOL
    assert resolve_clip_protocol("toy", " A photo depicts ", "256") == DMD2_CLIP_PROTOCOL
    assert resolve_clip_protocol("mjhq-5k", "a picture of", "512") == ClipProtocol("a picture of", 512)
    assert DMD2_CLIP_PROTOCOL.recorded() == {
        "name": "dmd2", "prefix": "A photo depicts",
        "image": "centre crop + PIL lanczos 256, then the open_clip transform",
        "source": "tianweiy/DMD2 main/coco_eval/coco_evaluator.py::compute_clip_score"}
    assert ClipProtocol(None, 256).recorded()["name"] == "variant"
    for bad in ("0", "-3", "big", "1.5"):
        with pytest.raises(UsageError, match="--clip-resize"):
            resolve_clip_protocol("toy", resize=bad)
    with pytest.raises(UsageError, match="--clip-prefix"):
        resolve_clip_protocol("toy", "  ")
    with pytest.raises(UsageError, match="image_size"):
        ClipScoreConfig(image_size=0)


def test_rows_record_the_clip_protocol_unless_raw(tiny_registered):
    """COCO rows carry protocol["clip_protocol"]; a raw scorer (toy, smoke, --clip-prefix none
    --clip-resize raw) adds no key, so the toy rows keep their fingerprints."""
    _, _, weights = tiny_registered

    def protocol_of(suite_name, **kwargs):
        suite = _suite(suite_name, 2)
        models = metric_models_for(suite, ("clip",), clip_weights=str(weights), clip_model=TINY_NAME,
                                   device="cpu", **kwargs)
        return Evaluator(suite, ("clip",), models, Reference(None, protocol_for_suite("coco2014-30k"))).protocol()

    assert protocol_of("coco2014-30k")["clip_protocol"] == DMD2_CLIP_PROTOCOL.recorded()
    assert protocol_of("coco2017-5k", clip_prefix="none")["clip_protocol"]["prefix"] is None
    assert "clip_protocol" not in protocol_of("coco2014-30k", clip_prefix="none", clip_resize="raw")
    smoke = _suite("smoke", 2)
    standin = metric_models_for(smoke, ("clip",), device="cpu")
    assert standin.clip.config.clip_protocol == RAW_CLIP_PROTOCOL
    no_clip = Evaluator(smoke, ("fid",), MetricModels(None, None), Reference(None, protocol_for_suite("smoke")))
    assert "clip_protocol" not in no_clip.protocol()
    assert "clip_protocol" not in Evaluator(smoke, ("clip",), standin, no_clip.reference).protocol()
    variant = metric_models_for(smoke, ("clip",), clip_prefix="A photo depicts", device="cpu")
    assert Evaluator(smoke, ("clip",), variant, no_clip.reference).protocol()["clip_protocol"]["name"] == "variant"
