"""Tests of the converter for the authors' archive, on a small archive built here."""

from __future__ import annotations

import collections
import io
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recbole_perpeft.data.preparation import PreparationError, convert_authors_archive
from recbole_perpeft.data.preparation.cli import main

RAW = {"10": "B00A", "11": "B00B", "12": "B00C", "13": "B00D"}
TXT = "1 10\n1 11\n1 12\n\n2 11 13\n3 10\n3\n3 13\n"  # line 7 is malformed
EXPECTED_INTER = (
    "user_id:token\titem_id:token\ttimestamp:float\n"
    "1\tB00A\t0.0\n"
    "1\tB00B\t1.0\n"
    "1\tB00C\t2.0\n"
    "2\tB00B\t3.0\n"
    "2\tB00D\t4.0\n"
    "3\tB00A\t5.0\n"
    "3\tB00D\t6.0\n"
)
EXPECTED_ITEM = (
    "item_id:token\ttitle:token_seq\n"
    "B00A\tRed tent\n"
    "B00B\tBlue ball\n"
    "B00C\tRope\n"
    "B00D\tCamp stove\n"
)


def _jpeg(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _archive(tmp_path: Path, inverted: bool = False, name: str = "toy") -> Path:
    """Build an archive; ``inverted`` stores item2id as id -> raw and keys the
    texts and images by raw key instead of by txt id."""
    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / f"{name}_final.txt").write_text(TXT, encoding="utf-8")
    if inverted:
        item2id = {int(i): raw for i, raw in RAW.items()}
    else:  # raw -> id, one id a numpy integer as pickles made with numpy have
        item2id = {raw: int(i) for i, raw in RAW.items()}
        item2id["B00D"] = np.int64(13)
    titles = {
        "10": "Red tent",
        "11": "Blue\tball",
        "12": "Rope",
        "13": ["Camp", "stove"],
    }
    if inverted:
        texts = {RAW[i]: t for i, t in titles.items()}
    else:
        texts = {int(i): t for i, t in titles.items()}
    with open(folder / f"{name}_item2id_final.pickle", "wb") as handle:
        pickle.dump(item2id, handle)
    with open(folder / f"{name}_texts_final.pickle", "wb") as handle:
        pickle.dump(texts, handle)
    images = folder / f"{name}_images"
    images.mkdir()
    for n, tid in enumerate(["10", "11", "13"]):  # 12 has no image
        stem = RAW[tid] if inverted else tid
        (images / f"{stem}.jpg").write_bytes(_jpeg(40 * n))
    return folder


@pytest.mark.parametrize("inverted", [False, True])
def test_convert_detects_the_pickle_layout(tmp_path: Path, inverted: bool) -> None:
    archive = _archive(tmp_path, inverted=inverted)
    out = tmp_path / "dataset" / "toy"
    result = convert_authors_archive(archive, out)

    assert (out / "toy.inter").read_text(encoding="utf-8") == EXPECTED_INTER
    assert (out / "toy.item").read_text(encoding="utf-8") == EXPECTED_ITEM
    images = out / "images"
    assert sorted(p.name for p in images.iterdir()) == [
        "B00A.jpg",
        "B00B.jpg",
        "B00D.jpg",
    ]
    stem = "B00D" if inverted else "13"
    source = archive / "toy_images" / f"{stem}.jpg"
    assert (images / "B00D.jpg").read_bytes() == source.read_bytes()
    assert not (images / "B00D.jpg").is_symlink()

    assert (result.stats.users, result.stats.items) == (3, 4)
    assert result.stats.interactions == 7
    saved = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert saved["stats"]["avg_seq_length"] == round(7 / 3, 4)
    assert saved["source"]["texts_keyed_by"] == ("raw" if inverted else "id")
    assert saved["filtering"]["items_without_image"] == 1
    assert saved["reports"]["interactions"]["malformed"] == {
        "count": 1,
        "first_lines": [7],
    }


