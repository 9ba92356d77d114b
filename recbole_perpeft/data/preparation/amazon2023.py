"""Amazon Reviews 2023 (reviews + meta jsonl) -> RecBole atomic files with images.

The pipeline, in order:

1. Stream the reviews file; keep ``(user_id, parent_asin, timestamp)`` of each
   valid record as integer arrays (users and items interned to integers).
2. Keep each ``(user, parent_asin)`` pair once: its earliest review (ties: the
   first in the file).
3. Stream the meta file, keeping only items that occur in the reviews: the
   requested text fields and the URL of the main image.
4. Optionally drop items without an image URL, then apply the iterative k-core
   filter (``min_user``/``min_item``) until nothing more is removed.
5. Sort by timestamp (ties: file order) and write ``<name>.inter``,
   ``<name>.item``, ``images.tsv`` and ``stats.json`` into a temporary folder
   whose files are moved into place at the end (with ``overwrite`` only these
   files are replaced; other files in the output folder are kept).
"""

from __future__ import annotations

import array
import gzip
import json
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from recbole_perpeft.data.preparation.atomic import (
    IMAGES_HEADER,
    DatasetStats,
    PreparationError,
    ReadReport,
    atomic_directory,
    check_inputs_outside,
    check_output_dir,
    clean_text,
    output_path,
    write_inter,
    write_item,
    write_json,
    write_tsv,
)

logger = logging.getLogger(__name__)

TEXT_FIELDS = (
    "title",
    "store",
    "main_category",
    "categories",
    "features",
    "description",
)
REVIEW_FIELDS = ("user_id", "parent_asin", "timestamp")
IMAGE_KEYS = ("large", "hi_res", "thumb")
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_BAD_ID = re.compile(r"[\s/\\]")
_DIGITS = re.compile(r"[0-9]{1,19}")
MAX_TIMESTAMP = 2**63 - 1


@dataclass
class PreparationResult:
    """What a converter wrote.

    Attributes:
        out (Path): The dataset folder.
        stats (DatasetStats): Table 1 statistics of the written interactions.
        details (dict[str, object]): Everything else that went to ``stats.json``.
    """

    out: Path
    stats: DatasetStats
    details: dict[str, object] = field(default_factory=dict)


def open_maybe_gzip(path: Path) -> IO[bytes]:
    """Open a file for binary reading, decompressing it if it is gzip.

    The gzip test looks at the first two bytes, not at the file name.

    Args:
        path (Path): The file.

    Returns:
        IO[bytes]: A binary file object.
    """
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_jsonl(
    path: Path, option: str, report: ReadReport
) -> Iterator[tuple[int, dict]]:
    """Stream the JSON objects of a jsonl(.gz) file, one line at a time.

    Blank lines are ignored. Lines that are not a JSON object are skipped and
    counted in ``report.malformed``; lines with bytes that are not UTF-8 are
    decoded with replacement characters and counted in ``report.non_utf8``.

    Args:
        path (Path): The file.
        option (str): The command line option that named it, for messages.
        report (ReadReport): Filled in while reading.

    Yields:
        tuple[int, dict]: The 1-based line number and the record, per valid line.

    Raises:
        PreparationError: If the file holds no non-blank line, or cannot be
            decompressed.
    """
    number = 0
    try:
        with open_maybe_gzip(path) as handle:
            for number, raw in enumerate(handle, start=1):
                if number == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]
                if not raw.strip():
                    continue
                report.lines += 1
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = raw.decode("utf-8", errors="replace")
                    report.non_utf8.add(number)
                try:
                    record = json.loads(text)
                except ValueError:
                    report.malformed.add(number)
                    continue
                if not isinstance(record, dict):
                    report.malformed.add(number)
                    continue
                yield number, record
    except (OSError, EOFError, zlib.error) as exc:
        raise PreparationError(
            f"{option} {str(path)!r}: cannot read the file after line {number}: {exc}"
        ) from exc
    if report.lines == 0:
        raise PreparationError(f"{option} {str(path)!r} is empty")


def _valid_id(value: object) -> str | None:
    """Return an identifier if it is a non-empty string usable as a token.

    Args:
        value (object): A raw field value.

    Returns:
        str | None: The identifier, or ``None`` if it cannot be used.
    """
    if not isinstance(value, str) or not value or _BAD_ID.search(value):
        return None
    if value.startswith("."):
        return None
    return value


