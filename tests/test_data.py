"""Tests for data/transforms.py, data/cifar10.py and data/image_folder.py (CPU, no network, seconds)."""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from data.cifar10 import CIFAR10, FOLDER_NAME, TEST_FILES, TRAIN_FILES, download_cifar10, export_png
from data.image_folder import ImageFolder
from data.transforms import CELEBA_CROP_BOX, celeba_crop, center_crop_resize, to_minus_one_one, to_uint8

# ----------------------------------------------------------------------------------------------------
# A fake CIFAR-10 in the real on-disk format
# ----------------------------------------------------------------------------------------------------

IMAGES_PER_BATCH = 3


def _fake_images(batch_index: int) -> np.ndarray:
    """(N, 3, 32, 32) uint8: image k of batch b is a solid colour plus one marked pixel at a known place."""
    images = np.zeros((IMAGES_PER_BATCH, 3, 32, 32), dtype=np.uint8)
    for k in range(IMAGES_PER_BATCH):
        images[k, 0], images[k, 1], images[k, 2] = 10 * batch_index + k, 100, 200
        # An asymmetric marker: row 2, column 5, green channel. Catches transposed or flipped readers.
        images[k, 1, 2, 5] = 255
    return images


def _write_batch(path, images: np.ndarray, labels: list[int]) -> None:
    """Write a batch exactly like the real files: protocol 2, bytes keys, b"data" (N, 3072) R|G|B planes."""
    entry = {b"batch_label": b"fake batch", b"labels": labels,
             b"data": images.reshape(len(images), 3 * 32 * 32), b"filenames": [b"x.png"] * len(images)}
    blob = pickle.dumps(entry, protocol=2)
    # The real files were written by numpy 1.x, which names numpy.core.multiarray; numpy 2 writes
    # numpy._core. Protocol 2 stores the name as "module\nname\n" text, so it can be swapped in place.
    blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path.write_bytes(blob)


def _make_cifar(root) -> None:
    folder = root / FOLDER_NAME
    folder.mkdir(parents=True)
    for b, name in enumerate(TRAIN_FILES + TEST_FILES, start=1):
        _write_batch(folder / name, _fake_images(b), labels=[(b + k) % 10 for k in range(IMAGES_PER_BATCH)])


def test_cifar_lengths_labels_and_pixels(tmp_path):
    _make_cifar(tmp_path)
    train, test = CIFAR10(tmp_path, train=True), CIFAR10(tmp_path / FOLDER_NAME, train=False)
    assert len(train) == 5 * IMAGES_PER_BATCH and len(test) == IMAGES_PER_BATCH
    assert train.labels.tolist() == [(b + k) % 10 for b in range(1, 6) for k in range(IMAGES_PER_BATCH)]
    assert test.labels.tolist() == [(6 + k) % 10 for k in range(IMAGES_PER_BATCH)]
    x = train[4]  # batch 2, image 1
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    # Solid channels: R = 10 * 2 + 1 = 21, G = 100, B = 200, mapped by 2 * u / 255 - 1.
    assert x[0, 0, 0].item() == pytest.approx(2 * 21 / 255 - 1, abs=1e-6)
    assert x[2, 31, 31].item() == pytest.approx(2 * 200 / 255 - 1, abs=1e-6)
    assert x[1, 2, 5].item() == 1.0 and x[1, 5, 2].item() == pytest.approx(2 * 100 / 255 - 1, abs=1e-6)
    # Orientation as an image: the marker is at row 2, column 5 (PIL's (x, y) = (5, 2)).
    assert Image.fromarray(to_uint8(x).permute(1, 2, 0).numpy()).getpixel((5, 2)) == (21, 255, 200)
    assert torch.equal(to_uint8(test[0]), torch.from_numpy(_fake_images(6)[0]))


