"""The synthetic multimodal dataset generator."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recbole_perpeft.data import synthetic
from recbole_perpeft.data.synthetic import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(n_items=150, n_users=100, n_groups=5, seq_len=(6, 10), image_size=16)


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a tab-separated file."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return rows[0], rows[1:]


def _make(out: Path, **kwargs: object) -> dict:
    """Generate a small dataset into ``out``."""
    return make_synthetic_dataset(out, **{**SMALL, **kwargs})


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_files_other_seed_differs(tmp_path: Path) -> None:
    _make(tmp_path / "a", seed=3)
    _make(tmp_path / "b", seed=3, num_workers=2)
    _make(tmp_path / "c", seed=4)
    for fname in ["synthetic.inter", "synthetic.item", "groups.tsv"]:
        assert _digest(tmp_path / "a" / fname) == _digest(tmp_path / "b" / fname)
        assert _digest(tmp_path / "a" / fname) != _digest(tmp_path / "c" / fname)
    sample = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())[::17]
    for name in sample:
        a = _digest(tmp_path / "a" / "images" / name)
        assert a == _digest(tmp_path / "b" / "images" / name)
    differs = [
        _digest(tmp_path / "a" / "images" / n) != _digest(tmp_path / "c" / "images" / n)
        for n in sample
    ]
    assert any(differs)


def test_file_formats(tmp_path: Path) -> None:
    stats = _make(tmp_path, name="toy")
    header, rows = _read_tsv(tmp_path / "toy.inter")
    assert header == ["user_id:token", "item_id:token", "timestamp:float"]
    assert len(rows) == stats["n_interactions"]
    last: dict[str, float] = {}
    lengths: Counter = Counter()
    for user, item, ts in rows:
        t = float(ts)
        assert t > last.get(user, -1.0)  # strictly increasing per user
        last[user] = t
        lengths[user] += 1
    assert len(lengths) == SMALL["n_users"]
    assert all(6 <= n <= 10 for n in lengths.values())

    header, items = _read_tsv(tmp_path / "toy.item")
    assert header == [
        "item_id:token",
        "title:token_seq",
        "colour:token",
        "shape:token",
        "texture:token",
        "size:token",
        "keyword:token",
        "colour_in_title:token",
    ]
    assert len(items) == SMALL["n_items"] == len({r[0] for r in items})
    assert {r[1] for r in rows} <= {r[0] for r in items}
    for item_id, title, colour, shape, texture, size, keyword, in_title in items:
        assert colour in synthetic.COLOURS and shape in synthetic.SHAPES
        assert texture in synthetic.TEXTURES and size in synthetic.SIZES
        words = title.split(" ")
        assert words[0] == keyword  # the keyword is only in the title
        assert (colour in words) == (in_title == "1")
    share = np.mean([r[7] == "1" for r in items])
    assert 0.3 < share < 0.7

    header, groups = _read_tsv(tmp_path / "groups.tsv")
    assert header == [
        "user_id",
        "group",
        "attribute",
        "preferred_value",
        "second_value",
    ]
    assert len(groups) == SMALL["n_users"]
    assert {g[2] for g in groups} == set(synthetic.GROUP_ATTRIBUTES)
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert saved["synthetic"] is True and saved["n_items"] == SMALL["n_items"]


def test_groups_are_dominated_by_their_preferred_value(tmp_path: Path) -> None:
    _make(tmp_path, n_items=400, n_users=250)
    _, items = _read_tsv(tmp_path / "synthetic.item")
    columns = ["colour", "shape", "texture", "size", "keyword"]
    attrs = {r[0]: dict(zip(columns, r[2:7])) for r in items}
    _, groups = _read_tsv(tmp_path / "groups.tsv")
    user = {g[0]: g for g in groups}
    _, rows = _read_tsv(tmp_path / "synthetic.inter")
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    late_half: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    seqs: dict[str, list[str]] = defaultdict(list)
    for u, i, _ in rows:
        seqs[u].append(i)
    for u, seq in seqs.items():
        _, g, attr, pref, second = user[u]
        for pos, i in enumerate(seq):
            hits[g][0] += attrs[i][attr] == pref
            hits[g][1] += 1
            if pos >= len(seq) // 2:  # drift: the second value grows late
                late_half[g][0] += attrs[i][attr] == second
                late_half[g][1] += 1
    for g, (hit, total) in hits.items():
        assert hit / total >= 0.6, (g, hit / total)
    # second values are rarer overall but present late in sequences
    late = sum(h for h, _ in late_half.values()) / sum(t for _, t in late_half.values())
    assert late > 0.15


def test_every_item_has_a_decodable_image(tmp_path: Path) -> None:
    _make(tmp_path)
    _, items = _read_tsv(tmp_path / "synthetic.item")
    for item_id, *_ in items:
        with Image.open(tmp_path / "images" / f"{item_id}.png") as img:
            img.load()
            assert img.mode == "RGB" and img.size == (16, 16)


def test_rendered_colour_matches_attribute() -> None:
    arr = synthetic.render_item_image(32, (220, 40, 40), "square", "plain", 0.85)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert arr[16, 16].tolist() == [220, 40, 40]
    assert arr[0, 0].tolist() == [235, 235, 235]
    ring = synthetic.render_item_image(32, (1, 2, 3), "ring", "plain", 0.85)
    assert ring[16, 16].tolist() == [235, 235, 235]  # the hole


def test_more_groups_than_attributes_get_disjoint_values() -> None:
    groups = synthetic._group_values(7)
    assert groups[0][0] == groups[5][0] == "colour"
    assert not set(groups[0][1]) & set(groups[5][1])
    assert groups[1][0] == groups[6][0] == "shape"


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"n_items": 0}, "n_items"),
        ({"seq_len": (5, 2)}, "seq_len"),
        ({"p_noise": 1.5}, "p_noise"),
        ({"image_size": -1}, "image_size"),
    ],
)
def test_bad_arguments_name_the_key(tmp_path: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        _make(tmp_path, **kwargs)


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    cmd = [sys.executable, str(ROOT / "dataset" / "make_synthetic.py"), "--out"]
    cmd += [str(out), "--items", "30", "--users", "12", "--image-size", "8"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["n_items"] == 30
    assert len(list((out / "images").iterdir())) == 30
