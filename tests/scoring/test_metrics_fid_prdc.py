"""Image protocol, feature extraction, FID and PRDC (bench/scoring/metrics/{features,standins,fid,prdc}.py)."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from cleanfid import fid as cleanfid_fid
from PIL import Image
from prdc import compute_prdc
from torchvision.transforms import functional as TF

from bench.core.errors import MissingResourceError, UsageError
from bench.core.fingerprint import sha256_file
from bench.scoring.metrics import features as feat
from bench.scoring.metrics import prdc as prdc_module
from bench.scoring.metrics.features import (
    ImageProtocol,
    extract_features,
    list_images,
    preprocess,
    protocol_for_suite,
)
from bench.scoring.metrics.fid import (
    feature_statistics,
    fid_folders,
    fid_from_features,
    fid_from_stats,
)
from bench.scoring.metrics.prdc import prdc
from bench.scoring.metrics.standins import standin_extractor


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCH_INCEPTION_PATH", raising=False)


def _random_image(rng: np.random.Generator, height: int, width: int, shift: float = 0.0) -> np.ndarray:
    return np.clip(rng.normal(128 + shift, 50, (height, width, 3)), 0, 255).astype(np.uint8)


def _write_pngs(folder: Path, count: int, rng: np.random.Generator, shift: float = 0.0) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        height, width = (int(v) for v in rng.integers(24, 64, 2))
        Image.fromarray(_random_image(rng, height, width, shift)).save(folder / f"{i:05d}.png")
    return folder


# ----------------------------------------------------------------------------------------------
# protocol


def test_protocol_values_per_suite():
    assert protocol_for_suite("coco2014-30k").as_dict() == {
        "resolution": 256, "center_crop_long_edge": True, "resize_filter": "lanczos", "fid_mode": "clean"}
    assert protocol_for_suite("coco2017-5k") == ImageProtocol(256, True, "lanczos", "clean")
    assert protocol_for_suite("mjhq-5k") == ImageProtocol(512, True, "lanczos", "clean")
    assert protocol_for_suite("smoke") == ImageProtocol(None, False, "none", "clean")
    with pytest.raises(UsageError, match="no image protocol for suite 'nope'"):
        protocol_for_suite("nope")
    with pytest.raises(ValueError):
        ImageProtocol(256, True, "none")
    with pytest.raises(ValueError):
        ImageProtocol(None, False, "lanczos")
    with pytest.raises(ValueError):
        ImageProtocol(256, True, "lanczos", fid_mode="legacy_tensorflow")


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (333, 500), (101, 100), (103, 100), (256, 256), (50, 40)])
def test_preprocess_is_centre_crop_then_pil_lanczos(size):
    width, height = size
    rng = np.random.default_rng(width * 1000 + height)
    array = _random_image(rng, height, width)
    pil = Image.fromarray(array)
    side = min(width, height)
    left, top = int(round((width - side) / 2.0)), int(round((height - side) / 2.0))
    expected = np.asarray(pil.crop((left, top, left + side, top + side)).resize((256, 256), Image.LANCZOS))
    # GigaGAN / DMD2's CenterCropLongEdge is torchvision's center_crop to min(size)
    gigagan = np.asarray(TF.center_crop(pil, [side, side]).resize((256, 256), Image.LANCZOS))
    protocol = protocol_for_suite("coco2014-30k")
    out_array = preprocess(array, protocol)
    out_pil = protocol.preprocess(pil)
    assert out_array.dtype == np.uint8 and out_array.shape == (256, 256, 3)
    assert out_array.tobytes() == expected.tobytes() == gigagan.tobytes()
    assert out_pil.tobytes() == expected.tobytes()


def test_preprocess_native_and_bad_input():
    rng = np.random.default_rng(0)
    array = _random_image(rng, 37, 53)
    native = protocol_for_suite("smoke")
    assert native.preprocess(array) is array
    assert np.array_equal(native.preprocess(Image.fromarray(array).convert("L")),
                          np.asarray(Image.fromarray(array).convert("L").convert("RGB")))
    mjhq = protocol_for_suite("mjhq-5k").preprocess(array)
    assert mjhq.shape == (512, 512, 3)
    with pytest.raises(ValueError, match="uint8"):
        native.preprocess(array.astype(np.float32))


# ----------------------------------------------------------------------------------------------
# extractors


def test_standin_extractor_contract_and_determinism():
    extractor = standin_extractor(seed=3)
    assert extractor.identity == "standin-random-init:3" and extractor.dim == 64
    batch = torch.rand(4, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 255
    out = extractor(batch)
    assert out.shape == (4, 64) and out.dtype == torch.float32
    assert torch.equal(out, standin_extractor(seed=3)(batch))          # same seed, same network
    assert not torch.allclose(out, standin_extractor(seed=4)(batch))   # another seed, another one
    torch.testing.assert_close(extractor(batch[:1]), out[:1], rtol=1e-5, atol=1e-6)  # rows independent


def test_inception_missing_is_one_clear_error(tmp_path, monkeypatch):
    absent = tmp_path / "nowhere" / "inception.pt"
    with pytest.raises(MissingResourceError) as info:
        feat.inception_extractor(absent, device="cpu")
    message = str(info.value)
    assert str(absent) in message and feat.INCEPTION_URL in message
    assert "--inception-path" in message and "BENCH_INCEPTION_PATH" in message
    monkeypatch.setenv("BENCH_INCEPTION_PATH", str(tmp_path / "from-env.pt"))
    with pytest.raises(MissingResourceError, match="from-env.pt"):
        feat.inception_extractor(device="cpu")


class _FakeInceptionLayers(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


class _FakeInceptionScript(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = _FakeInceptionLayers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_inception_loader_uses_local_file_of_any_name(tmp_path):
    # A TorchScript file with the layout clean-fid's InceptionV3W expects (a ``layers`` module);
    # it checks our path resolution and loading, not Inception's numbers.
    path = tmp_path / "my-inception-copy.pt"
    torch.jit.script(_FakeInceptionScript()).save(str(path))
    extractor = feat.inception_extractor(path, device="cpu")
    assert extractor.identity == f"sha256:{sha256_file(path)}" and extractor.dim == 2048
    batch = torch.full((2, 3, 299, 299), 192.0)
    assert torch.allclose(extractor(batch), torch.full((2, 2048), 0.5))  # (192 - 128) / 128


# ----------------------------------------------------------------------------------------------
# folders


def test_list_images_rules(tmp_path):
    rng = np.random.default_rng(0)
    folder = _write_pngs(tmp_path / "samples", 3, rng)
    (folder / "metadata.json").write_text("{}")
    (folder / ".00003.png.tmp").write_bytes(b"partial")
    assert [p.name for p in list_images(folder, 3, check_indices=True)] == ["00000.png", "00001.png", "00002.png"]
    with pytest.raises(UsageError, match=r"holds 3 images, expected 5; missing indices 00003, 00004"):
        list_images(folder, 5, check_indices=True)
    (folder / "notes.docx").write_bytes(b"x")
    with pytest.raises(UsageError, match="notes.docx is not an image"):
        list_images(folder)
    (folder / "notes.docx").unlink()
    (folder / "00003.png").write_text("not a png")
    with pytest.raises(UsageError, match="00003.png is not a readable image"):
        list_images(folder)
    (folder / "00003.png").unlink()
    (folder / "nested").mkdir()
    with pytest.raises(UsageError, match="subfolder 'nested'"):
        list_images(folder)
    (folder / "nested").rmdir()
    (folder / "00001.png").rename(folder / "00007.png")
    with pytest.raises(UsageError, match="not indices 0..2: missing 00001, unexpected 00007.png"):
        list_images(folder, check_indices=True)
    (folder / "00007.png").rename(folder / "img.png")
    with pytest.raises(UsageError, match="img.png .* is not named by a prompt index"):
        list_images(folder, 3, check_indices=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.json").write_text("{}")
    with pytest.raises(UsageError, match="no images in"):
        list_images(empty)
    with pytest.raises(UsageError, match="does not exist"):
        list_images(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------
# FID


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 64-d features, fewer images than dims
def test_fid_folders_equals_clean_fid_compute_fid(tmp_path):
    rng = np.random.default_rng(1)
    real = _write_pngs(tmp_path / "real", 30, rng)
    fake = _write_pngs(tmp_path / "fake", 24, rng, shift=40.0)
    extractor = standin_extractor(seed=0)
    protocol = protocol_for_suite("coco2017-5k")
    ours = fid_folders(real, fake, extractor, protocol, batch_size=8)
    reference = cleanfid_fid.compute_fid(
        str(real), str(fake), mode="clean", custom_feat_extractor=extractor,
        custom_image_tranform=protocol.preprocess, device=torch.device("cpu"), num_workers=0,
        batch_size=8, verbose=False, use_dataparallel=False)
    assert ours > 0.01
    assert ours == reference  # same float32 features, same statistics, same frechet_distance: bit-equal


def test_fid_from_features_closed_form_and_clean_fid():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((500, 8))
    shift = np.array([1.0, -2.0, 0.5, 0, 0, 0, 0, 3.0])
    # same covariance, mean shifted: FID = |shift|^2
    assert fid_from_features(real, real + shift) == pytest.approx(float(shift @ shift), abs=1e-6)
    fake = rng.standard_normal((400, 8)) * 1.5 + 0.2
    assert abs(fid_from_features(real, fake) - cleanfid_fid.fid_from_feats(real, fake)) < 1e-9
    with pytest.raises(UsageError, match="at least 2"):
        fid_from_features(real[:1], fake)


def test_statistics_and_fid_bit_equal_clean_fid_on_float32_features():
    """clean-fid (compare_folders / fid_folder / compute_fid) takes np.mean and np.cov of the float32
    features get_folder_features returns: a float32 mu, a float64 sigma. Ours are the same arrays, so
    the FID is the same float, also where a float64 mean would differ in the last bits."""
    rng = np.random.default_rng(11)
    for n, m, dim in [(500, 400, 64), (2000, 1500, 256), (60, 50, 512)]:
        real = np.abs(rng.standard_normal((n, dim))).astype(np.float32) * 3  # Inception-like: >= 0
        fake = (np.abs(rng.standard_normal((m, dim))) * 2.5 + 0.3).astype(np.float32)
        ref_stats = [(np.mean(x, axis=0), np.cov(x, rowvar=False)) for x in (real, fake)]  # clean-fid's lines
        ours = [feature_statistics(x) for x in (real, fake)]
        for (mu, sigma), (ref_mu, ref_sigma) in zip(ours, ref_stats):
            assert mu.dtype == ref_mu.dtype == np.float32 and sigma.dtype == ref_sigma.dtype == np.float64
            assert np.array_equal(mu, ref_mu) and np.array_equal(sigma, ref_sigma)
        with contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"):
            expected = cleanfid_fid.frechet_distance(*ref_stats[0], *ref_stats[1])
            assert fid_from_stats(*ours[0], *ours[1]) == expected
            assert fid_from_features(real, fake) == expected == cleanfid_fid.fid_from_feats(real, fake)
        # the float64 mean of the old code is not bit-equal to clean-fid's float32 one
        old = fid_from_stats(real.astype(np.float64).mean(0), ref_stats[0][1],
                             fake.astype(np.float64).mean(0), ref_stats[1][1])
        print(f"N={n}/{m} dim={dim}: FID {expected!r}; float64 mean: {abs(old - expected) / expected:.2g} rel off")


def test_extract_features_matches_direct_call(tmp_path):
    rng = np.random.default_rng(3)
    folder = _write_pngs(tmp_path / "imgs", 5, rng)
    files = list_images(folder)
    extractor = standin_extractor(seed=1)
    protocol = protocol_for_suite("coco2014-30k")
    got = extract_features(files, extractor, protocol, batch_size=2, progress=False)
    # by hand: protocol crop/resize -> clean-fid's clean resize -> extractor
    from cleanfid.resize import build_resizer
    resize = build_resizer("clean")
    batch = torch.stack([torch.from_numpy(resize(protocol.preprocess(Image.open(f).convert("RGB"))).transpose(2, 0, 1))
                         for f in files])
    assert batch.dtype == torch.float32 and float(batch.max()) <= 255.0 and batch.shape[2:] == (299, 299)
    np.testing.assert_allclose(got, extractor(batch).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size,num_workers", [(2, 0), (3, 2)])
def test_extract_features_equals_clean_fid_get_files_features(tmp_path, batch_size, num_workers):
    """Our loop (page-locked on a GPU, sharded under accelerate) is clean-fid's, bit for bit."""
    rng = np.random.default_rng(4)
    files = [str(f) for f in list_images(_write_pngs(tmp_path / "imgs", 7, rng))]
    extractor = standin_extractor(seed=2)
    protocol = protocol_for_suite("coco2014-30k")
    got = extract_features(files, extractor, protocol, batch_size=batch_size, num_workers=num_workers,
                           progress=False)
    expected = cleanfid_fid.get_files_features(files, model=extractor, num_workers=0, batch_size=batch_size,
                                               device=extractor.device, mode="clean", verbose=False,
                                               custom_image_tranform=protocol.preprocess)
    assert got.dtype == np.float32 and got.shape == expected.shape == (7, extractor.dim)
    np.testing.assert_array_equal(got, expected)