def test_symlinks_and_txt_ids(tmp_path: Path) -> None:
    archive = _archive(tmp_path)
    out = tmp_path / "toy_ids"
    convert_authors_archive(archive, out, images="symlink", item_key="id")
    inter = (out / "toy_ids.inter").read_text(encoding="utf-8").splitlines()
    assert inter[1:3] == ["1\t10\t0.0", "1\t11\t1.0"]
    link = out / "images" / "13.jpg"
    assert link.is_symlink()
    assert link.resolve() == (archive / "toy_images" / "13.jpg").resolve()
    assert (out / "toy_ids.item").read_text(encoding="utf-8").splitlines()[1] == (
        "10\tRed tent"
    )


def test_unknown_ids_and_unsafe_pickles_are_refused(tmp_path: Path) -> None:
    archive = _archive(tmp_path)
    with open(archive / "toy_final.txt", "a", encoding="utf-8") as handle:
        handle.write("4 99\n")
    out = tmp_path / "toy"
    with pytest.raises(PreparationError, match="first: 99.*--item-key id"):
        convert_authors_archive(archive, out)
    assert not out.exists()

    texts = archive / "toy_texts_final.pickle"
    texts.write_bytes(pickle.dumps(collections.Counter({"10": 1})))
    with pytest.raises(PreparationError, match="--trust-pickles"):
        convert_authors_archive(archive, out, item_key="id")
    convert_authors_archive(archive, out, item_key="id", trust_pickles=True)
    assert (out / "toy.item").read_text(encoding="utf-8").splitlines()[1] == "10\t1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "toy"]


def test_empty_txt_and_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _archive(tmp_path)
    (archive / "toy_final.txt").write_text("\n", encoding="utf-8")
    out = tmp_path / "toy"
    with pytest.raises(PreparationError, match="toy_final.txt' is empty"):
        convert_authors_archive(archive, out)
    assert main(["authors-archive", "--archive", str(archive), "--out", str(out)]) == 2
    assert "toy_final.txt' is empty" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match="--images must be one of .*got 'move'"):
        convert_authors_archive(archive, out, images="move")


def test_cli_finds_the_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = _archive(tmp_path, name="Sports")
    out = tmp_path / "sports_outdoors"
    code = main(["authors-archive", "--archive", str(archive), "--out", str(out)])
    assert code == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[1]
        .startswith("| sports_outdoors | 3 | 4 | 2.33 | 7 |")
    )
    assert (out / "sports_outdoors.inter").read_text(encoding="utf-8") == (
        EXPECTED_INTER
    )


def test_overwrite_keeps_other_files_and_refuses_the_archive_inside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _archive(tmp_path)
    out = tmp_path / "toy"
    out.mkdir()
    (out / "images").mkdir()
    (out / "images" / "B00A.png").write_bytes(b"older image of B00A")
    (out / "images" / "B00Z.jpg").write_bytes(b"image of another item")
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "toy.inter").write_text("old\n", encoding="utf-8")

    convert_authors_archive(archive, out, overwrite=True)
    assert (out / "toy.inter").read_text(encoding="utf-8") == EXPECTED_INTER
    assert sorted(p.name for p in out.iterdir()) == [
        "images",
        "notes.txt",
        "stats.json",
        "toy.inter",
        "toy.item",
    ]
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "B00A.jpg",
        "B00B.jpg",
        "B00D.jpg",
        "B00Z.jpg",
    ]
    assert (out / "images" / "B00Z.jpg").read_bytes() == b"image of another item"
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"

    inside = out / "archive"
    archive.rename(inside)
    listing = sorted(str(p) for p in out.rglob("*"))
    code = main(
        ["authors-archive", "--archive", str(inside), "--out", str(out), "--overwrite"]
    )
    assert code == 2
    assert (
        f"--archive {str(inside)!r} lies inside --out {str(out)!r}"
        in capsys.readouterr().err
    )
    assert sorted(str(p) for p in out.rglob("*")) == listing
    with pytest.raises(PreparationError, match="--archive .* lies inside --out"):
        convert_authors_archive(inside, inside, overwrite=True)
    assert sorted(str(p) for p in out.rglob("*")) == listing


