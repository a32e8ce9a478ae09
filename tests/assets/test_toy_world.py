"""The toy world: deterministic generation, captions that agree with their images, toy models."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.assets.toy.world import (
    ATTRIBUTES,
    Scene,
    ToySuiteConfig,
    ToyWorldConfig,
    caption_from_attributes,
    draw_pairs,
    draw_scenes,
    item_rng,
    parse_caption,
    redraw_for_captions,
    render,
    render_batch,
    sample_scene,
    toy_suite_prompts,
    toy_suite_references,
)

WORLD = ToyWorldConfig()


# ------------------------------------------------------------------------------------------------
# World generation
# ------------------------------------------------------------------------------------------------


def test_draw_is_deterministic_by_seed():
    images_a, captions_a = draw_pairs(seed=7, n=64)
    images_b, captions_b = draw_pairs(seed=7, n=64)
    assert images_a.dtype == np.uint8 and images_a.shape == (64, WORLD.resolution, WORLD.resolution, 3)
    assert np.array_equal(images_a, images_b)
    assert captions_a == captions_b


def test_different_seeds_differ():
    images_a, captions_a = draw_pairs(seed=1, n=64)
    images_b, captions_b = draw_pairs(seed=2, n=64)
    assert captions_a != captions_b
    differing = [not np.array_equal(a, b) for a, b in zip(images_a, images_b)]
    assert sum(differing) >= 60  # a few coincidences are possible, most must differ


def test_item_i_depends_only_on_seed_and_i():
    """Prefix-stable and chunk-independent: item i is owned by the generator (seed, i)."""
    images_all, captions_all = draw_pairs(seed=3, n=40)
    images_tail, captions_tail = draw_pairs(seed=3, n=15, start=25)
    assert np.array_equal(images_all[25:], images_tail)
    assert captions_all[25:] == captions_tail
    images_short, _ = draw_pairs(seed=3, n=10)
    assert np.array_equal(images_all[:10], images_short)


def test_captions_agree_with_scenes():
    scenes, captions = draw_scenes(seed=11, n=500)
    for scene, text in zip(scenes, captions):
        specified = parse_caption(text)
        for attr, value in specified.items():
            assert getattr(scene, attr) == value, (text, scene)
        assert caption_from_attributes(specified) == text  # the grammar round-trips


def test_underspecified_captions_at_the_configured_rate():
    n = 4000
    _, captions = draw_scenes(seed=5, n=n)
    parsed = [parse_caption(text) for text in captions]
    for attr in ATTRIBUTES:
        rate = sum(attr not in p for p in parsed) / n
        expected = WORLD.omit_rate(attr)
        # binomial std at n = 4000 is <= 0.008; 4 sigma
        assert abs(rate - expected) < 0.032, (attr, rate, expected)
    # several different images fit one caption: "a blue shape"-style captions exist
    assert any(len(p) <= 2 for p in parsed)


def test_no_omission_gives_full_captions_and_full_omission_gives_a_shape():
    full = ToyWorldConfig(omit_probability=(0.0,) * 5)
    _, captions = draw_scenes(seed=0, n=50, config=full)
    assert all(set(parse_caption(c, full)) == set(ATTRIBUTES) for c in captions)
    none = ToyWorldConfig(omit_probability=(1.0,) * 5)
    _, captions = draw_scenes(seed=0, n=5, config=none)
    assert set(captions) == {"a shape"}


def test_render_puts_the_shape_colour_at_its_centre_and_background_in_the_corners():
    scene = Scene(shape="circle", colour="red", size="large", position="center", background="grey",
                  cx=8.0, cy=8.0, radius=4.8)
    image = render(scene)
    assert tuple(image[8, 8]) == dict(WORLD.colours)["red"]
    assert tuple(image[0, 0]) == dict(WORLD.backgrounds)["grey"]
    corner = Scene(**{**scene.__dict__, "position": "top left", "cx": 4.3, "cy": 4.3, "radius": 2.7})
    image = render(corner)
    assert tuple(image[4, 4]) == dict(WORLD.colours)["red"]
    assert tuple(image[12, 12]) == dict(WORLD.backgrounds)["grey"]


def test_shapes_render_differently():
    base = dict(colour="blue", size="large", position="center", background="white", cx=8.0, cy=8.0,
                radius=4.8)
    images = [render(Scene(shape=s, **base)).astype(int) for s in WORLD.shapes]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).sum() > 1000


def test_parse_caption_rejects_text_outside_the_grammar():
    assert parse_caption("a small red circle at the top left on a grey background") == {
        "size": "small", "colour": "red", "shape": "circle", "position": "top left", "background": "grey"}
    assert parse_caption("a shape on the left") == {"position": "left"}
    with pytest.raises(ValueError):
        parse_caption("a dog on a skateboard")


def test_conditional_redraw_respects_the_caption_and_redraws_the_rest():
    captions = ["a red shape"] * 200
    scenes = [sample_scene(item_rng(9, i), given=parse_caption(c)) for i, c in enumerate(captions)]
    assert all(s.colour == "red" for s in scenes)
    assert len({s.shape for s in scenes}) == len(WORLD.shapes)  # the omitted attribute varies
    images = redraw_for_captions(captions, seed=9)
    assert np.array_equal(images[0], render(scenes[0]))
    with pytest.raises(ValueError):
        sample_scene(item_rng(0, 0), given={"colour": "pink"})


def test_toy_suite_prompts_are_fixed_and_the_floor_draw_is_independent():
    suite = ToySuiteConfig(n=300)
    prompts, reference, floor = toy_suite_references(suite)
    assert prompts == toy_suite_prompts(suite.prompt_seed, suite.n)
    assert len(prompts) == reference.shape[0] == floor.shape[0] == 300
    assert sum(not np.array_equal(a, b) for a, b in zip(reference, floor)) > 250
    default_suite = ToySuiteConfig()
    assert 1000 <= default_suite.n <= 2000
    with pytest.raises(ValueError):
        ToySuiteConfig(prompt_seed=1, floor_seed=1)


def test_world_config_validation():
    with pytest.raises(ValueError):
        ToyWorldConfig(resolution=4)
    with pytest.raises(ValueError):
        ToyWorldConfig(omit_probability=(0.1, 0.1))
    assert ToyWorldConfig().to_dict()["resolution"] == WORLD.resolution


# ------------------------------------------------------------------------------------------------
# Toy models: classes, contracts
# ------------------------------------------------------------------------------------------------

import torch  # noqa: E402

from bench.assets.toy.models import (  # noqa: E402
    FeatureNetConfig,
    PixelCodec,
    ToyClipConfig,
    ToyFeatureNet,
    ToyTeacherConfig,
    build_toy_clip,
    build_toy_text_encoder,
    build_toy_unet,
    clip_images_to_tensor,
    toy_clip_preprocess,
    toy_clip_tokenizer,
)


def test_feature_net_follows_the_clean_fid_extractor_contract():
    """clean-fid hands the extractor float (B, 3, 299, 299) in 0..255 after its PIL bicubic resize;
    the features must match those of the native-size images (the resize is inverted inside)."""
    from cleanfid.fid import get_batch_features
    from cleanfid.resize import build_resizer

    torch.manual_seed(0)
    net = ToyFeatureNet(FeatureNetConfig.for_world(WORLD)).eval()
    images, _ = draw_pairs(seed=4, n=8)
    resize = build_resizer("clean")
    batch = torch.from_numpy(np.stack([resize(im) for im in images])).permute(0, 3, 1, 2)
    assert batch.shape == (8, 3, 299, 299) and batch.dtype == torch.float32
    feats_299 = get_batch_features(batch, net, torch.device("cpu"))
    with torch.no_grad():
        feats_native = net(torch.from_numpy(images).permute(0, 3, 1, 2).float()).numpy()
    assert feats_299.shape == (8, net.config.feature_dim)
    assert np.linalg.norm(feats_299 - feats_native) < 0.02 * np.linalg.norm(feats_native)


def test_toy_clip_is_an_open_clip_model_with_clip_vocabulary_and_context():
    import open_clip
    from PIL import Image

    config = ToyClipConfig()
    model = build_toy_clip(config).eval()
    assert isinstance(model, open_clip.CLIP)
    tokens = toy_clip_tokenizer(config)(["a red circle", "a shape"])
    assert tokens.shape == (2, 77) and int(tokens.max()) == 49407
    images, _ = draw_pairs(seed=0, n=2)
    pixels = torch.stack([toy_clip_preprocess(config)(Image.fromarray(im)) for im in images])
    assert torch.allclose(pixels, clip_images_to_tensor(torch.from_numpy(images), config), atol=1e-5)
    with torch.no_grad():
        assert model.encode_image(pixels).shape == (2, config.embed_dim)
        assert model.encode_text(tokens).shape == (2, config.embed_dim)


def test_toy_teacher_uses_stable_diffusion_component_classes():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    config = ToyTeacherConfig()
    unet = build_toy_unet(config.unet)
    text_encoder = build_toy_text_encoder(config.text_encoder)
    assert isinstance(unet, UNet2DConditionModel) and isinstance(text_encoder, CLIPTextModel)
    assert text_encoder.config.vocab_size == 49408 and text_encoder.config.max_position_embeddings == 77
    codec = config.codec()
    side = config.resolution // codec.downsample
    assert (unet.config.in_channels, unet.config.sample_size) == (codec.channels, side)
    ids = torch.full((2, 77), 49407)
    ids[:, 0] = 49406
    with torch.no_grad():
        text = text_encoder(ids).last_hidden_state
        out = unet(torch.randn(2, codec.channels, side, side), torch.tensor([999, 0]), encoder_hidden_states=text).sample
    assert out.shape == (2, codec.channels, side, side)


def test_pixel_codec_is_lossless():
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    for factor in (1, 2, 4):
        codec = PixelCodec(factor)
        latents = codec.encode(images)
        assert latents.shape == (3, codec.channels, 16 // factor, 16 // factor)
        assert torch.equal(codec.decode(latents), images)


# ------------------------------------------------------------------------------------------------
# Checkpoints: reproducible training, hash-checked loading, clear errors
# ------------------------------------------------------------------------------------------------

import json  # noqa: E402
import shutil  # noqa: E402

from bench.assets.toy.checkpoints import (  # noqa: E402
    MANIFEST_NAME,
    TOY_MODELS,
    ToyCheckpointError,
    default_toy_dir,
    load_toy_checkpoint,
    sha256_file,
)
from bench.assets.toy.load import (  # noqa: E402
    load_toy_clip,
    load_toy_feature_net,
    load_toy_teacher_parts,
    load_toy_world,
)
from bench.assets.toy.train import build_and_save  # noqa: E402


@pytest.fixture(scope="module")
def tiny_toy_dir(tmp_path_factory):
    """All toy models trained for 2 steps (the real recipe, truncated) into a temporary folder."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("toy")
    for name in TOY_MODELS:
        build_and_save(name, out, seed=0, steps=2, overrides=QUICK.get(name))
    return out