# ----------------------------------------------------------------------------------------------
# PRDC


def _reference_prdc(real, fake, k):
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the sample counts
        return compute_prdc(real, fake, k)


def _assert_same(ours, reference):
    assert set(ours) == set(reference) == {"precision", "recall", "density", "coverage"}
    for key in reference:
        assert abs(ours[key] - float(reference[key])) < 1e-6, (key, ours, reference)


def _cases():
    rng = np.random.default_rng(7)
    cases = []
    for k, (n, m, dim) in zip([1, 3, 5, 5, 3, 1], [(60, 45, 2), (120, 90, 16), (200, 150, 64),
                                                   (80, 130, 3), (150, 150, 32), (40, 70, 8)]):
        real = rng.standard_normal((n, dim)).astype(np.float32)
        fake = (rng.standard_normal((m, dim)) * 1.2 + 0.3).astype(np.float32)
        cases.append((f"gauss-k{k}-{n}x{m}x{dim}", real, fake, k))
    # integer grid: exact distance ties everywhere, duplicated points, zero radii
    for k in (1, 3, 5):
        real = rng.integers(0, 3, (90, 4)).astype(np.float32)
        fake = rng.integers(0, 3, (70, 4)).astype(np.float32)
        cases.append((f"grid-k{k}", real, fake, k))
    # duplicates: repeated real points, fake copies of real points
    real = rng.standard_normal((100, 12)).astype(np.float32)
    real[50:] = real[:50]
    fake = np.concatenate([real[:30], rng.standard_normal((50, 12)).astype(np.float32)])
    for k in (1, 3):
        cases.append((f"dup-k{k}", real, fake, k))
    # float64 inputs and a mixed float32 / float64 pair
    real64 = rng.standard_normal((110, 10))
    fake64 = rng.standard_normal((95, 10)) + 0.5
    cases.append(("float64", real64, fake64, 3))
    cases.append(("mixed", real64.astype(np.float32), fake64, 3))
    return cases


