"""The authors' published archive -> the same RecBole atomic layout.

No copy of the archive was at hand when this was written; it follows the
description of its files, and makes these assumptions (also in
``dataset/README.md``):

- ``<name>_final.txt``: whitespace-separated lines ``user item`` (one
  interaction per line) or ``user item1 item2 ...``; a user's interactions are
  in time order in the file. Order of first appearance is kept as is; lines
  with fewer than two fields are skipped and counted. A repeated
  ``(user, item)`` pair keeps its first occurrence (as in amazon2023); the
  repeats are counted.
- ``<name>_item2id_final.pickle``: a dict between raw item keys (e.g. ASINs)
  and the ids used in the txt. Its direction is detected: the side whose
  values match the txt ids is taken as the id side. A list is read as
  index -> raw key. If several raw keys map to one id, the first is used and a
  warning names them.
- ``<name>_texts_final.pickle``: a dict item -> title, keyed by the txt ids or
  by the raw keys (detected the same way); a list is read as index -> title.
  A title that is a list of strings is joined with spaces.
- ``<name>_images/<item>.jpg``: named by txt id or raw key (both are tried).
  Each image must decode (PIL ``verify`` and a full ``load``); one that does
  not is left out, like a missing image, and listed in ``stats.json``.

The pickles are read with an unpickler that only builds plain containers,
strings and numbers (and numpy scalars), since unpickling runs code; pass
``trust_pickles`` to lift that for an archive you trust.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import shutil
from collections.abc import Mapping
from pathlib import Path

from recbole_perpeft.data.preparation.amazon2023 import (
    PreparationResult,
    check_dataset_name,
)
from recbole_perpeft.data.preparation.atomic import (
    DatasetStats,
    PreparationError,
    ReadReport,
    atomic_directory,
    check_inputs_outside,
    check_output_dir,
    check_token,
    clean_text,
    output_path,
    write_inter,
    write_item,
    write_json,
)
from recbole_perpeft.data.preparation.image_download import check_image_bytes

logger = logging.getLogger(__name__)

IMAGE_MODES = ("copy", "symlink", "none")
ITEM_KEYS = ("raw", "id")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SAMPLE_SIZE = 5
VARIANT_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif")

_SAFE_GLOBALS = {
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "str"),
    ("builtins", "bytes"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "bool"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that refuses anything but plain data."""

    def find_class(self, module: str, name: str) -> object:
        """Resolve a global only if it is in the allowed list.

        Args:
            module (str): Module of the global.
            name (str): Its name.

        Returns:
            object: The global.

        Raises:
            pickle.UnpicklingError: For anything not allowed.
        """
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_pickle(path: Path, trust: bool = False) -> object:
    """Load a pickle of plain data.

    Args:
        path (Path): The file.
        trust (bool): Use the standard unpickler, which may run code.

    Returns:
        object: The unpickled object.

    Raises:
        PreparationError: If the file cannot be read as a pickle, or holds
            objects other than plain data without ``trust``.
    """
    data = path.read_bytes()
    try:
        if trust:
            return pickle.loads(data)
        return _PlainUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        hint = "" if trust else "; pass --trust-pickles if you trust the archive"
        raise PreparationError(f"{str(path)!r}: {exc}{hint}") from exc
    except Exception as exc:
        raise PreparationError(
            f"{str(path)!r} is not a readable pickle: {exc}"
        ) from exc


def _as_mapping(value: object, path: Path, what: str) -> dict[object, object]:
    """Accept a dict, or a list/tuple read as index -> value.

    Args:
        value (object): The unpickled object.
        path (Path): Its file, for messages.
        what (str): What it should hold, for messages.

    Returns:
        dict[object, object]: The mapping.

    Raises:
        PreparationError: For any other type.
    """
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return dict(enumerate(value))
    raise PreparationError(
        f"{str(path)!r} should hold a dict ({what}); got {type(value).__name__}"
    )


def _key(value: object) -> str:
    """Normalise a pickle key or value to the string form used in the txt.

    Args:
        value (object): An int, numpy integer, str, ...

    Returns:
        str: Its text, stripped.
    """
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).strip()


def read_interactions(path: Path, report: ReadReport) -> list[tuple[str, str]]:
    """Read ``<name>_final.txt`` into ``(user, item id)`` pairs in file order.

    Args:
        path (Path): The txt file.
        report (ReadReport): Filled in while reading.

    Returns:
        list[tuple[str, str]]: The interactions.

    Raises:
        PreparationError: If the file is empty or holds no interaction.
    """
    pairs: list[tuple[str, str]] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            report.lines += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("utf-8", errors="replace")
                report.non_utf8.add(number)
            parts = text.split()
            if len(parts) < 2:
                report.malformed.add(number)
                continue
            pairs.extend((parts[0], item) for item in parts[1:])
            report.records += 1
    if report.lines == 0:
        raise PreparationError(f"{str(path)!r} is empty")
    if not pairs:
        raise PreparationError(
            f"{str(path)!r} holds no 'user item' line ({report.lines} lines read)"
        )
    return pairs


