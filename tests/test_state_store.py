"""The on-disk store of per-item encoder states shared by IISAN and the cached
lower layers: identity of the encoder, padding of short rows, rebuilds."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from recbole_perpeft.tuners.base import CataloguePass
from recbole_perpeft.tuners.state_store import CatalogueStates, encoder_identity, store_folder


class Content:
    """Five items whose 'states' are [item id] * (item id % 3 + 1) tokens of width 2."""

    n_items = 5

    def gather(self, ids):
        return ids

    input_ids = None
    image_store = None


def compute(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    # a chunk's rows are padded to the chunk's longest, as a tokenised batch is
    longest = int((ids % 3 + 1).max())
    out = torch.zeros(len(ids), longest, 2)
    for row, item in enumerate(ids.tolist()):
        out[row, : item % 3 + 1] = float(item)
    return {"text": out}


def _store(folder, fingerprint=None, dtype="float32"):
    return CatalogueStates.build_or_load(
        str(folder),
        fingerprint or {"v": 1},
        Content(),
        compute,
        CataloguePass(batch_size=2),
        "test states",
        dtype=dtype,
        row_shape=lambda modality, value: (3, 2),
    )


def test_short_chunks_fill_the_leading_part_of_each_row(tmp_path) -> None:
    store = _store(tmp_path)
    text = store.states["text"]
    assert text.shape == (5, 3, 2)
    for item in range(5):
        length = item % 3 + 1
        np.testing.assert_array_equal(text[item, :length], np.full((length, 2), item))
        np.testing.assert_array_equal(text[item, length:], 0)
    read = store.read(torch.tensor([4, 2]), "cpu", widths={"text": 2})["text"]
    assert read.dtype == torch.float32 and read.shape == (2, 2, 2)
    np.testing.assert_array_equal(read.numpy(), text[[4, 2], :2])


def test_store_is_rebuilt_on_another_fingerprint_dtype_or_a_missing_meta(tmp_path) -> None:
    assert _store(tmp_path).rebuilt
    assert not _store(tmp_path).rebuilt
    assert _store(tmp_path, {"v": 2}).rebuilt
    half = _store(tmp_path, {"v": 2}, dtype="float16")
    assert half.rebuilt and half.states["text"].dtype == np.float16
    (tmp_path / "meta.json").unlink()  # a build interrupted before its meta file
    assert _store(tmp_path, {"v": 2}, dtype="float16").rebuilt
    with pytest.raises(ValueError, match="expected one of \\['float16', 'float32'\\]"):
        _store(tmp_path, dtype="int8")


def test_pretrained_encoders_share_states_across_seeds_random_ones_do_not() -> None:
    base = {"encoder_path": None, "dataset": "d", "content_cache_dir": "/c", "checkpoint_dir": "s"}
    pretrained = [encoder_identity({**base, "encoder_random_init": None, "seed": s}) for s in (1, 2)]
    assert pretrained[0] == pretrained[1]
    tiny = {"hidden_size": 8}
    random = [encoder_identity({**base, "encoder_random_init": tiny, "seed": s}) for s in (1, 2)]
    assert random[0] != random[1]
    folder = store_folder({**base, "seed": 1}, "lower", ["HFTextEncoder", pretrained[0]])
    assert folder.startswith("/c/d-lower-") and len(folder) == len("/c/d-lower-") + 10


def test_leftovers_of_killed_builds_are_removed_a_live_builds_kept(tmp_path) -> None:
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    dead = tmp_path / f"text.npy.tmp-{gone.pid}"
    live = tmp_path / f"text.npy.tmp-{os.getppid()}"
    dead.write_bytes(b"half")
    live.write_bytes(b"building")
    assert _store(tmp_path).rebuilt
    assert not dead.exists() and live.exists()


def test_an_unwritable_store_names_the_key(tmp_path, monkeypatch) -> None:
    from recbole_perpeft.tuners import state_store

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(state_store.os, "makedirs", refuse)
    with pytest.raises(PermissionError, match="`content_cache_dir`: cannot write the test states store"):
        _store(tmp_path / "new")


def test_the_encoder_is_moved_and_set_to_eval_only_for_a_build(tmp_path) -> None:
    class Recorder(torch.nn.Linear):
        def to(self, device):
            self.moves.append(str(device))
            return self

    encoder = Recorder(2, 2)
    encoder.moves, modes = [], []

    def compute_in(ids):
        modes.append(encoder.training)
        return compute(ids)

    def store():
        return CatalogueStates.build_or_load(
            str(tmp_path), {"v": 1}, Content(), compute_in, CataloguePass(batch_size=2),
            "test states", row_shape=lambda modality, value: (3, 2), encoder=encoder,
        )

    encoder.train()
    assert store().rebuilt
    assert encoder.moves == ["cpu", "cpu"] and modes == [False, False, False]  # 3 chunks
    assert encoder.training  # restored
    assert not store().rebuilt and encoder.moves == ["cpu", "cpu"]  # reuse: never moved