@pytest.mark.parametrize("name,real,fake,k", _cases(), ids=[c[0] for c in _cases()])
def test_prdc_matches_prdc_package(name, real, fake, k):
    reference = _reference_prdc(real, fake, k)
    _assert_same(prdc(real, fake, k, device="cpu"), reference)
    _assert_same(prdc(real, fake, k, chunk_size=7, device="cpu"), reference)  # many small chunks
    _assert_same(prdc(torch.from_numpy(real), torch.from_numpy(fake), k, device="cpu"), reference)


def test_prdc_same_array_and_float64_estimate_path():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((80, 6)).astype(np.float32)
    _assert_same(prdc(x, x, 3, device="cpu"), _reference_prdc(x, x, 3))  # sklearn zeroes the diagonal
    real = rng.standard_normal((70, 20)).astype(np.float32)
    fake = rng.standard_normal((60, 20)).astype(np.float32)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # float32 GEMMs not IEEE: the float64 estimate is used
    try:
        _assert_same(prdc(real, fake, 5, chunk_size=16, device="cpu"), _reference_prdc(real, fake, 5))
    finally:
        torch.set_float32_matmul_precision(previous)


def _near_tie_cases():
    """Clustered features full of exact and near ties: tight clusters whose offsets lie on a grid
    (steps of 1/256 to 1/16), so many distances within a cluster are equal or nearly equal and
    many k-NN radii tie with real-fake distances; the fake set is shifted by one grid step. The
    finest grid leaves every comparison to the exact refinement, the coarser ones only some."""
    rng = np.random.default_rng(21)
    cases = []
    for dim, clusters, k, step in [(8, 5, 3, 1 / 256), (32, 8, 5, 1 / 32), (128, 6, 5, 1 / 16)]:
        centres = rng.standard_normal((clusters, dim)) * 4

        def draw(count, shift):
            offsets = np.round(rng.standard_normal((count, dim)) * 2) * step
            return (centres[rng.integers(0, clusters, count)] + offsets + shift).astype(np.float32)

        cases.append((f"clustered-{dim}d-k{k}", draw(300, 0.0), draw(260, step), k))
    return cases