def test_cifar_export_png_round_trips(tmp_path):
    _make_cifar(tmp_path / "cifar")
    test = CIFAR10(tmp_path / "cifar", train=False)
    assert export_png(test, tmp_path / "png") == IMAGES_PER_BATCH
    files = sorted((tmp_path / "png").glob("*.png"))
    assert [f.name for f in files] == ["00000.png", "00001.png", "00002.png"]
    back = np.asarray(Image.open(files[1]).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(back, test.images[1])


def test_cifar_missing_folder_names_path_and_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_cifar10") as info:
        CIFAR10(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_cifar_missing_batches_are_named(tmp_path):
    _make_cifar(tmp_path)
    (tmp_path / FOLDER_NAME / "data_batch_3").unlink()
    CIFAR10(tmp_path, train=False)  # the test split does not need it
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        CIFAR10(tmp_path, train=True)


def test_cifar_corrupt_batch_is_named(tmp_path):
    _make_cifar(tmp_path)
    bad = tmp_path / FOLDER_NAME / "test_batch"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated pickle
    with pytest.raises(ValueError) as info:
        CIFAR10(tmp_path, train=False)
    assert str(bad) in str(info.value)


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    _make_cifar(tmp_path)
    bad = tmp_path / FOLDER_NAME / "test_batch"
    bad.write_bytes(pickle.dumps({b"data": print}, protocol=2))  # would resolve __builtin__.print
    with pytest.raises(ValueError, match="refusing to load global __builtin__.print") as info:
        CIFAR10(tmp_path, train=False)
    assert str(bad) in str(info.value)


# ----------------------------------------------------------------------------------------------------
# download_cifar10 on a local archive
# ----------------------------------------------------------------------------------------------------

def _make_tarball(path, members: dict[str, bytes]) -> str:
    """Write a .tar.gz holding ``members`` (name -> content) and return its md5."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_good_md5_extracts(tmp_path):
    src = tmp_path / "src"
    _make_cifar(src)
    names = TRAIN_FILES + TEST_FILES
    archive = tmp_path / "cifar.tar.gz"
    md5 = _make_tarball(archive, {f"{FOLDER_NAME}/{n}": (src / FOLDER_NAME / n).read_bytes() for n in names})
    dest = tmp_path / "dest"
    folder = download_cifar10(dest, url=archive.as_uri(), md5=md5)
    assert folder == dest / FOLDER_NAME
    assert sorted(p.name for p in dest.iterdir()) == [FOLDER_NAME]  # the archive was deleted
    assert len(CIFAR10(dest, train=True)) == 5 * IMAGES_PER_BATCH
    # Already present: returns without touching the (now wrong) url.
    assert download_cifar10(dest, url="file:///does/not/exist", md5="0" * 32) == folder


def test_download_bad_md5_raises_and_leaves_no_file(tmp_path):
    archive = tmp_path / "cifar.tar.gz"
    md5 = _make_tarball(archive, {f"{FOLDER_NAME}/test_batch": b"abc"})
    dest = tmp_path / "dest"
    with pytest.raises(ValueError) as info:
        download_cifar10(dest, url=archive.as_uri(), md5="f" * 32)
    assert "f" * 32 in str(info.value) and md5 in str(info.value)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("name", ["/tmp/evil", "../evil", f"{FOLDER_NAME}/../../evil"])
def test_download_rejects_escaping_members(tmp_path, name):
    archive = tmp_path / "cifar.tar.gz"
    md5 = _make_tarball(archive, {name: b"abc"})
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="outside the target folder"):
        download_cifar10(dest, url=archive.as_uri(), md5=md5)
    assert list(dest.iterdir()) == [] and not (tmp_path / "evil").exists()


# ----------------------------------------------------------------------------------------------------
# ImageFolder
# ----------------------------------------------------------------------------------------------------

def _gradient(width: int, height: int) -> Image.Image:
    """RGB image whose R value is the column index and G value the row index (mod 256)."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    rgb = np.stack([xs % 256, ys % 256, np.full_like(xs, 7)], axis=-1).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(rgb)


def test_image_folder_shapes_order_and_range(tmp_path):
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    _gradient(40, 30).save(tmp_path / "b.png")
    _gradient(20, 50).save(tmp_path / "a.PNG")
    _gradient(64, 64).convert("RGBA").save(tmp_path / "nested" / "c.png")
    _gradient(33, 48).save(tmp_path / "nested" / "deeper" / "d.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path, image_size=16, crop="center")
    assert [p.relative_to(tmp_path).as_posix() for p in ds.files] == \
        ["a.PNG", "b.png", "nested/c.png", "nested/deeper/d.jpg"]
    for i in range(len(ds)):
        x = ds[i]
        assert x.dtype == torch.float32 and x.shape == (3, 16, 16)
        assert x.min() >= -1 and x.max() <= 1
    assert ds.verify() == 4


def test_center_crop_keeps_the_middle(tmp_path):
    # 40 wide, 20 tall, already at the target height: no resize, crop columns 10:30.
    _gradient(40, 20).save(tmp_path / "wide.png")
    x = ImageFolder(tmp_path, image_size=20, crop="center")[0]
    u = to_uint8(x)
    assert u[0, 0, 0].item() == 10 and u[0, 0, 19].item() == 29  # R = source column
    assert u[1, 0, 0].item() == 0 and u[1, 19, 0].item() == 19  # G = source row
    # With a resize: red | green square | blue, 200 x 100, becomes 20 x 10, then the middle 10 columns.
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    img.paste((0, 255, 0), (50, 0, 150, 100))
    img.paste((0, 0, 255), (150, 0, 200, 100))
    out = np.asarray(center_crop_resize(img, 10)).astype(int)  # (10, 10, 3)
    assert out.shape == (10, 10, 3)
    # Antialiased bilinear reaches one output pixel to each side, so only the border columns mix,
    # and symmetrically: red leaks into the left column only, blue into the right column only.
    assert (out[:, 1:9] == (0, 255, 0)).all()
    assert (out[:, 0, 0] > 0).all() and (out[:, 0, 2] == 0).all()
    assert (out[:, 9, 2] > 0).all() and (out[:, 9, 0] == 0).all()


def test_celeba_crop_box(tmp_path):
    img = _gradient(178, 218)
    crop = np.asarray(celeba_crop(img))
    assert CELEBA_CROP_BOX == (25, 57, 153, 185)
    assert crop.shape == (128, 128, 3)
    assert crop[0, 0, 0] == 25 and crop[0, 0, 1] == 57  # top-left = column 25, row 57
    assert crop[127, 127, 0] == 152 and crop[127, 127, 1] == 184
    img.save(tmp_path / "face.png")
    assert ImageFolder(tmp_path, image_size=64, crop="celeba")[0].shape == (3, 64, 64)
    # --data celeba is that folder with that crop (the CelebA-64 recipe in the README uses it)
    from data import build_dataset
    torch.testing.assert_close(build_dataset("celeba", root=str(tmp_path), image_size=64)[0],
                               ImageFolder(tmp_path, image_size=64, crop="celeba")[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="--data-root"):
        build_dataset("celeba", image_size=64)
    with pytest.raises(ValueError, match="178x218"):
        celeba_crop(_gradient(100, 100))


def test_crop_none_requires_square(tmp_path):
    _gradient(24, 24).save(tmp_path / "sq.png")
    assert ImageFolder(tmp_path, image_size=12, crop="none")[0].shape == (3, 12, 12)
    _gradient(24, 20).save(tmp_path / "wide.png")
    with pytest.raises(OSError, match="wide.png"):
        ImageFolder(tmp_path, image_size=12, crop="none")[1]


def test_image_folder_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        ImageFolder(tmp_path / "absent", image_size=8)
    assert str(tmp_path / "absent") in str(info.value)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("hi")
    with pytest.raises(FileNotFoundError) as info:
        ImageFolder(tmp_path / "empty", image_size=8)
    assert str(tmp_path / "empty") in str(info.value) and ".png" in str(info.value) and ".webp" in str(info.value)


def test_image_folder_unreadable_image_is_named(tmp_path):
    _gradient(8, 8).save(tmp_path / "a.png")
    (tmp_path / "x.png").write_bytes(b"this is not a png")
    ds = ImageFolder(tmp_path, image_size=8, crop="center")
    ds[0]
    with pytest.raises(OSError) as info:
        ds[1]
    assert str(tmp_path / "x.png") in str(info.value)
    with pytest.raises(OSError, match="1 of 2 images") as info:
        ds.verify()
    assert str(tmp_path / "x.png") in str(info.value)


def test_image_folder_bad_arguments(tmp_path):
    _gradient(8, 8).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="crop"):
        ImageFolder(tmp_path, image_size=8, crop="random")
    with pytest.raises(ValueError, match="image_size"):
        ImageFolder(tmp_path, image_size=0)


# ----------------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------------

def test_uint8_round_trip_is_exact_and_layouts_agree():
    u = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = to_minus_one_one(u)
    assert x.shape == (1, 16, 16) and x.min() == -1 and x.max() == 1
    assert torch.equal(to_uint8(x)[0], torch.from_numpy(u))
    hwc = np.random.default_rng(0).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    assert torch.equal(to_minus_one_one(hwc), to_minus_one_one(hwc.transpose(2, 0, 1), layout="CHW"))
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]  # clamped
    with pytest.raises(TypeError, match="float32"):
        to_minus_one_one(hwc.astype(np.float32))