def _first_of_each_pair(
    pairs: list[tuple[str, str]],
) -> tuple[list[tuple[str, str]], int]:
    """Keep each ``(user, item)`` pair once, at its first position.

    Args:
        pairs (list[tuple[str, str]]): Interactions in file order.

    Returns:
        tuple[list[tuple[str, str]], int]: The kept interactions and how many
        repeats were removed.
    """
    kept = list(dict.fromkeys(pairs))
    return kept, len(pairs) - len(kept)


def orient_item2id(
    mapping: dict[object, object], txt_ids: set[str], path: Path
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Return txt id -> raw key, whichever direction the pickle is stored in.

    If several raw keys map to one id, the first in the pickle's order is used
    and a warning gives the count and the first few such ids.

    Args:
        mapping (dict[object, object]): The unpickled item2id mapping.
        txt_ids (set[str]): Item ids used in the txt.
        path (Path): The pickle, for messages.

    Returns:
        tuple[dict[str, str], dict[str, list[str]]]: txt id -> raw item key,
        and, for each txt id with more than one raw key, all of them (the one
        used first).

    Raises:
        PreparationError: If neither side matches the txt ids.
    """
    keys = {_key(k) for k in mapping}
    values = {_key(v) for v in mapping.values()}
    by_values = len(txt_ids & values)
    by_keys = len(txt_ids & keys)
    if by_values == 0 and by_keys == 0:
        raise PreparationError(
            f"{str(path)!r}: neither its keys nor its values match the item ids "
            "of the txt file"
        )
    if by_values >= by_keys:
        logger.info("%s read as raw key -> id (%d ids match)", path.name, by_values)
        pairs = [(_key(v), _key(k)) for k, v in mapping.items()]
    else:
        logger.info("%s read as id -> raw key (%d ids match)", path.name, by_keys)
        pairs = [(_key(k), _key(v)) for k, v in mapping.items()]
    id_to_raw: dict[str, str] = {}
    several: dict[str, list[str]] = {}
    for tid, raw in pairs:
        first = id_to_raw.setdefault(tid, raw)
        if raw != first and tid in txt_ids and raw not in several.get(tid, ()):
            several.setdefault(tid, [first]).append(raw)
    if several:
        sample = "; ".join(
            f"{tid}: {', '.join(raws)}" for tid, raws in list(several.items())[:5]
        )
        more = "; ..." if len(several) > 5 else ""
        logger.warning(
            "%s: %d item ids of the txt have more than one raw key; the first "
            "is used: %s%s",
            path.name,
            len(several),
            sample,
            more,
        )
    return id_to_raw, several


def _title(value: object) -> str:
    """Turn a texts-pickle value into a title.

    Args:
        value (object): A string, a list of strings, or a dict with a title.

    Returns:
        str: The cleaned title.
    """
    if isinstance(value, Mapping):
        value = value.get("title", "")
    return clean_text(value)


def _find_image(images_dir: Path, names: tuple[str, ...]) -> Path | None:
    """Find an item's image under any of its names.

    Args:
        images_dir (Path): ``<name>_images``.
        names (tuple[str, ...]): Stems to try (txt id, raw key).

    Returns:
        Path | None: The image file, if any.
    """
    for stem in names:
        for suffix in IMAGE_SUFFIXES:
            candidate = images_dir / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _undecodable(found: Mapping[str, Path]) -> list[dict[str, str]]:
    """Check that each archive image decodes.

    Args:
        found (Mapping[str, Path]): Output item id -> archive image.

    Returns:
        list[dict[str, str]]: ``item_id``, ``file`` and ``reason`` of each image
        that cannot be read or decoded, by item id.
    """
    failures = []
    for item_id, path in sorted(found.items()):
        try:
            reason = check_image_bytes(path.read_bytes())
        except OSError as exc:
            reason = f"unreadable: {exc.strerror or exc}"
        if reason is not None:
            failures.append({"item_id": item_id, "file": str(path), "reason": reason})
    return failures


def _archive_name(archive: Path) -> str:
    """Find the dataset name from the single ``*_final.txt`` in the archive.

    Args:
        archive (Path): The archive folder.

    Returns:
        str: The name.

    Raises:
        PreparationError: If there is not exactly one such file.
    """
    found = sorted(archive.glob("*_final.txt"))
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) or "none"
        raise PreparationError(
            f"--archive {str(archive)!r} should hold exactly one <name>_final.txt "
            f"(found {listed}); pass --name"
        )
    return found[0].name[: -len("_final.txt")]


def convert_authors_archive(
    archive: Path | str,
    out: Path | str,
    name: str | None = None,
    images: str = "copy",
    item_key: str = "raw",
    trust_pickles: bool = False,
    overwrite: bool = False,
) -> PreparationResult:
    """Convert the authors' archive of one dataset into a RecBole dataset folder.

    Args:
        archive (Path | str): Folder holding ``<name>_final.txt`` and friends.
        out (Path | str): Output folder, ``dataset/<name>``.
        name (str | None): Name of the files in the archive; found from the
            single ``*_final.txt`` if not given. The output files are named
            after the folder name of ``out``.
        images (str): ``copy``, ``symlink`` (absolute links) or ``none``.
        item_key (str): ``raw`` to use the raw keys of the item2id pickle as
            item ids (as the amazon2023 converter does), ``id`` to keep the
            txt ids.
        trust_pickles (bool): Load the pickles with the standard unpickler.
        overwrite (bool): Write into an existing non-empty output folder,
            replacing only the files this step writes (``<name>.inter``,
            ``<name>.item``, ``stats.json`` and, per item, ``images/<item>.*``).

    Returns:
        PreparationResult: The folder, its statistics and the reading report.

    Raises:
        PreparationError: On missing, empty or inconsistent archive files, or
            an archive inside ``out``.
        ValueError: On an option value out of range.
        FileExistsError: If ``out`` exists and ``overwrite`` is off.
    """
    archive, out = Path(archive), Path(out)
    if images not in IMAGE_MODES:
        raise ValueError(
            f"--images must be one of {', '.join(IMAGE_MODES)}; got {images!r}"
        )
    if item_key not in ITEM_KEYS:
        raise ValueError(
            f"--item-key must be one of {', '.join(ITEM_KEYS)}; got {item_key!r}"
        )
    if not archive.is_dir():
        raise FileNotFoundError(f"--archive {str(archive)!r} is not a directory")
    check_inputs_outside(out, {"--archive": archive})
    source = name if name is not None else _archive_name(archive)
    out_name = check_dataset_name(output_path(out).name)
    check_output_dir(out, overwrite)
    txt = archive / f"{source}_final.txt"
    item2id_path = archive / f"{source}_item2id_final.pickle"
    texts_path = archive / f"{source}_texts_final.pickle"
    images_dir = archive / f"{source}_images"
    for path in (txt, texts_path) + ((item2id_path,) if item_key == "raw" else ()):
        if not path.is_file():
            raise PreparationError(f"--archive: {str(path)!r} is missing")

    report = ReadReport(str(txt))
    pairs, repeated = _first_of_each_pair(read_interactions(txt, report))
    report.log_warnings()
    if repeated:
        logger.warning(
            "%s: %d repeated (user, item) interactions removed (the first of "
            "each is kept)",
            txt,
            repeated,
        )
    txt_ids = {item for _, item in pairs}

    id_to_raw: dict[str, str] = {}
    several: dict[str, list[str]] = {}
    if item2id_path.is_file():
        id_to_raw, several = orient_item2id(
            _as_mapping(
                load_pickle(item2id_path, trust_pickles),
                item2id_path,
                "raw item key <-> id",
            ),
            txt_ids,
            item2id_path,
        )
    if item_key == "raw":
        missing = sorted(txt_ids - id_to_raw.keys())
        if missing:
            raise PreparationError(
                f"{len(missing)} item ids of the txt are not in {item2id_path.name} "
                f"(first: {', '.join(missing[:5])}); use --item-key id"
            )
        out_id = {tid: check_token(id_to_raw[tid], "raw item key") for tid in txt_ids}
    else:
        out_id = {tid: check_token(tid, "item id") for tid in txt_ids}
    if len(set(out_id.values())) != len(out_id):
        raise PreparationError(
            f"{item2id_path.name} maps several txt ids to the same raw key; "
            "use --item-key id"
        )
    texts = {
        _key(k): v
        for k, v in _as_mapping(
            load_pickle(texts_path, trust_pickles), texts_path, "item -> title"
        ).items()
    }
    raw_ids = {id_to_raw.get(tid, tid) for tid in txt_ids}
    by_raw = len(raw_ids & texts.keys()) if id_to_raw else 0
    by_id = len(txt_ids & texts.keys())
    texts_keyed = "raw" if by_raw > by_id else "id"
    logger.info("%s keyed by %s item keys", texts_path.name, texts_keyed)
    titles: dict[str, tuple[str]] = {}
    without_title = 0
    for tid in sorted(txt_ids, key=lambda t: out_id[t]):
        lookup = id_to_raw.get(tid, tid) if texts_keyed == "raw" else tid
        if lookup not in texts:
            without_title += 1
        titles[out_id[tid]] = (_title(texts.get(lookup, "")),)
    if without_title:
        logger.warning("%d items have no title in %s", without_title, texts_path.name)

    found_images: dict[str, Path] = {}
    if images != "none":
        if not images_dir.is_dir():
            logger.warning("%s is missing; no images are linked", images_dir)
        else:
            for tid in txt_ids:
                path = _find_image(images_dir, (tid, id_to_raw.get(tid, tid)))
                if path is not None:
                    found_images[out_id[tid]] = path
    image_failures = _undecodable(found_images)
    for failure in image_failures:
        del found_images[failure["item_id"]]
    if image_failures:
        sample = ", ".join(
            f"{Path(f['file']).name} ({f['reason']})"
            for f in image_failures[:SAMPLE_SIZE]
        )
        more = ", ..." if len(image_failures) > SAMPLE_SIZE else ""
        logger.warning(
            "%d images in %s do not decode and are left out (listed under "
            "image_failures in stats.json): %s%s",
            len(image_failures),
            images_dir,
            sample,
            more,
        )
    without_image = len(txt_ids) - len(found_images) if images != "none" else None
    if without_image:
        logger.warning("%d items have no image in %s", without_image, images_dir)

    users = {user for user, _ in pairs}
    stats = DatasetStats(out_name, len(users), len(txt_ids), len(pairs))
    details: dict[str, object] = {
        "stats": stats.to_dict(),
        "source": {
            "kind": "authors-archive",
            "archive": str(archive),
            "name": source,
            "item_key": item_key,
            "images": images,
            "texts_keyed_by": texts_keyed,
            "timestamp_unit": "synthetic: position of the interaction in the txt",
        },
        "filtering": {
            "repeated_pairs_removed": repeated,
            "ids_with_several_raw_keys": len(several),
            "items_without_title": without_title,
            "items_without_image": without_image,
            "images_not_decodable": len(image_failures),
        },
        "reports": {"interactions": report.to_dict()},
        "image_failures": image_failures,
    }
    written: dict[str, str] = {}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_inter(
            tmp / f"{out_name}.inter",
            ((user, out_id[tid], f"{n}.0") for n, (user, tid) in enumerate(pairs)),
        )
        write_item(tmp / f"{out_name}.item", titles, ("title",))
        if images != "none":
            target_dir = tmp / "images"
            target_dir.mkdir()
            for item_id, path in sorted(found_images.items()):
                target = target_dir / f"{item_id}{_suffix(path)}"
                written[item_id] = target.name
                if images == "copy":
                    shutil.copyfile(path, target)
                else:
                    os.symlink(path.resolve(), target)
        write_json(tmp / "stats.json", details)
    if written:
        _drop_other_variants(output_path(out) / "images", written)
    logger.info("%s", stats.table_row())
    return PreparationResult(out=out, stats=stats, details=details)


def _suffix(path: Path) -> str:
    """Return the output suffix of an archive image (``.jpeg`` becomes ``.jpg``).

    Args:
        path (Path): The archive image.

    Returns:
        str: The suffix with the dot.
    """
    suffix = path.suffix.lower()
    return ".jpg" if suffix == ".jpeg" else suffix


def _drop_other_variants(images_dir: Path, written: Mapping[str, str]) -> int:
    """Delete older images of the written items saved under another extension.

    After an overwrite, ``images/`` may still hold e.g. ``B00A.png`` next to the
    new ``B00A.jpg``; the image loader would pick one of them by extension, so
    the older one is removed. Images of other items are kept.

    Args:
        images_dir (Path): ``<out>/images``.
        written (Mapping[str, str]): Item id -> file name written by this run.

    Returns:
        int: Number of files removed.
    """
    removed = 0
    for entry in os.scandir(images_dir):
        stem, dot, ext = entry.name.rpartition(".")
        if (
            dot
            and stem in written
            and entry.name != written[stem]
            and ext.lower() in VARIANT_EXTS
        ):
            os.unlink(entry.path)
            removed += 1
    if removed:
        logger.info(
            "%s: removed %d older images of the same items", images_dir, removed
        )
    return removed