def _valid_timestamp(value: object) -> int | None:
    """Return a timestamp (milliseconds) in ``0 .. 2**63 - 1``, if there is one.

    Args:
        value (object): A raw field value (int, integral float or a string of
            ASCII digits).

    Returns:
        int | None: The timestamp, or ``None`` if it is missing, not a whole
        number (``"abc"``, ``"²"``, ``1.5``) or out of range (``-1``, ``1e30``).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        result = int(value.strip())
    else:
        return None
    return result if 0 <= result <= MAX_TIMESTAMP else None


def _absent(value: object) -> bool:
    """Tell whether a required field is missing (absent, ``null`` or ``""``).

    Args:
        value (object): The raw field value (``None`` if the key is absent).

    Returns:
        bool: ``True`` if there is no value at all.
    """
    return value is None or value == ""


def format_timestamp(milliseconds: int) -> str:
    """Format a millisecond timestamp as exact decimal seconds.

    Args:
        milliseconds (int): Non-negative Unix time in milliseconds.

    Returns:
        str: Seconds with three decimals, e.g. ``"1588615855.070"``.
    """
    return f"{milliseconds // 1000}.{milliseconds % 1000:03d}"


def main_image_url(images: object) -> str | None:
    """Choose the URL of an item's main image from its ``images`` metadata.

    The entry whose ``variant`` is ``"MAIN"`` is used, else the first entry; of
    that entry the ``large`` URL, else ``hi_res``, else ``thumb``.

    Args:
        images (object): The ``images`` field of a meta record (a list of
            dicts with keys ``thumb``, ``large``, ``variant``, ``hi_res``).

    Returns:
        str | None: The URL, or ``None`` if there is none.
    """
    if not isinstance(images, list):
        return None
    entries = [entry for entry in images if isinstance(entry, dict)]
    if not entries:
        return None
    chosen = next((e for e in entries if e.get("variant") == "MAIN"), entries[0])
    for key in IMAGE_KEYS:
        url = chosen.get(key)
        if isinstance(url, str) and url.strip() and not re.search(r"\s", url.strip()):
            return url.strip()
    return None


def item_text(record: dict, name: str) -> str:
    """Extract one text field of a meta record as a single line.

    ``categories`` are joined with ``" > "`` (they are a path from the root
    category); other lists (``features``, ``description``) with spaces.

    Args:
        record (dict): A meta record.
        name (str): One of :data:`TEXT_FIELDS`.

    Returns:
        str: The cleaned text ("" if the field is missing).
    """
    value = record.get(name)
    if name == "categories" and isinstance(value, list):
        return " > ".join(clean_text(part) for part in value if clean_text(part))
    return clean_text(value)


def k_core_filter(
    users: np.ndarray, items: np.ndarray, min_user: int, min_item: int
) -> tuple[np.ndarray, int]:
    """Apply the iterative k-core filter to a list of interactions.

    Each round removes every interaction whose user has fewer than
    ``min_user`` or whose item has fewer than ``min_item`` interactions; rounds
    repeat until nothing more is removed. The result is the unique largest
    subset in which all users and items meet their thresholds.

    Args:
        users (np.ndarray): Integer user index of each interaction.
        items (np.ndarray): Integer item index of each interaction.
        min_user (int): Least number of interactions a user must keep.
        min_item (int): Least number of interactions an item must keep.

    Returns:
        tuple[np.ndarray, int]: Positions of the kept interactions (ascending)
        and the number of rounds.
    """
    keep = np.arange(len(users))
    n_users = int(users.max()) + 1 if len(users) else 0
    n_items = int(items.max()) + 1 if len(items) else 0
    rounds = 0
    while keep.size:
        rounds += 1
        u, i = users[keep], items[keep]
        user_counts = np.bincount(u, minlength=n_users)
        item_counts = np.bincount(i, minlength=n_items)
        ok = (user_counts[u] >= min_user) & (item_counts[i] >= min_item)
        if ok.all():
            break
        keep = keep[ok]
    return keep, rounds


def _check_positive(option: str, value: int) -> int:
    """Check an integer option that must be at least 1.

    Args:
        option (str): The option name, for the message.
        value (int): The value received.

    Returns:
        int: The value.

    Raises:
        ValueError: If it is not an integer of at least 1.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be an integer >= 1, got {value!r}")
    return value