@pytest.mark.parametrize("name,real,fake,k", _near_tie_cases(), ids=[c[0] for c in _near_tie_cases()])
def test_prdc_matches_prdc_package_on_clustered_near_ties(name, real, fake, k):
    reference = _reference_prdc(real, fake, k)
    _assert_same(prdc(real, fake, k, device="cpu"), reference)
    _assert_same(prdc(real, fake, k, chunk_size=37, device="cpu"), reference)


def test_prdc_dense_blocks_are_batched(monkeypatch):
    """Blocks where most entries are selected (hundreds of duplicates: zero radii, all-tied k-NN
    lists) are processed in several batches of entries; the results stay prdc's."""
    rng = np.random.default_rng(5)
    point = rng.standard_normal(16)
    real = np.concatenate([np.tile(point, (700, 1)), rng.standard_normal((200, 16))]).astype(np.float32)
    fake = np.concatenate([np.tile(point, (600, 1)), rng.standard_normal((200, 16)) * 0.5]).astype(np.float32)
    real, fake = real[rng.permutation(900)], fake[rng.permutation(800)]
    batches = []
    original = prdc_module._hits

    def counting_hits(*args, **kwargs):
        found = list(original(*args, **kwargs))
        batches.append(len(found))
        return iter(found)

    monkeypatch.setattr(prdc_module, "_hits", counting_hits)
    _assert_same(prdc(real, fake, 5, chunk_size=300, device="cpu"), _reference_prdc(real, fake, 5))
    assert max(batches) > 1  # at least one block exceeded the per-batch entry limit


