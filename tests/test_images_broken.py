"""Every kind of broken or unusual image file: a reason, or the right pixels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from recbole_perpeft.data import images as images_mod
from recbole_perpeft.data.image_store import ImageStore
from recbole_perpeft.data.images import find_item_images, load_rgb_image

S = 32


def _save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    """Save ``img`` to ``path`` and return the path."""
    img.save(path, **kwargs)
    return path


def _truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A random RGB image (compresses badly, so truncation hits pixel data)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


def _missing(tmp: Path) -> Path:
    return tmp / "nope.jpg"


def _empty(tmp: Path) -> Path:
    p = tmp / "empty.jpg"
    p.write_bytes(b"")
    return p


def _html(tmp: Path) -> Path:
    p = tmp / "page.jpg"
    p.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>\n")
    return p


def _garbage(tmp: Path) -> Path:
    p = tmp / "garbage.png"
    p.write_bytes(np.random.default_rng(1).bytes(4096))
    return p


def _truncated_jpeg(tmp: Path) -> Path:
    return _truncate(_save(_noise((200, 150)), tmp / "cut.jpg", quality=90))


def _truncated_png(tmp: Path) -> Path:
    return _truncate(_save(_noise((200, 150)), tmp / "cut.png"))


def _header_only_png(tmp: Path) -> Path:
    return _truncate(_save(_noise((200, 150)), tmp / "head.png"), keep=0.02)


def _directory(tmp: Path) -> Path:
    p = tmp / "dir.jpg"
    p.mkdir()
    return p


BROKEN: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing file", _missing, "missing"),
    ("zero bytes", _empty, "empty"),
    ("html page saved as jpg", _html, "not_an_image"),
    ("random bytes", _garbage, "not_an_image"),
    ("truncated jpeg", _truncated_jpeg, "truncated"),
    ("truncated png", _truncated_png, "truncated"),
    ("png cut inside the first chunk", _header_only_png, "truncated"),
    ("a directory", _directory, "unreadable"),
]


@pytest.mark.parametrize("name,make,reason", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_file_gives_reason(
    tmp_path: Path, name: str, make: Callable[[Path], Path], reason: str
) -> None:
    arr, got = load_rgb_image(make(tmp_path), S)
    assert arr is None
    assert got == reason
    assert got in images_mod.REASONS


def test_none_path_is_missing() -> None:
    assert load_rgb_image(None, S) == (None, "missing")


def _p_with_transparency() -> Image.Image:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.info["transparency"] = 0
    return img


def _p_opaque() -> Image.Image:
    img = Image.new("P", (40, 40), 1)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    return img


def _i16(value: int) -> Image.Image:
    return Image.fromarray(np.full((40, 50), value, dtype=np.uint16))


def _i32(value: int) -> Image.Image:
    return Image.fromarray(np.full((40, 50), value, dtype=np.int32))


# (name, image, file name, expected pixel [R, G, B], tolerance)
GOOD: list[tuple[str, Image.Image, str, tuple[int, int, int], int]] = [
    ("rgb png", Image.new("RGB", (64, 48), (255, 0, 0)), "a.png", (255, 0, 0), 0),
    ("rgb jpeg", Image.new("RGB", (64, 48), (255, 0, 0)), "a.jpg", (255, 0, 0), 3),
    ("rgb webp", Image.new("RGB", (48, 64), (0, 255, 0)), "a.webp", (0, 255, 0), 3),
    ("grayscale L", Image.new("L", (50, 40), 128), "g.png", (128, 128, 128), 0),
    ("1-bit", Image.new("1", (50, 40), 1), "b.png", (255, 255, 255), 0),
    ("cmyk jpeg", Image.new("CMYK", (50, 40), (0, 255, 255, 0)), "c.jpg", None, 0),
    (
        "rgba transparent",
        Image.new("RGBA", (50, 40), (0, 0, 0, 0)),
        "t.png",
        (255, 255, 255),
        0,
    ),
    (
        "rgba opaque",
        Image.new("RGBA", (50, 40), (0, 0, 255, 255)),
        "o.png",
        (0, 0, 255),
        0,
    ),
    (
        "rgba half",
        Image.new("RGBA", (50, 40), (0, 0, 0, 128)),
        "h.png",
        (127, 127, 127),
        1,
    ),
    ("la transparent", Image.new("LA", (50, 40), (0, 0)), "la.png", (255, 255, 255), 0),
    ("palette transparent", _p_with_transparency(), "p.png", (255, 255, 255), 0),
    ("palette opaque", _p_opaque(), "q.png", (0, 0, 255), 0),
    ("palette gif transparent", _p_with_transparency(), "p.gif", (255, 255, 255), 0),
    ("16-bit I;16 full", _i16(65535), "i16.png", (255, 255, 255), 0),
    ("16-bit I;16 mid", _i16(257 * 100), "i16m.png", (100, 100, 100), 0),
    ("32-bit I 16-bit range", _i32(257 * 200), "i32.tif", (200, 200, 200), 0),
    ("32-bit I 8-bit range", _i32(77), "i32s.tif", (77, 77, 77), 0),
]


@pytest.mark.parametrize("name,img,fname,pixel,tol", GOOD, ids=[g[0] for g in GOOD])
def test_good_image_modes(
    tmp_path: Path,
    name: str,
    img: Image.Image,
    fname: str,
    pixel: tuple[int, int, int] | None,
    tol: int,
) -> None:
    path = tmp_path / fname
    kwargs = {"quality": 95} if fname.endswith((".jpg", ".webp")) else {}
    if "transparency" in img.info:
        kwargs["transparency"] = img.info["transparency"]
    img.save(path, **kwargs)
    arr, reason = load_rgb_image(path, S)
    assert reason is None
    assert arr is not None
    assert arr.shape == (3, S, S)
    assert arr.dtype == np.uint8
    assert arr.flags["C_CONTIGUOUS"]
    if pixel is None:  # CMYK: cyan-free, magenta+yellow = red-ish
        assert arr[0].min() > 200 and arr[1].max() < 60 and arr[2].max() < 60
        return
    expected = np.asarray(pixel, dtype=np.int16).reshape(3, 1, 1)
    assert np.abs(arr.astype(np.int16) - expected).max() <= tol


def test_grayscale_gives_equal_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(45, 70), dtype=np.uint8)
    path = _save(Image.fromarray(gray), tmp_path / "g.png")
    arr, reason = load_rgb_image(path, S)
    assert reason is None
    assert np.array_equal(arr[0], arr[1]) and np.array_equal(arr[1], arr[2])


def test_matches_torchvision_resize_and_center_crop(tmp_path: Path) -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    for size, side in [((97, 61), 32), ((61, 130), 32), ((224, 300), 224), ((5, 7), 9)]:
        img = _noise(size, seed=size[0])
        path = _save(img, tmp_path / f"n{size[0]}.png")
        arr, reason = load_rgb_image(path, side)
        assert reason is None
        ref = transforms.Compose(
            [
                transforms.Resize(
                    side, interpolation=transforms.InterpolationMode.BICUBIC
                ),
                transforms.CenterCrop(side),
            ]
        )(img)
        expected = np.asarray(ref).transpose(2, 0, 1)
        assert arr.shape == (3, side, side)
        assert np.array_equal(arr, expected), size


def test_center_crop_keeps_middle(tmp_path: Path) -> None:
    # a wide image: red left third, green middle, blue right third
    arr = np.zeros((40, 120, 3), dtype=np.uint8)
    arr[:, :40] = (255, 0, 0)
    arr[:, 40:80] = (0, 255, 0)
    arr[:, 80:] = (0, 0, 255)
    path = _save(Image.fromarray(arr), tmp_path / "wide.png")
    out, _ = load_rgb_image(path, 20)
    assert out[:, 10, 10].tolist() == [0, 255, 0]


def test_too_large_by_own_pixel_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(Image.new("RGB", (300, 200), (1, 2, 3)), tmp_path / "big.png")
    monkeypatch.setattr(images_mod, "MAX_DECODED_PIXELS", 300 * 200 - 1)
    assert load_rgb_image(path, S) == (None, "too_large")


def test_decompression_bomb_is_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(Image.new("RGB", (300, 200), (1, 2, 3)), tmp_path / "bomb.png")
    # Pillow raises DecompressionBombError above twice its own limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_rgb_image(path, S) == (None, "too_large")


def test_large_jpeg_is_drafted_not_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = Image.new("RGB", (1600, 1200), (255, 0, 0))
    path = _save(img, tmp_path / "large.jpg", quality=90)
    # too many pixels at full size, but draft mode decodes it at 1/8
    monkeypatch.setattr(images_mod, "MAX_DECODED_PIXELS", 1600 * 1200 // 16)
    arr, reason = load_rgb_image(path, S)
    assert reason is None
    assert arr.shape == (3, S, S)
    assert np.abs(arr.astype(int) - np.array([255, 0, 0]).reshape(3, 1, 1)).max() <= 3


def test_broken_images_never_crash_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths: list[str | None] = [None]
    expected: list[str | None] = [None]
    for name, make, reason in BROKEN:
        sub = tmp_path / f"b{len(paths)}"
        sub.mkdir()
        paths.append(str(make(sub)))
        expected.append(reason)
    paths.append(str(_save(Image.new("RGB", (40, 40), (9, 9, 9)), tmp_path / "ok.png")))
    expected.append(None)
    paths.append(None)
    expected.append("missing")
    with caplog.at_level("WARNING", logger="recbole_perpeft.data.image_store"):
        store = ImageStore.build_or_load(paths, S, tmp_path / "cache", num_workers=2)
    assert store.available.tolist() == [False] * (len(paths) - 2) + [True, False]
    for i, reason in enumerate(expected):
        if reason is not None:
            assert i in store.problems[reason]
    assert int(store.images[len(paths) - 2].max()) == 9
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "missing=2" in warnings[0].getMessage()


def test_find_item_images(tmp_path: Path) -> None:
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for name in ["a.png", "a.jpg", "b.webp", "c.JPEG", "d.txt"]:
        (img_dir / name).write_bytes(b"x")
    other = tmp_path / "elsewhere.png"
    other.write_bytes(b"x")
    ids = ["[PAD]", "a", "b", "c", "d", "e", "f"]
    column = [None, None, None, None, None, "pics/e.png", str(other)]
    got = find_item_images(tmp_path, ids, "images", column)
    assert got == [
        None,
        os.path.join(str(tmp_path), "images", "a.jpg"),
        os.path.join(str(tmp_path), "images", "b.webp"),
        os.path.join(str(tmp_path), "images", "c.JPEG"),
        None,
        os.path.join(str(tmp_path), "pics/e.png"),
        str(other),
    ]
    assert find_item_images(tmp_path, ["a"], None) == [None]
    # the other formats download-images may save are found too, after the main four
    for name in ["g.gif", "h.bmp", "i.tif", "i.png"]:
        (img_dir / name).write_bytes(b"x")
    assert find_item_images(tmp_path, ["g", "h", "i"], "images") == [
        os.path.join(str(tmp_path), "images", name)
        for name in ("g.gif", "h.bmp", "i.png")
    ]
    with pytest.raises(ValueError, match="image_column_values"):
        find_item_images(tmp_path, ["a", "b"], "images", [None])