@pytest.mark.parametrize("mode", ["copy", "symlink"])
def test_images_that_do_not_decode_are_left_out(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    archive = _archive(tmp_path)
    (archive / "toy_images" / "10.jpg").write_bytes(b"<html>not an image</html>")
    whole = (archive / "toy_images" / "11.jpg").read_bytes()
    (archive / "toy_images" / "11.jpg").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "toy"
    with caplog.at_level(logging.WARNING):
        convert_authors_archive(archive, out, images=mode)

    assert [p.name for p in (out / "images").iterdir()] == ["B00D.jpg"]
    assert (out / "toy.inter").read_text(encoding="utf-8") == EXPECTED_INTER
    saved = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert saved["filtering"]["items_without_image"] == 3  # B00C has none at all
    assert saved["filtering"]["images_not_decodable"] == 2
    failures = saved["image_failures"]
    assert [(f["item_id"], Path(f["file"]).name) for f in failures] == [
        ("B00A", "10.jpg"),
        ("B00B", "11.jpg"),
    ]
    assert failures[0]["reason"] == (
        "not a decodable image: not in a known image format"
    )
    assert failures[1]["reason"].startswith("not a decodable image: ")
    assert "0x" not in failures[1]["reason"]
    warnings = [r.getMessage() for r in caplog.records]
    warning = next(w for w in warnings if "do not decode and are left out" in w)
    assert warning.startswith(f"2 images in {archive / 'toy_images'} do not")
    assert "10.jpg (not a decodable image" in warning and "11.jpg (" in warning


def test_repeated_pairs_and_several_raw_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = _archive(tmp_path)
    with open(archive / "toy_final.txt", "a", encoding="utf-8") as handle:
        handle.write("2 11\n1 10 12\n")  # three repeated (user, item) pairs
    item2id = {raw: int(i) for i, raw in RAW.items()}
    item2id["B00X"] = 10  # a second raw key for id 10, after B00A
    item2id["B00Y"] = 11
    item2id["B00Z"] = 11
    item2id["B00W"] = 99  # not in the txt
    with open(archive / "toy_item2id_final.pickle", "wb") as handle:
        pickle.dump(item2id, handle)
    out = tmp_path / "toy"
    with caplog.at_level(logging.WARNING):
        result = convert_authors_archive(archive, out)

    # the repeats are dropped, so the file is the one without them
    assert (out / "toy.inter").read_text(encoding="utf-8") == EXPECTED_INTER
    assert result.stats.interactions == 7
    saved = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert saved["filtering"]["repeated_pairs_removed"] == 3
    assert saved["filtering"]["ids_with_several_raw_keys"] == 2
    warnings = [r.getMessage() for r in caplog.records]
    repeated = (
        "3 repeated (user, item) interactions removed (the first of each is kept)"
    )
    assert any(w.endswith(repeated) for w in warnings)
    assert (
        "toy_item2id_final.pickle: 2 item ids of the txt have more than one raw "
        "key; the first is used: 10: B00A, B00X; 11: B00B, B00Y, B00Z"
    ) in warnings


def test_out_dot_is_named_after_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _archive(tmp_path)
    bad = tmp_path / "bad name"
    bad.mkdir()
    monkeypatch.chdir(bad)
    assert main(["authors-archive", "--archive", str(archive), "--out", "."]) == 2
    assert "got 'bad name'" in capsys.readouterr().err
    good = tmp_path / "toy"
    good.mkdir()
    monkeypatch.chdir(good)
    assert main(["authors-archive", "--archive", str(archive), "--out", "."]) == 0
    assert (good / "toy.inter").read_text(encoding="utf-8") == EXPECTED_INTER
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "bad name", "toy"]