#: Shorter held-out evaluations for the 2-step test trainings.
QUICK = {"features": {"calibration_images": 256, "eval_images": 256}, "clip": {"eval_images": 128}}


def test_training_is_reproducible_from_the_seed(tiny_toy_dir, tmp_path):
    torch.set_num_threads(1)
    build_and_save("features", tmp_path, seed=0, steps=2, overrides=QUICK["features"])
    assert sha256_file(tmp_path / "features.safetensors") == sha256_file(tiny_toy_dir / "features.safetensors")
    build_and_save("features", tmp_path, seed=1, steps=2, overrides=QUICK["features"])
    assert sha256_file(tmp_path / "features.safetensors") != sha256_file(tiny_toy_dir / "features.safetensors")


def test_trained_checkpoints_load_and_record_their_hashes(tiny_toy_dir):
    manifest = json.loads((tiny_toy_dir / MANIFEST_NAME).read_text())
    for name, files in TOY_MODELS.items():
        entry = manifest["models"][name]
        assert entry["rebuild"] == f"python -m bench toy train --what {name}"
        assert entry["training"]["steps"] == 2 and entry["training"]["seconds"] >= 0
        assert "torch" in entry["versions"] and "cpu_count" in entry["machine"]
        assert entry["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        for file_name in files:
            assert entry["files"][file_name]["sha256"] == sha256_file(tiny_toy_dir / file_name)
    net = load_toy_feature_net(tiny_toy_dir)
    assert net(torch.zeros(1, 3, 16, 16)).shape == (1, net.config.feature_dim)
    clip = load_toy_clip(tiny_toy_dir)
    assert clip.model.encode_text(clip.tokenizer(["a shape"])).shape == (1, clip.config.embed_dim)
    teacher = load_toy_teacher_parts(tiny_toy_dir)
    assert type(teacher.tokenizer).__name__.startswith("CLIPTokenizer")
    assert teacher.latent_shape == (3, 16, 16)
    assert teacher.scheduler_config["beta_schedule"] == "scaled_linear"


@pytest.mark.parametrize("name", list(TOY_MODELS))
def test_corrupted_checkpoint_names_the_rebuild_command(tiny_toy_dir, tmp_path, name):
    folder = tmp_path / "toy"
    shutil.copytree(tiny_toy_dir, folder)
    path = folder / TOY_MODELS[name][-1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ToyCheckpointError, match=rf"python -m bench toy train --what {name}") as err:
        load_toy_checkpoint(name, folder)
    assert "corrupted" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("name", list(TOY_MODELS))
def test_missing_checkpoint_names_the_rebuild_command(tiny_toy_dir, tmp_path, name):
    folder = tmp_path / "toy"
    shutil.copytree(tiny_toy_dir, folder)
    (folder / TOY_MODELS[name][0]).unlink()
    with pytest.raises(ToyCheckpointError, match=rf"missing; rebuild it with `python -m bench toy train --what {name}`"):
        load_toy_checkpoint(name, folder)
    (folder / MANIFEST_NAME).unlink()
    with pytest.raises(ToyCheckpointError, match=rf"python -m bench toy train --what {name}"):
        load_toy_checkpoint(name, folder)


def test_committed_toy_checkpoints_match_their_recorded_hashes():
    root = default_toy_dir()
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    total = 0
    for name, files in TOY_MODELS.items():
        ckpt = load_toy_checkpoint(name, root)  # verifies every sha256
        assert set(ckpt.tensors) == set(files)
        for file_name in files:
            assert manifest["models"][name]["files"][file_name]["sha256"] == sha256_file(root / file_name)
            total += (root / file_name).stat().st_size
    assert total <= 20 * 1024 * 1024


def test_attribute_frequencies_of_world_images_are_their_label_frequencies():
    """The committed feature network classifies world images without error (held-out accuracy 1.0 in
    hashes.json), so the attribute shares it reports for a draw are the draw's own label shares, and
    a draw with one background is reported as all that background."""
    world = load_toy_world()
    net = load_toy_feature_net()
    scenes, _ = draw_scenes(123, 400, world)
    images = torch.from_numpy(render_batch(scenes, world)).permute(0, 3, 1, 2).float()
    shares = net.attribute_frequencies(images)
    assert list(shares) == list(ATTRIBUTES)
    for attribute, share in shares.items():
        values = world.values(attribute)
        labels = [values.index(getattr(scene, attribute)) for scene in scenes]
        expected = torch.bincount(torch.tensor(labels), minlength=len(values)).float() / len(scenes)
        assert torch.allclose(share, expected, atol=1.5 / len(scenes)), attribute   # at most one miss
    black = [dataclasses.replace(scene, background="black") for scene in scenes[:100]]
    black_images = torch.from_numpy(render_batch(black, world)).permute(0, 3, 1, 2).float()
    assert net.attribute_frequencies(black_images)["background"].tolist() == [1.0, 0.0, 0.0]
