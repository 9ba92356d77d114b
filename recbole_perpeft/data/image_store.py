"""A memory-mapped store of resized item images, keyed by RecBole's internal item id.

Every image is read once, resized like CLIP's preprocessing (see
:func:`recbole_perpeft.data.images.load_rgb_image`) and written as ``uint8`` into a
``.npy`` file of shape ``[n_items, 3, S, S]``, row ``i`` being internal item id
``i``. Row 0 is RecBole's padding item and is never available. Normalisation is
left to the encoders, which apply it on the fly in torch.

Files in ``cache_dir`` (``S`` is the image size):

- ``images_<S>.npy``: the array, opened read-only as a memory map; it is never
  held whole in RAM, neither while building (rows are written straight into the
  memory map) nor while training (:meth:`ImageStore.gather` copies only the
  requested rows).
- ``images_<S>.json``: the fingerprint of the inputs, ``n_items``, the image
  size, the problem counts and the internal ids of the items per problem.

The fingerprint is a sha256 over a format version, the image size, the decoded
pixel limit and, for every item, its absolute path, file size and ``mtime_ns``.
A store whose fingerprint matches is reused; any change (an image added, edited
or removed, a different image size) rebuilds it. A build writes temporary files
and moves them into place with ``os.replace``, after first removing the old JSON,
so an interrupted build never leaves a store that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
import torch

from recbole_perpeft.data import images as _images

logger = logging.getLogger(__name__)

#: Bumped whenever the stored pixels for the same inputs would change.
FORMAT_VERSION = 1

#: Default number of decoding threads (measured: 2 threads ~1.8x faster on 2 cores).
DEFAULT_NUM_WORKERS = min(4, os.cpu_count() or 1)

#: Item ids listed per reason in the warning line.
_SAMPLE = 5


def _file_signature(path: str | None) -> list:
    """``[abs_path, size, mtime_ns]`` of one input, or ``None`` parts if absent."""
    if path is None:
        return [None]
    apath = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(apath)
    except OSError:
        return [apath, None, None]
    return [apath, st.st_size, st.st_mtime_ns]


def compute_fingerprint(image_paths: list[str | None], image_size: int) -> str:
    """Fingerprint of the store's inputs.

    Args:
        image_paths (list[str | None]): Image file per internal item id.
        image_size (int): Side of the stored square images.

    Returns:
        str: Hex sha256 over the format version, image size, pixel limit and each
        item's absolute path, size and ``mtime_ns``.
    """
    h = hashlib.sha256()
    head = [FORMAT_VERSION, int(image_size), _images.MAX_DECODED_PIXELS]
    h.update(json.dumps(head).encode())
    for path in image_paths:
        h.update(b"\n")
        h.update(json.dumps(_file_signature(path)).encode())
    return h.hexdigest()


def format_problems(problems: dict[str, list[int]], n_items: int) -> str:
    """One line with counts per reason and up to five sample item ids each.

    Args:
        problems (dict[str, list[int]]): Reason -> internal item ids.
        n_items (int): Number of rows including padding.

    Returns:
        str: A human-readable summary.
    """
    total = sum(len(ids) for ids in problems.values())
    parts = []
    for reason, ids in problems.items():
        sample = ", ".join(str(i) for i in ids[:_SAMPLE])
        more = ", ..." if len(ids) > _SAMPLE else ""
        parts.append(f"{reason}={len(ids)} (item ids {sample}{more})")
    return (
        f"{total} of {n_items - 1} items have no usable image and will use the "
        f"missing-image embedding: " + "; ".join(parts)
    )


class ImageStore:
    """``uint8`` images ``[n_items, 3, S, S]`` in a numpy memmap by internal item id.

    Attributes:
        images (np.memmap): Read-only memory map ``[n_items, 3, S, S]`` ``uint8``.
        available (np.ndarray): ``bool [n_items]``; ``False`` for row 0 (padding)
            and for items whose image was missing or broken (their rows are 0).
        problems (dict[str, list[int]]): Reason -> internal item ids, reasons as in
            :data:`recbole_perpeft.data.images.REASONS`.
        image_size (int): Side ``S``.
        n_items (int): Number of rows, padding included.
        path (str): The ``.npy`` file.
        fingerprint (str): Fingerprint of the inputs the store was built from.
        rebuilt (bool): Whether this object built the store (``False``: reused).
    """

    def __init__(
        self,
        path: str,
        problems: dict[str, list[int]],
        fingerprint: str,
        rebuilt: bool,
    ) -> None:
        """Open a built store read-only.

        Args:
            path (str): The ``.npy`` file.
            problems (dict[str, list[int]]): Reason -> internal item ids.
            fingerprint (str): The store's input fingerprint.
            rebuilt (bool): Whether it was just built.
        """
        self.path = path
        self.images = np.load(path, mmap_mode="r")
        self.n_items = int(self.images.shape[0])
        self.image_size = int(self.images.shape[-1])
        self.problems = {k: list(v) for k, v in problems.items()}
        self.fingerprint = fingerprint
        self.rebuilt = rebuilt
        available = np.ones(self.n_items, dtype=bool)
        available[0] = False
        for ids in self.problems.values():
            available[np.asarray(ids, dtype=np.int64)] = False
        self.available = available

    @staticmethod
    def file_names(cache_dir: str | os.PathLike, image_size: int) -> tuple[str, str]:
        """Paths of the array and metadata files for one image size.

        Args:
            cache_dir (str | os.PathLike): The cache folder.
            image_size (int): Side ``S``.

        Returns:
            tuple[str, str]: ``(npy_path, json_path)``.
        """
        base = os.path.join(os.fspath(cache_dir), f"images_{int(image_size)}")
        return base + ".npy", base + ".json"

    @classmethod
    def build_or_load(
        cls,
        image_paths: list[str | None],
        image_size: int,
        cache_dir: str | os.PathLike,
        show_progress: bool = False,
        num_workers: int | None = None,
    ) -> "ImageStore":
        """Reuse the store in ``cache_dir`` if its inputs are unchanged, else build it.

        Args:
            image_paths (list[str | None]): ``image_paths[i]`` is the image file of
                internal item id ``i``; index 0 (padding) and items without an
                image are ``None``.
            image_size (int): Side ``S`` of the stored square images.
            cache_dir (str | os.PathLike): Folder for the store (created).
            show_progress (bool): Show a tqdm bar while building.
            num_workers (int | None): Decoding threads; ``None`` for
                :data:`DEFAULT_NUM_WORKERS`.

        Returns:
            ImageStore: The opened store.

        Raises:
            ValueError: If ``image_size`` or ``num_workers`` is not a positive
                integer, or ``image_paths`` is empty.
        """
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(
                f"image_size must be a positive integer, got {image_size!r}"
            )
        if num_workers is not None and (
            not isinstance(num_workers, int) or num_workers <= 0
        ):
            raise ValueError(
                f"num_workers must be a positive integer or None, got {num_workers!r}"
            )
        if len(image_paths) == 0:
            raise ValueError(
                "image_paths must have one entry per internal item id, padding "
                "(index 0) included; got an empty list"
            )
        image_paths = list(image_paths)
        if image_paths[0] is not None:
            logger.debug("Ignoring an image path given for padding item 0")
            image_paths[0] = None
        os.makedirs(cache_dir, exist_ok=True)
        npy_path, json_path = cls.file_names(cache_dir, image_size)
        fingerprint = compute_fingerprint(image_paths, image_size)
        meta = cls._read_meta(json_path)
        if (
            meta is not None
            and meta.get("fingerprint") == fingerprint
            and cls._array_ok(npy_path, len(image_paths), image_size)
        ):
            logger.info("Reusing image store %s", npy_path)
            store = cls(npy_path, meta["problems"], fingerprint, rebuilt=False)
        else:
            problems = cls._build(
                image_paths,
                image_size,
                npy_path,
                json_path,
                fingerprint,
                show_progress,
                num_workers or DEFAULT_NUM_WORKERS,
            )
            store = cls(npy_path, problems, fingerprint, rebuilt=True)
        if store.problems:
            logger.warning(
                "Image store %s: %s",
                npy_path,
                format_problems(store.problems, store.n_items),
            )
        return store

    @staticmethod
    def _read_meta(json_path: str) -> dict | None:
        """The metadata JSON, or ``None`` if absent or unreadable."""
        try:
            with open(json_path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    @staticmethod
    def _array_ok(npy_path: str, n_items: int, image_size: int) -> bool:
        """Whether ``npy_path`` is a ``uint8`` array of the expected shape."""
        try:
            arr = np.load(npy_path, mmap_mode="r")
        except (OSError, ValueError):
            return False
        expected = (n_items, 3, image_size, image_size)
        return arr.dtype == np.uint8 and tuple(arr.shape) == expected

    @staticmethod
    def _build(
        image_paths: list[str | None],
        image_size: int,
        npy_path: str,
        json_path: str,
        fingerprint: str,
        show_progress: bool,
        num_workers: int,
    ) -> dict[str, list[int]]:
        """Decode every image into a new memmap and move it into place atomically.

        Args:
            image_paths (list[str | None]): Image file per internal item id.
            image_size (int): Side ``S``.
            npy_path (str): Final array path.
            json_path (str): Final metadata path.
            fingerprint (str): Fingerprint of the inputs, saved in the JSON.
            show_progress (bool): Show a tqdm bar.
            num_workers (int): Decoding threads (1: no pool).

        Returns:
            dict[str, list[int]]: Reason -> sorted internal item ids.
        """
        n_items = len(image_paths)
        start = time.perf_counter()
        logger.info(
            "Building image store %s: %d items at %dx%d with %d worker(s)",
            npy_path,
            n_items - 1,
            image_size,
            image_size,
            num_workers,
        )
        tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp_npy = npy_path[: -len(".npy")] + tag + ".npy"
        tmp_json = json_path + tag
        # rows never written (padding, missing items) stay zero: the file is sparse
        out = np.lib.format.open_memmap(
            tmp_npy,
            mode="w+",
            dtype=np.uint8,
            shape=(n_items, 3, image_size, image_size),
        )  # [n_items, 3, S, S]
        reasons: dict[int, str] = {}
        try:

            def work(i: int) -> tuple[int, str | None]:
                arr, reason = _images.load_rgb_image(image_paths[i], image_size)
                if arr is not None:
                    out[i] = arr
                return i, reason

            todo = [i for i in range(1, n_items) if image_paths[i] is not None]
            for i in range(1, n_items):
                if image_paths[i] is None:
                    reasons[i] = "missing"
            bar = None
            if show_progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(todo), desc="images", unit="img")
            if num_workers == 1:
                results = (work(i) for i in todo)
                for i, reason in results:
                    if reason is not None:
                        reasons[i] = reason
                    if bar is not None:
                        bar.update(1)
            else:
                with ThreadPoolExecutor(max_workers=num_workers) as pool:
                    futures = [pool.submit(work, i) for i in todo]
                    for fut in as_completed(futures):
                        i, reason = fut.result()
                        if reason is not None:
                            reasons[i] = reason
                        if bar is not None:
                            bar.update(1)
            if bar is not None:
                bar.close()
            out.flush()
            del out
            problems: dict[str, list[int]] = {}
            for reason in _images.REASONS:
                ids = sorted(i for i, r in reasons.items() if r == reason)
                if ids:
                    problems[reason] = ids
            meta = {
                "format_version": FORMAT_VERSION,
                "fingerprint": fingerprint,
                "n_items": n_items,
                "image_size": image_size,
                "max_decoded_pixels": _images.MAX_DECODED_PIXELS,
                "n_available": n_items - 1 - len(reasons),
                "problem_counts": {k: len(v) for k, v in problems.items()},
                "problems": problems,
                "build_seconds": round(time.perf_counter() - start, 3),
            }
            with open(tmp_json, "w", encoding="utf-8") as f:
                json.dump(meta, f)
            # the JSON marks a store as valid: drop the old one before the swap
            if os.path.exists(json_path):
                os.remove(json_path)
            os.replace(tmp_npy, npy_path)
            os.replace(tmp_json, json_path)
        except BaseException:
            for tmp in (tmp_npy, tmp_json):
                if os.path.exists(tmp):
                    os.remove(tmp)
            raise
        logger.info(
            "Built image store %s in %.1f s (%d of %d items available)",
            npy_path,
            meta["build_seconds"],
            meta["n_available"],
            n_items - 1,
        )
        return problems

    def gather(self, item_ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Copy the rows of the given internal item ids.

        Args:
            item_ids (torch.Tensor | np.ndarray): Integer ids of any shape
                ``[*]``, on any device.

        Returns:
            torch.Tensor: ``uint8 [*, 3, S, S]`` on the CPU (a copy; rows of
            unavailable items are zeros). Move and normalise it in the encoder.

        Raises:
            IndexError: If an id is outside ``[0, n_items)``.
        """
        if isinstance(item_ids, torch.Tensor):
            ids = item_ids.detach().to("cpu", torch.int64).numpy()
        else:
            ids = np.asarray(item_ids, dtype=np.int64)
        flat = ids.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.n_items):
            raise IndexError(
                f"item ids must lie in [0, {self.n_items}); got values from "
                f"{int(flat.min())} to {int(flat.max())}"
            )
        s = self.image_size
        rows = np.asarray(self.images[flat])  # [N, 3, S, S]
        return torch.from_numpy(rows).reshape(*ids.shape, 3, s, s)

    def available_mask(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Availability of the given item ids as a bool tensor on their device.

        Args:
            item_ids (torch.Tensor): Integer ids of any shape ``[*]``.

        Returns:
            torch.Tensor: ``bool [*]`` on ``item_ids.device``.
        """
        mask = torch.from_numpy(self.available)
        return mask[item_ids.detach().to("cpu", torch.int64)].to(item_ids.device)

    def __len__(self) -> int:
        """Number of rows, padding included."""
        return self.n_items
