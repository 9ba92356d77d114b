"""Tests of the Amazon Reviews 2023 converter on small hand-made raw files."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbole_perpeft.data.preparation import (
    PreparationError,
    k_core_filter,
    main_image_url,
    prepare_amazon2023,
)
from recbole_perpeft.data.preparation.cli import main


def _review(user: str, item: str, ts: int, asin: str | None = None) -> dict:
    """Build a review record in the published field layout."""
    return {
        "rating": 5.0,
        "title": "fine",
        "text": "works as described",
        "images": [],
        "asin": asin or item,
        "parent_asin": item,
        "user_id": user,
        "timestamp": ts,
        "helpful_vote": 0,
        "verified_purchase": True,
    }


def _meta(item: str, title: str, images: list[dict], **extra: object) -> dict:
    """Build a meta record in the published field layout."""
    record = {
        "main_category": "Sports & Outdoors",
        "title": title,
        "average_rating": 4.5,
        "rating_number": 10,
        "features": [],
        "description": [],
        "price": 9.99,
        "images": images,
        "videos": [],
        "store": "",
        "categories": [],
        "details": {"Brand": "x"},
        "parent_asin": item,
    }
    record.update(extra)
    return record


def _line(record: object) -> bytes:
    return json.dumps(record).encode("utf-8") + b"\n"


def _bad_bytes_review() -> bytes:
    """B reviews P2 at 2500 ms; the text holds a byte that is not UTF-8."""
    text = _line(_review("B", "P2", 2500))
    return text.replace(b"works as described", b"caf\xe9 ok")


# line numbers matter: the report lists them
REVIEW_LINES = [
    _line(_review("A", "P1", 3000)),  # 1: repeated pair, later -> dropped
    _line(_review("A", "P2", 2000)),  # 2
    _line(_review("A", "P3", 4000)),  # 3
    b"{not json\n",  # 4: malformed
    _line(_review("B", "P1", 1500, asin="P1-red")),  # 5: variant asin
    _line(_review("A", "P1", 1000)),  # 6: earliest A-P1 -> kept
    _bad_bytes_review(),  # 7: non-UTF-8
    _line(_review("C", "P2", 1200)),  # 8
    _line(_review("C", "P4", 1300)),  # 9
    _line(_review("D", "P3", 5000)),  # 10
    _line({k: v for k, v in _review("E", "P1", 10).items() if k != "user_id"}),  # 11
    b"\n",  # 12: blank, ignored
    _line(dict(_review("E", "P2", 0), timestamp="abc")),  # 13: bad timestamp
    b"[1, 2]\n",  # 14: not an object
    _line(_review("B", "P1", 1500)),  # 15: same pair, same time -> first kept
]

META_LINES = [
    _line(
        _meta(
            "P1",
            "Tent\tfor\ntwo",
            [
                {
                    "thumb": "http://x/t1a.jpg",
                    "large": "http://x/L1a.jpg",
                    "variant": "PT01",
                    "hi_res": None,
                },
                {
                    "thumb": "http://x/T1.jpg",
                    "large": None,
                    "variant": "MAIN",
                    "hi_res": "http://x/H1.jpg",
                },
            ],
            store="Acme",
            categories=["Sports & Outdoors", "Camping"],
            features=["light", "warm\tand dry"],
        )
    ),
    b"garbage\n",  # 2: malformed
    _line(
        _meta(
            "P2",
            'Ball "pro" edition',
            [
                {
                    "thumb": "http://x/t2a.jpg",
                    "large": "http://x/L2a.jpg",
                    "variant": "PT01",
                    "hi_res": None,
                },
                {
                    "thumb": "http://x/t2b.jpg",
                    "large": "http://x/L2b.jpg",
                    "variant": "PT02",
                    "hi_res": None,
                },
            ],
        )
    ),
    _line({"title": "no key"}),  # 4: missing parent_asin
    _line(_meta("P3", "Rope", [])),
    _line(
        _meta(
            "P4",
            "Stove",
            [
                {
                    "thumb": "http://x/T4.jpg",
                    "large": None,
                    "variant": "MAIN",
                    "hi_res": None,
                }
            ],
        )
    ),
    _line(_meta("P9", "Never reviewed", [])),
    _line(_meta("P2", "Second copy", [])),  # repeated: first kept
]

EXPECTED_INTER = (
    "user_id:token\titem_id:token\ttimestamp:float\n"
    "A\tP1\t1.000\n"
    "B\tP1\t1.500\n"
    "A\tP2\t2.000\n"
    "B\tP2\t2.500\n"
)


def _write(path: Path, lines: list[bytes], compress: bool = False) -> Path:
    data = b"".join(lines)
    if compress:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _raw(tmp_path: Path, compress: bool = False) -> tuple[Path, Path]:
    suffix = ".jsonl.gz" if compress else ".jsonl"
    reviews = _write(tmp_path / f"Sports{suffix}", REVIEW_LINES, compress)
    meta = _write(tmp_path / f"meta_Sports{suffix}", META_LINES, compress)
    return reviews, meta


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_k_core_dedup_order_and_files(tmp_path: Path) -> None:
    reviews, meta = _raw(tmp_path)
    out = tmp_path / "dataset" / "toy"
    result = prepare_amazon2023(reviews, meta, out, min_user=2, min_item=2)

    assert (out / "toy.inter").read_text(encoding="utf-8") == EXPECTED_INTER
    assert (out / "images.tsv").read_text(encoding="utf-8") == (
        "item_id\turl\nP1\thttp://x/H1.jpg\nP2\thttp://x/L2a.jpg\n"
    )
    items = pd.read_csv(out / "toy.item", sep="\t")
    assert list(items.columns) == ["item_id:token", "title:token_seq"]
    assert items["item_id:token"].tolist() == ["P1", "P2"]
    assert items["title:token_seq"].tolist() == ["Tent for two", 'Ball "pro" edition']

    stats = result.stats
    assert (stats.users, stats.items, stats.interactions) == (2, 2, 4)
    assert stats.avg_seq_length == 2.0 and stats.density == 1.0
    assert stats.table_row().startswith("| toy | 2 | 2 | 2.00 | 4 |")
    saved = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert saved["stats"]["users"] == 2 and saved["stats"]["avg_seq_length"] == 2.0
    filtering = saved["filtering"]
    assert filtering["reviews_read"] == 10
    assert filtering["repeated_pairs_removed"] == 2
    assert filtering["before_k_core"] == {"users": 4, "items": 4, "interactions": 8}
    assert filtering["k_core_rounds"] == 3
    report = saved["reports"]["reviews"]
    assert report["malformed"] == {"count": 3, "first_lines": [4, 13, 14]}
    assert report["missing_fields"] == {"count": 1, "first_lines": [11]}
    assert report["non_utf8"] == {"count": 1, "first_lines": [7]}
    assert saved["reports"]["meta"]["malformed"]["first_lines"] == [2]
    assert saved["reports"]["meta"]["missing_fields"]["first_lines"] == [4]
    assert _leftovers(out.parent) == []


def test_gzip_input_gives_the_same_files(tmp_path: Path) -> None:
    reviews, meta = _raw(tmp_path, compress=True)
    out = tmp_path / "toy"
    prepare_amazon2023(reviews, meta, out, min_user=2, min_item=2)
    assert (out / "toy.inter").read_text(encoding="utf-8") == EXPECTED_INTER


def test_extra_text_fields_and_require_image(tmp_path: Path) -> None:
    reviews, meta = _raw(tmp_path)
    out = tmp_path / "toy"
    result = prepare_amazon2023(
        reviews,
        meta,
        out,
        min_user=2,
        min_item=2,
        text_fields=["title", "store", "categories", "features"],
        require_image=True,
    )
    header, first, second = (out / "toy.item").read_text(encoding="utf-8").splitlines()
    assert header.split("\t") == [
        "item_id:token",
        "title:token_seq",
        "store:token_seq",
        "categories:token_seq",
        "features:token_seq",
    ]
    assert first.split("\t") == [
        "P1",
        "Tent for two",
        "Acme",
        "Sports & Outdoors > Camping",
        "light warm and dry",
    ]
    assert second.split("\t")[0] == "P2"
    assert result.details["filtering"]["reviewed_items_without_image"] == 1  # P3
    # P3 is dropped before the k-core; the result does not change here
    assert (out / "toy.inter").read_text(encoding="utf-8") == EXPECTED_INTER


def test_unusable_timestamps_are_malformed_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        _line(_review("A", "P1", 1000)),  # 1
        b'{"user_id": "B", "parent_asin": "P1", "timestamp": 1e30}\n',  # 2
        _line(dict(_review("B", "P1", 0), timestamp="\u00b2")),  # 3: "²"
        _line(_review("B", "P1", 10**30)),  # 4: beyond int64
        _line(_review("B", "P1", -5)),  # 5
        _line(dict(_review("B", "P1", 0), timestamp="9" * 25)),  # 6
        _line(dict(_review("B", "P1", 0), timestamp=1.5)),  # 7
        _line(dict(_review("B", "P1", 0), timestamp=None)),  # 8: missing
        _line(dict(_review("B", "P1", 0), user_id="B C")),  # 9: bad id
        _line(dict(_review("B", "P1", 0), timestamp=" 2000 ")),  # 10
        _line(dict(_review("A", "P2", 0), timestamp=3000.0)),  # 11
        _line(_review("B", "P2", 2**63 - 1)),  # 12: largest allowed
    ]
    reviews = _write(tmp_path / "Stamps.jsonl", lines)
    meta = _write(tmp_path / "meta_Stamps.jsonl", META_LINES)
    out = tmp_path / "stamps"
    code = main(
        [
            "amazon2023",
            *("--reviews", str(reviews), "--meta", str(meta)),
            *("--out", str(out), "--min-user", "1", "--min-item", "1"),
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("| stamps | 2 | 2 |")
    assert (out / "stamps.inter").read_text(encoding="utf-8") == (
        "user_id:token\titem_id:token\ttimestamp:float\n"
        "A\tP1\t1.000\n"
        "B\tP1\t2.000\n"
        "A\tP2\t3.000\n"
        "B\tP2\t9223372036854775.807\n"
    )
    report = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert report["reports"]["reviews"]["malformed"] == {
        "count": 7,
        "first_lines": [2, 3, 4, 5, 6, 7, 9],
    }
    assert report["reports"]["reviews"]["missing_fields"] == {
        "count": 1,
        "first_lines": [8],
    }


def test_main_image_choice() -> None:
    main_large = [
        {"thumb": "t0", "large": "l0", "variant": "PT01", "hi_res": "h0"},
        {"thumb": "t1", "large": "l1", "variant": "MAIN", "hi_res": "h1"},
    ]
    assert main_image_url(main_large) == "l1"
    assert main_image_url([{"thumb": "t", "large": None, "hi_res": None}]) == "t"
    assert main_image_url([{"variant": "PT01", "large": "", "hi_res": "h"}]) == "h"
    assert main_image_url([]) is None
    assert main_image_url(None) is None


def test_k_core_filter_cascades() -> None:
    # user 0: items 0 1 2; user 1: items 0 1; user 2: items 1 3; user 3: item 2
    users = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    items = np.array([0, 1, 2, 0, 1, 1, 3, 2])
    kept, rounds = k_core_filter(users, items, 2, 2)
    assert kept.tolist() == [0, 1, 3, 4]
    assert rounds == 3
    kept, _ = k_core_filter(users, items, 1, 1)
    assert kept.tolist() == list(range(8))


def test_empty_reviews_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reviews = _write(tmp_path / "Empty.jsonl", [])
    meta = _write(tmp_path / "meta_Empty.jsonl", META_LINES)
    out = tmp_path / "dataset" / "empty"
    with pytest.raises(PreparationError, match="Empty.jsonl.*is empty"):
        prepare_amazon2023(reviews, meta, out)
    assert not out.parent.exists()  # failed before anything was written

    code = main(
        [
            "amazon2023",
            "--reviews",
            str(reviews),
            "--meta",
            str(meta),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert "Empty.jsonl" in capsys.readouterr().err
    assert not out.exists()


def test_nothing_left_after_k_core_keeps_existing_output(tmp_path: Path) -> None:
    reviews, meta = _raw(tmp_path)
    out = tmp_path / "toy"
    out.mkdir()
    (out / "marker.txt").write_text("old", encoding="utf-8")
    with pytest.raises(PreparationError) as info:
        prepare_amazon2023(reviews, meta, out, min_user=10, min_item=2, overwrite=True)
    message = str(info.value)
    assert "--min-user 10" in message and "--min-item 2" in message
    assert "4 users, 4 items and 8 interactions" in message
    assert sorted(p.name for p in out.iterdir()) == ["marker.txt"]
    assert _leftovers(tmp_path) == []


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    reviews, meta = _raw(tmp_path)
    out = tmp_path / "toy"
    prepare_amazon2023(reviews, meta, out, min_user=2, min_item=2)
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_amazon2023(reviews, meta, out, min_user=2, min_item=2)
    (out / "stale.txt").write_text("x", encoding="utf-8")
    prepare_amazon2023(reviews, meta, out, min_user=2, min_item=2, overwrite=True)
    assert (out / "stale.txt").read_text(encoding="utf-8") == "x"
    assert (out / "toy.inter").read_text(encoding="utf-8") == EXPECTED_INTER


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under a folder -> its bytes (``None`` for folders)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def _prepare_again(reviews: Path, meta: Path, out: Path) -> None:
    """A second preparation into ``out``, with another text field, overwriting."""
    prepare_amazon2023(
        reviews, meta, out, min_user=2, min_item=2, text_fields=["title", "store"], overwrite=True
    )


def test_overwrite_replaces_only_the_files_it_writes(tmp_path: Path) -> None:
    reviews, meta = _raw(tmp_path)
    out = tmp_path / "dataset" / "toy"
    prepare_amazon2023(reviews, meta, out, min_user=2, min_item=2)
    (out / "images").mkdir()
    (out / "images" / "P1.jpg").write_bytes(b"downloaded image")
    (out / "images_failed.tsv").write_text("item_id\turl\treason\n", "utf-8")
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "toy.inter").write_text("edited by hand\n", encoding="utf-8")

    _prepare_again(reviews, meta, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "images",
        "images.tsv",
        "images_failed.tsv",
        "notes.txt",
        "stats.json",
        "toy.inter",
        "toy.item",
    ]
    assert (out / "toy.inter").read_text(encoding="utf-8") == EXPECTED_INTER
    assert (out / "toy.item").read_text(encoding="utf-8").splitlines()[:2] == [
        "item_id:token\ttitle:token_seq\tstore:token_seq",
        "P1\tTent for two\tAcme",
    ]
    saved = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert saved["source"]["text_fields"] == ["title", "store"]
    assert (out / "images" / "P1.jpg").read_bytes() == b"downloaded image"
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert _leftovers(out) == [] and _leftovers(out.parent) == []


def test_overwrite_refuses_inputs_inside_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "toy"
    out.mkdir()
    reviews, meta = _raw(out)  # the raw files live in the output folder
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    before = _snapshot(out)
    args = ["amazon2023", "--reviews", str(reviews), "--meta", str(meta)]
    for extra in ([], ["--overwrite"]):
        code = main([*args, "--out", str(out), "--min-user", "2", *extra])
        assert code == 2
        err = capsys.readouterr().err
        assert f"--reviews {str(reviews)!r} lies inside --out {str(out)!r}" in err
        assert "nothing was written or deleted" in err
        assert _snapshot(out) == before

    # the output folder as a path with '..' and only the meta file inside it
    elsewhere = tmp_path / "raw"
    elsewhere.mkdir()
    moved = elsewhere / reviews.name
    reviews.rename(moved)
    before = _snapshot(out)
    with pytest.raises(PreparationError, match="--meta .* lies inside --out"):
        prepare_amazon2023(moved, meta, elsewhere / ".." / "toy", overwrite=True)
    assert _snapshot(out) == before


def test_failed_move_leaves_the_previous_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reviews, meta = _raw(tmp_path)
    out = tmp_path / "toy"
    prepare_amazon2023(reviews, meta, out, min_user=2, min_item=2)
    before = _snapshot(out)

    real_replace = os.replace

    def failing_replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == "toy.item" and ".prepare.tmp-" in str(src):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        _prepare_again(reviews, meta, out)
    # images.tsv, stats.json and toy.inter had been moved; all are restored
    assert _snapshot(out) == before
    monkeypatch.undo()

    # a folder where a file is written is refused before anything moves
    (out / "images.tsv").unlink()
    (out / "images.tsv").mkdir()
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match="images.tsv' is a folder"):
        prepare_amazon2023(reviews, meta, out, min_user=2, min_item=2, overwrite=True)
    assert _snapshot(out) == before


def test_bad_option_values_name_the_option(tmp_path: Path) -> None:
    reviews, meta = _raw(tmp_path)
    with pytest.raises(ValueError, match="--min-item must be an integer >= 1, got 0"):
        prepare_amazon2023(reviews, meta, tmp_path / "toy", min_item=0)
    with pytest.raises(ValueError, match="--text-fields allows .*got price"):
        prepare_amazon2023(reviews, meta, tmp_path / "toy", text_fields=["price"])
    with pytest.raises(FileNotFoundError, match="--meta"):
        prepare_amazon2023(reviews, tmp_path / "nope.jsonl", tmp_path / "toy")


def test_cli_prints_the_table_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reviews, meta = _raw(tmp_path)
    out = tmp_path / "toy"
    code = main(
        [
            "amazon2023",
            "--reviews",
            str(reviews),
            "--meta",
            str(meta),
            "--out",
            str(out),
            "--min-user",
            "2",
            "--min-item",
            "2",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| dataset | users | items | avg. seq. length |")
    assert lines[1].startswith("| toy | 2 | 2 | 2.00 |")


def test_out_dot_is_named_after_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reviews, meta = _raw(tmp_path)
    args = ["amazon2023", "--reviews", str(reviews), "--meta", str(meta)]
    args += ["--min-user", "2", "--min-item", "2", "--out", "."]
    bad = tmp_path / "bad name"
    bad.mkdir()
    monkeypatch.chdir(bad)
    assert main(args) == 2
    assert "got 'bad name'" in capsys.readouterr().err
    good = tmp_path / "toy"
    good.mkdir()
    monkeypatch.chdir(good)
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("| toy | 2 | 2 |")
    assert (good / "toy.inter").read_text(encoding="utf-8") == EXPECTED_INTER
    assert _leftovers(good) == [] and _leftovers(tmp_path) == []

    # --out . with the inputs in it is refused
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--overwrite"]) == 2
    assert f"lies inside --out {str(tmp_path)!r}" in capsys.readouterr().err
