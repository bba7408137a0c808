"""Known answers and invariants for the FID Inception, the Frechet distance, stats files and SSIM.

Golden data (``tests/data/golden``, see its README) come from pytorch-fid and pytorch_msssim; they ship with
the repository, so a missing file fails the test instead of skipping it. The Inception is checked with the README's RECIPE weights because
the real weights file cannot be fetched here; no test touches the network.
"""
from __future__ import annotations

import math
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metrics.fid import (FeatureStats, InvalidStatsFile, cached_folder_stats, compute_stats, frechet_distance,
                         load_stats, save_stats, stats_for_folder, stats_from_features)
from metrics.ssim import consistency, ssim
from metrics.inception import (FIDInceptionV3, InceptionWeightsMismatch, InceptionWeightsUnavailable,
                              fid_weights_cache_path, load_fid_inception)

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "golden"
LAYOUT = DATA / "reference" / "fid_inception_layout.txt"


def golden(name: str) -> np.lib.npyio.NpzFile:
    path = GOLDEN / name
    # Part of the repository (tests/data/golden/README.md): a missing file is a failure, never a skip.
    assert path.is_file(), f"golden file {path} is absent (tests/data/golden is part of the repository)"
    return np.load(path)


def read_layout() -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) per line of the reference layout, in file order."""
    assert LAYOUT.is_file(), f"reference layout {LAYOUT} is absent (tests/data/reference is part of the repository)"
    layout = []
    for line in LAYOUT.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split(" ", 1)
        layout.append((name, tuple(int(s) for s in shape.strip("() ").split(",") if s.strip())))
    return layout


def recipe_state_dict(layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """The golden README's RECIPE weights: tensor i of the layout drawn from Generator seed 1000 + i."""
    state = {}
    for i, (name, shape) in enumerate(layout):
        g = torch.Generator().manual_seed(1000 + i)
        if name.endswith("num_batches_tracked"):
            t = torch.zeros(shape, dtype=torch.long)
        elif name.endswith("conv.weight") or name == "fc.weight":
            t = torch.randn(shape, generator=g) * math.sqrt(2 / math.prod(shape[1:]))
        elif name == "fc.bias":
            t = torch.zeros(shape)
        elif name.endswith("bn.weight"):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("bn.bias") or name.endswith("bn.running_mean"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("bn.running_var"):
            t = 1 + 0.1 * torch.rand(shape, generator=g)
        else:
            raise KeyError(f"no recipe for tensor {name}")
        state[name] = t
    return state


@pytest.fixture(scope="module")
def recipe_inception() -> FIDInceptionV3:
    model = FIDInceptionV3()
    model.load_state_dict(recipe_state_dict(read_layout()), strict=True)
    return model.eval()


def max_rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref|: relative to the feature scale, so near-zero features don't dominate."""
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


# ----------------------------------------------------------------------------- Inception

def test_inception_state_dict_matches_reference_layout():
    layout = read_layout()
    ours = [(k, tuple(v.shape)) for k, v in FIDInceptionV3().state_dict().items()]
    assert ours == layout  # names, order and shapes


@pytest.mark.parametrize("size", [32, 299])
def test_inception_features_match_pytorch_fid(recipe_inception, size):
    data = golden("fid_inception.npz")
    images = torch.from_numpy(data[f"images_{size}"]).float() / 255.0
    with torch.no_grad():
        feats = recipe_inception(images).numpy()
    err = max_rel_error(feats, data[f"features_{size}"])
    print(f"features_{size}: max|ours - golden| / max|golden| = {err:.3g}")
    assert feats.shape == (len(images), 2048)
    assert err < 1e-4


def test_inception_rejects_images_outside_unit_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FIDInceptionV3()(torch.full((1, 3, 32, 32), -1.0))


def test_weights_file_with_wrong_shape_names_the_tensor(tmp_path):
    state = FIDInceptionV3().state_dict()
    state["Mixed_6b.branch7x7_2.conv.weight"] = torch.zeros(128, 128, 7, 1)  # transposed kernel
    del state["fc.bias"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(InceptionWeightsMismatch) as err:
        load_fid_inception(path)
    message = str(err.value)
    assert "Mixed_6b.branch7x7_2.conv.weight" in message and "(128, 128, 7, 1)" in message
    assert "missing" in message and "fc.bias" in message and str(path) in message


@pytest.fixture
def hub_dir(tmp_path):
    """Point the torch hub cache at an empty tmp folder for the test, then restore it."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def test_offline_without_weights_raises_with_instructions(hub_dir, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(InceptionWeightsUnavailable) as err:
        load_fid_inception()
    message = str(err.value)
    assert str(fid_weights_cache_path()) in message and str(hub_dir) in message
    assert "weights_path" in message and "pt_inception-2015-12-05-6726825d.pth" in message
    with pytest.raises(InceptionWeightsUnavailable, match="does not exist"):
        load_fid_inception(hub_dir / "nowhere.pth")


def test_weights_found_in_hub_cache(hub_dir, monkeypatch):
    def must_not_download(*args, **kwargs):
        raise AssertionError("the cached file should have been used")

    monkeypatch.setattr(torch.hub, "download_url_to_file", must_not_download)
    state = FIDInceptionV3().state_dict()
    fid_weights_cache_path().parent.mkdir(parents=True)
    torch.save(state, fid_weights_cache_path())
    model = load_fid_inception()
    assert not model.training
    assert torch.equal(model.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])


# ----------------------------------------------------------------------------- Frechet distance and stats

def test_frechet_distance_matches_pytorch_fid():
    data = golden("frechet.npz")
    mu_a, sigma_a = stats_from_features(data["feats_a"])
    np.testing.assert_allclose(mu_a, data["mu_a"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma_a, data["sigma_a"], rtol=0, atol=1e-12)
    d = frechet_distance(data["mu_a"], data["sigma_a"], data["mu_b"], data["sigma_b"])
    print(f"frechet: ours {d!r} golden {float(data['frechet_distance'])!r}")
    assert d == pytest.approx(float(data["frechet_distance"]), rel=1e-9)


def test_streamed_stats_equal_np_cov():
    rng = np.random.default_rng(0)
    feats = 50.0 + rng.normal(size=(203, 8))  # large mean: the case that breaks naive sum-of-squares
    stats = FeatureStats()
    for start in range(0, len(feats), 64):
        stats.update(torch.from_numpy(feats[start:start + 64]))  # float64 tensors in, as features may arrive
    mu, sigma = stats.mean_cov()
    np.testing.assert_allclose(mu, feats.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=0, atol=1e-10)


def test_fid_invariants():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a = rng.normal(size=(6, 6))
    sigma = a @ a.T + np.eye(6)
    b = rng.normal(size=(6, 6))
    sigma2 = b @ b.T + 0.5 * np.eye(6)
    assert abs(frechet_distance(mu1, sigma, mu1, sigma)) < 1e-8  # a set against itself
    # equal covariances: the trace terms cancel and only ||mu1 - mu2||^2 is left
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(float(np.sum((mu1 - mu2) ** 2)), rel=1e-8)
    assert frechet_distance(mu1, sigma, mu2, sigma2) == pytest.approx(frechet_distance(mu2, sigma2, mu1, sigma), rel=1e-8)


def test_fid_non_finite_sqrtm_retries_with_offset(monkeypatch):
    # A product of two PSD matrices is always diagonalizable, so sqrtm only fails numerically (large,
    # rank-deficient covariances); stand in for that failure with an inf on the first call.
    import metrics.fid as fid

    calls = []

    def flaky_sqrtm(product):
        calls.append(product)
        return np.full_like(product, np.inf) if len(calls) == 1 else np.eye(len(product))

    monkeypatch.setattr(fid.scipy.linalg, "sqrtm", flaky_sqrtm)
    sigma1, sigma2, mu = np.diag([2.0, 0.0]), np.diag([0.0, 3.0]), np.zeros(2)
    with pytest.warns(RuntimeWarning, match="adding 0.5 \\* I"):
        d = frechet_distance(mu, sigma1, mu, sigma2, eps=0.5)
    np.testing.assert_array_equal(calls[1], (sigma1 + 0.5 * np.eye(2)) @ (sigma2 + 0.5 * np.eye(2)))
    assert d == pytest.approx(2.0 + 3.0 - 2 * 2.0)  # traces of the ORIGINAL covariances, Tr(I) = 2


def test_fid_rejects_large_imaginary_sqrtm():
    # sqrtm(-I) = i I: an imaginary part of 1 is not round-off
    with pytest.raises(ValueError, match="imaginary component of 1"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2))


def test_fid_of_set_against_itself_from_features():
    feats = np.random.default_rng(2).normal(size=(300, 10))
    mu, sigma = stats_from_features(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_stats_round_trip_and_pytorch_fid_format(tmp_path):
    mu, sigma = stats_from_features(np.random.default_rng(3).normal(size=(40, 5)))
    path = tmp_path / "ref.npz"
    save_stats(path, mu, sigma)
    with np.load(path) as raw:  # what pytorch-fid reads: f["mu"], f["sigma"]
        assert set(raw.files) == {"mu", "sigma"}
        np.testing.assert_array_equal(raw["mu"], mu)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, mu=mu.astype(np.float32), sigma=sigma)  # as pytorch-fid --save-stats writes it
    for p in (path, foreign):
        mu2, sigma2 = load_stats(p)
        assert mu2.dtype == np.float64
        np.testing.assert_allclose(mu2, mu, rtol=1e-6)
        np.testing.assert_array_equal(sigma2, sigma)
    with pytest.raises(ValueError, match=r"\.npz"):
        save_stats(tmp_path / "ref.stats", mu, sigma)


def test_bad_stats_files_name_file_and_key(tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(InvalidStatsFile, match="corrupt.npz"):
        load_stats(corrupt)
    no_sigma = tmp_path / "no_sigma.npz"
    np.savez(no_sigma, mu=np.zeros(4))
    with pytest.raises(InvalidStatsFile, match=r"no_sigma\.npz has no key 'sigma'"):
        load_stats(no_sigma)
    bad_shape = tmp_path / "bad_shape.npz"
    np.savez(bad_shape, mu=np.zeros(4), sigma=np.zeros((3, 3)))
    with pytest.raises(InvalidStatsFile, match=r"bad_shape\.npz.*sigma \(3, 3\)"):
        load_stats(bad_shape)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_stats(tmp_path / "missing.npz")


class MeanColour(torch.nn.Module):
    """Mock feature extractor: (B, 3, H, W) -> (B, 6) channel means and standard deviations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def test_compute_stats_accepts_tensor_dataset_and_stream():
    images = torch.rand(23, 3, 16, 16)
    expected = stats_from_features(MeanColour()(images))
    as_dataset = torch.utils.data.TensorDataset(images, torch.zeros(23))  # (image, label) items
    as_stream = (images[i:i + 5] for i in range(0, 23, 5))
    for source in (images, as_dataset, as_stream):
        mu, sigma = compute_stats(source, MeanColour(), batch_size=7, progress=False)
        np.testing.assert_allclose(mu, expected[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(sigma, expected[1], rtol=0, atol=1e-6)


def write_pngs(folder: Path, images: torch.Tensor) -> None:
    for i, img in enumerate(images):
        sub = folder / ("a" if i % 2 else "b")  # nested, to check the recursive listing
        sub.mkdir(parents=True, exist_ok=True)
        pixels = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(sub / f"{i:03d}.png")


def test_stats_for_folder(tmp_path):
    images = torch.rand(5, 3, 12, 12)
    write_pngs(tmp_path / "samples", images)
    quantised = (images * 255).round() / 255
    expected = stats_from_features(MeanColour()(quantised))
    mu, sigma = stats_for_folder(tmp_path / "samples", MeanColour(), batch_size=2, progress=False)
    np.testing.assert_allclose(mu, expected[0], atol=1e-6)
    np.testing.assert_allclose(sigma, expected[1], atol=1e-6)


def test_cached_folder_stats_are_keyed_by_folder_and_weights(tmp_path):
    write_pngs(tmp_path / "a", torch.rand(4, 3, 12, 12))
    write_pngs(tmp_path / "b", torch.rand(4, 3, 12, 12))
    net = MeanColour()
    net.weights_sha256 = "1" * 64
    cache = tmp_path / "run" / "ref.npz"
    cache.parent.mkdir()
    first = cached_folder_stats(tmp_path / "a", net, cache)
    np.testing.assert_array_equal(first[0], stats_for_folder(tmp_path / "a", net, progress=False)[0])
    (tmp_path / "a" / "b" / "000.png").unlink()  # a rerun reads the cache, not the folder
    np.testing.assert_array_equal(cached_folder_stats(tmp_path / "a", net, cache)[1], first[1])
    with pytest.raises(ValueError, match="other data or Inception weights"):
        cached_folder_stats(tmp_path / "b", net, cache)
    net.weights_sha256 = "2" * 64
    with pytest.raises(ValueError, match="other data or Inception weights"):
        cached_folder_stats(tmp_path / "a", net, cache)


def test_folder_with_too_few_images_raises(tmp_path):
    write_pngs(tmp_path / "one", torch.rand(1, 3, 12, 12))
    with pytest.raises(ValueError, match=r"one holds 1 PNG/JPEG images, need at least 2"):
        stats_for_folder(tmp_path / "one", MeanColour(), progress=False)
    write_pngs(tmp_path / "three", torch.rand(3, 3, 12, 12))
    with pytest.raises(ValueError, match=r"three holds 3 .* need at least 10"):
        stats_for_folder(tmp_path / "three", MeanColour(), min_images=10, progress=False)


# ----------------------------------------------------------------------------- SSIM

@pytest.mark.parametrize("size", [32, 64])
def test_ssim_matches_pytorch_msssim(size):
    data = golden("ssim.npz")
    ours = ssim(torch.from_numpy(data[f"a_{size}"]), torch.from_numpy(data[f"b_{size}"]), data_range=1.0).numpy()
    err = float(np.abs(ours - data[f"ssim_{size}"]).max())
    print(f"ssim_{size}: max abs error {err:.3g}")
    assert err < 1e-5


def test_ssim_invariants():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 3, 24, 24, generator=g)
    b = (a + 0.1 * torch.randn(4, 3, 24, 24, generator=g)).clamp(0, 1)
    c = (a + 0.3 * torch.randn(4, 3, 24, 24, generator=g)).clamp(0, 1)
    torch.testing.assert_close(ssim(a, a), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(ssim(a, b), ssim(b, a), rtol=0, atol=1e-12)
    assert (ssim(a, c) < ssim(a, b)).all() and (ssim(a, b) < 0.999).all()  # more noise, lower SSIM
    assert consistency(a, b, batch_size=3) == pytest.approx(float(ssim(a, b).mean()), rel=1e-12)


def test_ssim_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 17))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(2, 3, 10, 16), torch.rand(2, 3, 10, 16))