def test_prdc_torch_kernels_match(monkeypatch):
    """The CUDA code path (torch block kernels instead of numpy), run here on CPU tensors, with the
    float32 and the float64 estimate."""
    monkeypatch.setattr(prdc_module, "_host_kernels", lambda device: False)
    cases = [c for c in _cases() if c[0].startswith(("gauss-k5", "grid", "dup-k3", "float64", "mixed"))]
    for name, real, fake, k in cases + _near_tie_cases()[:1]:
        reference = _reference_prdc(real, fake, k)
        _assert_same(prdc(real, fake, k, device="cpu"), reference)
        _assert_same(prdc(real, fake, k, chunk_size=7, device="cpu"), reference)
    x = np.random.default_rng(3).standard_normal((80, 6)).astype(np.float32)
    _assert_same(prdc(x, x, 3, device="cpu"), _reference_prdc(x, x, 3))
    real, fake = _cases()[1][1:3]
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        _assert_same(prdc(real, fake, 3, chunk_size=16, device="cpu"), _reference_prdc(real, fake, 3))
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prdc_on_cuda_matches():
    rng = np.random.default_rng(12)
    real = rng.standard_normal((300, 64)).astype(np.float32)
    fake = rng.standard_normal((250, 64)).astype(np.float32) + 0.2
    _assert_same(prdc(real, fake, 5, device="cuda"), _reference_prdc(real, fake, 5))
    grid_r = rng.integers(0, 3, (90, 4)).astype(np.float32)
    grid_f = rng.integers(0, 3, (70, 4)).astype(np.float32)
    _assert_same(prdc(grid_r, grid_f, 3, device="cuda"), _reference_prdc(grid_r, grid_f, 3))


def test_prdc_rejects_bad_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    with pytest.raises(UsageError, match="needs more than 5"):
        prdc(x[:5], x, 5)
    with pytest.raises(UsageError, match="differ in dimension"):
        prdc(x, x[:, :3], 2)
    with pytest.raises(UsageError, match="nearest_k"):
        prdc(x, x, 0)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(UsageError, match="NaN"):
        prdc(bad, x, 2)
