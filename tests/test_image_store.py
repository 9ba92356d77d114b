"""The memory-mapped image store: build, reuse, rebuild, gather."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recbole_perpeft.data import image_store as store_mod
from recbole_perpeft.data import images as images_mod
from recbole_perpeft.data.image_store import ImageStore

S = 16


def _make_items(folder: Path, n: int) -> list[str | None]:
    """Padding + ``n`` solid-colour PNGs; item ``i`` has red value ``10 * i``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[str | None] = [None]
    for i in range(1, n + 1):
        p = folder / f"{i}.png"
        Image.new("RGB", (24 + i, 20), (10 * i, 5, 200)).save(p)
        paths.append(str(p))
    return paths


class _CountingLoader:
    """Wraps ``load_rgb_image`` and counts calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._real = images_mod.load_rgb_image

    def __call__(
        self, path: str | os.PathLike | None, image_size: int
    ) -> tuple[np.ndarray | None, str | None]:
        self.calls += 1
        return self._real(path, image_size)


@pytest.fixture()
def counter(monkeypatch: pytest.MonkeyPatch) -> _CountingLoader:
    loader = _CountingLoader()
    monkeypatch.setattr(images_mod, "load_rgb_image", loader)
    return loader


def test_build_contents_and_types(tmp_path: Path, counter: _CountingLoader) -> None:
    paths = _make_items(tmp_path / "img", 6) + [None]
    store = ImageStore.build_or_load(paths, S, tmp_path / "cache")
    assert store.rebuilt
    assert counter.calls == 6
    assert isinstance(store.images, np.memmap)
    assert store.images.dtype == np.uint8
    assert store.images.shape == (8, 3, S, S)
    assert not store.images.flags.writeable
    assert store.available.dtype == np.bool_
    assert store.available.tolist() == [False] + [True] * 6 + [False]
    assert store.problems == {"missing": [7]}
    assert not store.images[0].any() and not store.images[7].any()
    for i in range(1, 7):
        assert (store.images[i, 0] == 10 * i).all()
        assert (store.images[i, 1] == 5).all() and (store.images[i, 2] == 200).all()
    npy, meta_path = ImageStore.file_names(tmp_path / "cache", S)
    meta = json.loads(Path(meta_path).read_text())
    assert meta["n_items"] == 8 and meta["image_size"] == S
    assert meta["problem_counts"] == {"missing": 1}
    assert not [f for f in os.listdir(tmp_path / "cache") if ".tmp-" in f]


def test_row_zero_never_available(tmp_path: Path) -> None:
    paths = _make_items(tmp_path / "img", 2)
    paths[0] = paths[1]  # a path given for padding is ignored
    store = ImageStore.build_or_load(paths, S, tmp_path / "cache")
    assert not store.available[0]
    assert not store.images[0].any()


def test_reuse_without_rebuilding(tmp_path: Path, counter: _CountingLoader) -> None:
    paths = _make_items(tmp_path / "img", 5)
    first = ImageStore.build_or_load(paths, S, tmp_path / "cache")
    npy, _ = ImageStore.file_names(tmp_path / "cache", S)
    mtime = os.stat(npy).st_mtime_ns
    calls = counter.calls
    second = ImageStore.build_or_load(paths, S, tmp_path / "cache")
    assert not second.rebuilt
    assert counter.calls == calls
    assert os.stat(npy).st_mtime_ns == mtime
    assert second.fingerprint == first.fingerprint
    assert np.array_equal(np.asarray(second.images), np.asarray(first.images))
    assert second.available.tolist() == first.available.tolist()


def test_rebuild_when_an_image_changes(
    tmp_path: Path, counter: _CountingLoader
) -> None:
    paths = _make_items(tmp_path / "img", 4)
    ImageStore.build_or_load(paths, S, tmp_path / "cache")
    Image.new("RGB", (30, 30), (0, 255, 0)).save(paths[2])
    st = os.stat(paths[2])
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = counter.calls
    store = ImageStore.build_or_load(paths, S, tmp_path / "cache")
    assert store.rebuilt
    assert counter.calls == calls + 4
    assert store.images[2, :, 0, 0].tolist() == [0, 255, 0]


def test_rebuild_when_only_mtime_changes(tmp_path: Path) -> None:
    paths = _make_items(tmp_path / "img", 3)
    ImageStore.build_or_load(paths, S, tmp_path / "cache")
    st = os.stat(paths[1])
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    assert ImageStore.build_or_load(paths, S, tmp_path / "cache").rebuilt


def test_rebuild_when_an_image_disappears(tmp_path: Path) -> None:
    paths = _make_items(tmp_path / "img", 3)
    ImageStore.build_or_load(paths, S, tmp_path / "cache")
    os.remove(paths[3])
    store = ImageStore.build_or_load(paths, S, tmp_path / "cache")
    assert store.rebuilt
    assert store.problems == {"missing": [3]}
    assert store.available.tolist() == [False, True, True, False]


def test_rebuild_when_image_size_changes(
    tmp_path: Path, counter: _CountingLoader
) -> None:
    paths = _make_items(tmp_path / "img", 3)
    ImageStore.build_or_load(paths, S, tmp_path / "cache")
    store = ImageStore.build_or_load(paths, 8, tmp_path / "cache")
    assert store.rebuilt
    assert store.images.shape == (4, 3, 8, 8)
    assert counter.calls == 6


def test_rebuild_when_store_is_corrupt(tmp_path: Path) -> None:
    paths = _make_items(tmp_path / "img", 3)
    ImageStore.build_or_load(paths, S, tmp_path / "cache")
    npy, _ = ImageStore.file_names(tmp_path / "cache", S)
    Path(npy).write_bytes(b"not a numpy file")
    store = ImageStore.build_or_load(paths, S, tmp_path / "cache")
    assert store.rebuilt
    assert (store.images[1, 0] == 10).all()


def test_interrupted_build_leaves_no_valid_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _make_items(tmp_path / "img", 4)
    ImageStore.build_or_load(paths, S, tmp_path / "cache")
    Image.new("RGB", (30, 30), (0, 0, 0)).save(paths[1])
    os.utime(paths[1], ns=(1, 1))

    def boom(path: str | os.PathLike | None, image_size: int) -> tuple:
        raise KeyboardInterrupt

    monkeypatch.setattr(images_mod, "load_rgb_image", boom)
    with pytest.raises(KeyboardInterrupt):
        ImageStore.build_or_load(paths, S, tmp_path / "cache", num_workers=1)
    assert not [f for f in os.listdir(tmp_path / "cache") if ".tmp-" in f]
    monkeypatch.undo()
    store = ImageStore.build_or_load(paths, S, tmp_path / "cache")
    assert store.rebuilt
    assert not store.images[1].any()


def test_gather(tmp_path: Path) -> None:
    paths = _make_items(tmp_path / "img", 6)
    store = ImageStore.build_or_load(paths, S, tmp_path / "cache", num_workers=2)
    ids = torch.tensor([3, 0, 6, 3])
    out = store.gather(ids)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.uint8 and out.shape == (4, 3, S, S)
    assert out[:, 0, 0, 0].tolist() == [30, 0, 60, 30]
    out[0].zero_()  # a copy: the store is untouched
    assert (store.images[3, 0] == 30).all()
    grid = store.gather(np.array([[1, 2], [0, 5]]))
    assert grid.shape == (2, 2, 3, S, S)
    assert grid[1, 1, 0, 0, 0].item() == 50
    assert store.gather(torch.tensor([], dtype=torch.long)).shape == (0, 3, S, S)
    mask = store.available_mask(torch.tensor([[0, 1], [6, 2]]))
    assert mask.tolist() == [[False, True], [True, True]]
    with pytest.raises(IndexError, match="item ids must lie in"):
        store.gather(torch.tensor([7]))


def test_parallel_equals_serial(tmp_path: Path) -> None:
    paths = _make_items(tmp_path / "img", 12)
    one = ImageStore.build_or_load(paths, S, tmp_path / "c1", num_workers=1)
    two = ImageStore.build_or_load(paths, S, tmp_path / "c2", num_workers=2)
    assert np.array_equal(np.asarray(one.images), np.asarray(two.images))
    assert one.fingerprint == two.fingerprint


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        ImageStore.build_or_load([None], 0, tmp_path)
    with pytest.raises(ValueError, match="num_workers"):
        ImageStore.build_or_load([None], S, tmp_path, num_workers=0)
    with pytest.raises(ValueError, match="image_paths"):
        ImageStore.build_or_load([], S, tmp_path)


def test_fingerprint_depends_on_inputs(tmp_path: Path) -> None:
    paths = _make_items(tmp_path / "img", 2)
    base = store_mod.compute_fingerprint(paths, S)
    assert store_mod.compute_fingerprint(paths, S) == base
    assert store_mod.compute_fingerprint(paths, S + 1) != base
    assert store_mod.compute_fingerprint(paths[:2] + [None], S) != base


def test_show_progress_runs(tmp_path: Path) -> None:
    paths = _make_items(tmp_path / "img", 3)
    store = ImageStore.build_or_load(paths, S, tmp_path / "cache", show_progress=True)
    assert store.available.sum() == 3