def check_text_fields(text_fields: Sequence[str]) -> tuple[str, ...]:
    """Check the ``--text-fields`` option and drop repeats.

    Args:
        text_fields (Sequence[str]): Requested fields.

    Returns:
        tuple[str, ...]: The fields, first occurrence order.

    Raises:
        ValueError: If it is empty or names an unknown field.
    """
    fields = tuple(dict.fromkeys(text_fields))
    if not fields:
        raise ValueError(
            f"--text-fields needs at least one of {', '.join(TEXT_FIELDS)}; got none"
        )
    unknown = [name for name in fields if name not in TEXT_FIELDS]
    if unknown:
        raise ValueError(
            f"--text-fields allows {', '.join(TEXT_FIELDS)}; got {', '.join(unknown)}"
        )
    return fields


@dataclass
class _Reviews:
    """Interned reviews: integer arrays plus the id tables.

    Attributes:
        users (np.ndarray): User index of each review, in file order.
        items (np.ndarray): Item index of each review.
        timestamps (np.ndarray): Milliseconds of each review.
        user_ids (list[str]): User index -> ``user_id``.
        item_ids (list[str]): Item index -> ``parent_asin``.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    user_ids: list[str]
    item_ids: list[str]


def read_reviews(path: Path, report: ReadReport) -> _Reviews:
    """Stream a reviews file into integer arrays.

    A record without one of :data:`REVIEW_FIELDS` is counted in
    ``report.missing_fields``; one whose field is present but unusable (an id
    with whitespace or ``/``, a timestamp that is not a whole number in
    ``0 .. 2**63 - 1``) in ``report.malformed``. Both are skipped.

    Args:
        path (Path): The reviews jsonl(.gz) file.
        report (ReadReport): Filled in while reading.

    Returns:
        _Reviews: One entry per valid record, in file order.

    Raises:
        PreparationError: If the file is empty or holds no valid record.
    """
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users = array.array("q")
    items = array.array("q")
    timestamps = array.array("q")
    for number, record in iter_jsonl(path, "--reviews", report):
        raw = [record.get(key) for key in REVIEW_FIELDS]
        if any(_absent(value) for value in raw):
            report.missing_fields.add(number)
            continue
        user, item = _valid_id(raw[0]), _valid_id(raw[1])
        stamp = _valid_timestamp(raw[2])
        if user is None or item is None or stamp is None:
            report.malformed.add(number)
            continue
        users.append(user_index.setdefault(user, len(user_index)))
        items.append(item_index.setdefault(item, len(item_index)))
        timestamps.append(stamp)
        report.records += 1
    if report.records == 0:
        raise PreparationError(
            f"--reviews {str(path)!r} holds no usable review: each needs "
            f"{', '.join(REVIEW_FIELDS)} ({report.lines} non-blank lines read)"
        )
    return _Reviews(
        users=np.frombuffer(users, dtype=np.int64).copy(),
        items=np.frombuffer(items, dtype=np.int64).copy(),
        timestamps=np.frombuffer(timestamps, dtype=np.int64).copy(),
        user_ids=list(user_index),
        item_ids=list(item_index),
    )


def first_interactions(reviews: _Reviews) -> np.ndarray:
    """Keep each ``(user, item)`` pair once: its earliest review.

    Ties in time go to the review that comes first in the file.

    Args:
        reviews (_Reviews): All valid reviews in file order.

    Returns:
        np.ndarray: File positions of the kept reviews, ascending.
    """
    order = np.lexsort(
        (
            np.arange(len(reviews.users)),
            reviews.timestamps,
            reviews.items,
            reviews.users,
        )
    )
    u, i = reviews.users[order], reviews.items[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    return np.sort(order[first])


@dataclass
class _ItemMeta:
    """What is kept of one meta record.

    Attributes:
        texts (tuple[str, ...]): One cleaned text per requested field.
        url (str | None): URL of the main image, if any.
    """

    texts: tuple[str, ...]
    url: str | None


def read_meta(
    path: Path,
    wanted: dict[str, int],
    text_fields: Sequence[str],
    report: ReadReport,
) -> dict[int, _ItemMeta]:
    """Stream a meta file, keeping only the items that occur in the reviews.

    A record without ``parent_asin`` is counted in ``report.missing_fields``,
    one whose ``parent_asin`` cannot be an id in ``report.malformed``.

    Args:
        path (Path): The meta jsonl(.gz) file.
        wanted (dict[str, int]): ``parent_asin`` -> item index of reviewed items.
        text_fields (Sequence[str]): Text fields to keep.
        report (ReadReport): Filled in while reading. ``records`` counts the
            records kept (first record of each wanted item).

    Returns:
        dict[int, _ItemMeta]: Item index -> kept metadata.
    """
    kept: dict[int, _ItemMeta] = {}
    duplicates = 0
    for number, record in iter_jsonl(path, "--meta", report):
        raw_item = record.get("parent_asin")
        if _absent(raw_item):
            report.missing_fields.add(number)
            continue
        item = _valid_id(raw_item)
        if item is None:
            report.malformed.add(number)
            continue
        index = wanted.get(item)
        if index is None:
            continue
        if index in kept:
            duplicates += 1
            continue
        kept[index] = _ItemMeta(
            texts=tuple(item_text(record, name) for name in text_fields),
            url=main_image_url(record.get("images")),
        )
        report.records += 1
    if duplicates:
        logger.warning(
            "%s: %d repeated meta records of reviewed items ignored (first kept)",
            path,
            duplicates,
        )
    return kept


def prepare_amazon2023(
    reviews: Path | str,
    meta: Path | str,
    out: Path | str,
    name: str | None = None,
    min_user: int = 5,
    min_item: int = 5,
    text_fields: Sequence[str] = ("title",),
    require_image: bool = False,
    overwrite: bool = False,
) -> PreparationResult:
    """Convert one Amazon Reviews 2023 category into a RecBole dataset folder.

    Args:
        reviews (Path | str): ``<Category>.jsonl`` or ``.jsonl.gz``.
        meta (Path | str): ``meta_<Category>.jsonl`` or ``.jsonl.gz``.
        out (Path | str): Output folder, ``dataset/<name>``.
        name (str | None): Dataset name; defaults to the folder name of ``out``.
        min_user (int): k-core threshold for users (``--min-user``).
        min_item (int): k-core threshold for items (``--min-item``).
        text_fields (Sequence[str]): Columns of the ``.item`` file, from
            :data:`TEXT_FIELDS`.
        require_image (bool): Drop items without a main image URL (or without
            meta) before the k-core filter.
        overwrite (bool): Write into an existing non-empty output folder,
            replacing only the files this step writes (``<name>.inter``,
            ``<name>.item``, ``images.tsv``, ``stats.json``).

    Returns:
        PreparationResult: The folder, its statistics and the reading reports.

    Raises:
        PreparationError: On an empty input, no usable records, nothing left
            after filtering, or an input file inside ``out``.
        FileNotFoundError: If an input file does not exist.
        FileExistsError: If ``out`` exists and ``overwrite`` is off.
        ValueError: On an option value out of range.
    """
    reviews, meta, out = Path(reviews), Path(meta), Path(out)
    folder = output_path(out).name
    name = check_dataset_name(name if name is not None else folder)
    if name != folder:
        logger.warning(
            "--name %r differs from the folder name of --out %r; RecBole expects "
            "<data_path>/<dataset>/<dataset>.inter",
            name,
            folder,
        )
    _check_positive("--min-user", min_user)
    _check_positive("--min-item", min_item)
    fields = check_text_fields(text_fields)
    for option, path in (("--reviews", reviews), ("--meta", meta)):
        if not path.is_file():
            raise FileNotFoundError(f"{option} {str(path)!r} does not exist")
    check_inputs_outside(out, {"--reviews": reviews, "--meta": meta})
    check_output_dir(out, overwrite)

    review_report = ReadReport(str(reviews))
    data = read_reviews(reviews, review_report)
    review_report.log_warnings()
    positions = first_interactions(data)
    duplicates = len(data.users) - len(positions)
    logger.info(
        "%s: %d reviews, %d after keeping the first of each (user, item) pair",
        reviews,
        len(data.users),
        len(positions),
    )

    meta_report = ReadReport(str(meta))
    item_meta = read_meta(
        meta, {key: n for n, key in enumerate(data.item_ids)}, fields, meta_report
    )
    meta_report.log_warnings()
    reviewed_items = np.unique(data.items[positions])
    without_meta = int(sum(1 for i in reviewed_items if int(i) not in item_meta))
    without_image = int(
        sum(1 for i in reviewed_items if item_meta.get(int(i), _NO_META).url is None)
    )
    if without_meta:
        logger.warning("%d reviewed items have no meta record", without_meta)
    if require_image:
        has_image = np.zeros(len(data.item_ids), dtype=bool)
        for index, entry in item_meta.items():
            has_image[index] = entry.url is not None
        positions = positions[has_image[data.items[positions]]]

    before = _counts(data, positions)
    kept, rounds = k_core_filter(
        data.users[positions], data.items[positions], min_user, min_item
    )
    positions = positions[kept]
    if positions.size == 0:
        raise PreparationError(
            f"nothing is left after the k-core filter with --min-user {min_user} "
            f"and --min-item {min_item}: before filtering there were "
            f"{before['users']} users, {before['items']} items and "
            f"{before['interactions']} interactions"
            + (" (after --require-image)" if require_image else "")
            + "; lower --min-user/--min-item or use a larger category"
        )
    order = np.lexsort((positions, data.timestamps[positions]))
    positions = positions[order]

    user_col = data.users[positions]
    item_col = data.items[positions]
    stamp_col = data.timestamps[positions]
    final_items = sorted({data.item_ids[int(i)] for i in np.unique(item_col)})
    index_of = {key: n for n, key in enumerate(data.item_ids)}
    stats = DatasetStats(
        dataset=name,
        users=int(np.unique(user_col).size),
        items=len(final_items),
        interactions=int(positions.size),
    )
    images = [
        (key, item_meta[index_of[key]].url)
        for key in final_items
        if index_of[key] in item_meta and item_meta[index_of[key]].url is not None
    ]
    details: dict[str, object] = {
        "stats": stats.to_dict(),
        "source": {
            "kind": "amazon2023",
            "reviews": str(reviews),
            "meta": str(meta),
            "min_user": min_user,
            "min_item": min_item,
            "text_fields": list(fields),
            "require_image": require_image,
            "timestamp_unit": "seconds (from milliseconds, three decimals)",
        },
        "filtering": {
            "reviews_read": int(len(data.users)),
            "repeated_pairs_removed": int(duplicates),
            "reviewed_items_without_meta": without_meta,
            "reviewed_items_without_image": without_image,
            "before_k_core": before,
            "k_core_rounds": rounds,
            "items_with_image_url": len(images),
        },
        "reports": {"reviews": review_report.to_dict(), "meta": meta_report.to_dict()},
    }

    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_inter(
            tmp / f"{name}.inter",
            (
                (data.user_ids[int(u)], data.item_ids[int(i)], format_timestamp(int(t)))
                for u, i, t in zip(user_col, item_col, stamp_col)
            ),
        )
        empty = tuple("" for _ in fields)
        write_item(
            tmp / f"{name}.item",
            {
                key: item_meta.get(index_of[key], _ItemMeta(empty, None)).texts
                for key in final_items
            },
            fields,
        )
        write_tsv(tmp / "images.tsv", IMAGES_HEADER, images)
        write_json(tmp / "stats.json", details)
    logger.info("%s", stats.table_row())
    return PreparationResult(out=out, stats=stats, details=details)


_NO_META = _ItemMeta((), None)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_dataset_name(name: str) -> str:
    """Check a dataset name (it becomes file names and a RecBole dataset name).

    Args:
        name (str): The name.

    Returns:
        str: The name.

    Raises:
        ValueError: If it holds characters other than letters, digits, ``_``,
            ``.`` and ``-``, or does not start with a letter or digit.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            "--name (or the folder name of --out) must be letters, digits, '_', "
            f"'.' and '-', starting with a letter or digit; got {name!r}"
        )
    return name


def _counts(data: _Reviews, positions: np.ndarray) -> dict[str, int]:
    """Count users, items and interactions of a selection of reviews.

    Args:
        data (_Reviews): All reviews.
        positions (np.ndarray): The selected positions.

    Returns:
        dict[str, int]: ``users``, ``items`` and ``interactions``.
    """
    return {
        "users": int(np.unique(data.users[positions]).size),
        "items": int(np.unique(data.items[positions]).size),
        "interactions": int(positions.size),
    }
