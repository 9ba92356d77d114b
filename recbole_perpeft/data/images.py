"""Reading one item image robustly, and finding the image file of each item.

:func:`load_rgb_image` turns any file into a ``uint8`` array ``[3, S, S]`` using
the same geometry as CLIP's default preprocessing (torchvision's
``Resize(S, BICUBIC)`` followed by ``CenterCrop(S)``), or returns a reason why it
could not. It never raises for a bad file: the caller marks the item as having no
image and the model uses a learned "missing" embedding instead.

Reasons (see :data:`REASONS`):

- ``missing``: no path, or the path does not exist.
- ``empty``: the file has zero bytes.
- ``not_an_image``: Pillow does not recognise the format (an HTML error page
  saved under ``.jpg``, a text file, ...).
- ``truncated``: the header is fine but the pixel data ends early.
- ``too_large``: the image would decode to more than :data:`MAX_DECODED_PIXELS`
  pixels, or Pillow itself flags it as a decompression bomb. Such images are
  reported, not downscaled: a file that large is far more often an attack or a
  broken export than a real product photo. JPEGs are first shrunk while decoding
  (Pillow's draft mode, by a power of two that keeps at least twice the target
  size), and only the drafted size counts against the limit, so big but ordinary
  JPEG photos still load.
- ``unreadable``: anything else (permission denied, a directory, a decoder
  error, an image mode that cannot be converted).

Colour handling: CMYK, YCbCr, 1-bit and grayscale images are converted to RGB;
images with transparency (RGBA, LA, PA and palette images with a transparency
entry) are composited onto white; 16- and 32-bit integer and float grayscale
images are scaled to 8 bits (``I;16``: divided by 257; ``I``/``F``: the same when
the maximum exceeds 255, else taken as already 8-bit). EXIF orientation is not
applied, as in CLIP's preprocessing. Animated files give their first frame.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

#: Every reason :func:`load_rgb_image` may return, in reporting order.
REASONS: tuple[str, ...] = (
    "missing",
    "empty",
    "not_an_image",
    "truncated",
    "too_large",
    "unreadable",
)

#: Largest number of pixels an image may decode to (after JPEG draft scaling).
MAX_DECODED_PIXELS: int = 50_000_000

#: File extensions tried, in this order, when looking for ``<raw_id>.<ext>``;
#: the last four are those ``download-images`` may also save.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    "jpg",
    "jpeg",
    "png",
    "webp",
    "gif",
    "bmp",
    "tif",
    "tiff",
)

#: RecBole's padding token; never has an image.
PADDING_TOKEN = "[PAD]"


def resized_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """Size after resizing the shorter side to ``image_size``, as torchvision does.

    Args:
        width (int): Original width.
        height (int): Original height.
        image_size (int): Target length of the shorter side.

    Returns:
        tuple[int, int]: ``(new_width, new_height)``; the longer side is truncated
        to an integer like ``torchvision.transforms.functional.resize``.
    """
    if width <= height:
        return image_size, int(image_size * height / width)
    return int(image_size * width / height), image_size


def resize_center_crop(img: Image.Image, image_size: int) -> Image.Image:
    """Resize the shorter side to ``image_size`` (bicubic) and center-crop a square.

    Matches torchvision's ``Resize(image_size, BICUBIC)`` + ``CenterCrop`` on PIL
    images pixel for pixel (CLIP's default preprocessing geometry).

    Args:
        img (Image.Image): An RGB image.
        image_size (int): Side of the square output.

    Returns:
        Image.Image: An ``image_size`` x ``image_size`` image.
    """
    width, height = img.size
    new_w, new_h = resized_size(width, height, image_size)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    if (left, top, new_w, new_h) == (0, 0, image_size, image_size):
        return img
    return img.crop((left, top, left + image_size, top + image_size))


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float grayscale image to mode ``L``."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16") or float(arr.max(initial=0.0)) > 255.0:
        arr = np.clip(arr, 0.0, 65535.0) / 257.0
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)  # [H, W]
    return Image.fromarray(arr)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow image to RGB, compositing transparency onto white.

    Args:
        img (Image.Image): A loaded image of any mode.

    Returns:
        Image.Image: An RGB image of the same size.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_l(img).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _classify_error(exc: BaseException) -> str:
    """Map a decoding exception to a reason."""
    if isinstance(exc, Image.DecompressionBombError):
        return "too_large"
    if isinstance(exc, UnidentifiedImageError):
        return "not_an_image"
    if isinstance(exc, EOFError):
        return "truncated"
    text = str(exc).lower()
    if "truncated" in text or "premature end" in text or "broken data" in text:
        return "truncated"
    return "unreadable"


def load_rgb_image(
    path: str | os.PathLike | None, image_size: int
) -> tuple[np.ndarray | None, str | None]:
    """Read one image file and resize it like CLIP's preprocessing.

    The shorter side is resized to ``image_size`` (bicubic) and the center
    ``image_size`` x ``image_size`` square is cropped. No normalisation is applied.

    Args:
        path (str | os.PathLike | None): The image file; ``None`` means the item
            has no image.
        image_size (int): Side ``S`` of the square output.

    Returns:
        tuple[np.ndarray | None, str | None]: ``(array, None)`` with a ``uint8``
        array ``[3, S, S]`` on success, else ``(None, reason)`` with a reason from
        :data:`REASONS`. Never raises for a bad file.
    """
    if path is None:
        return None, "missing"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "missing"
    except OSError:
        return None, "unreadable"
    if not os.path.isfile(path):
        return None, "unreadable"
    if st.st_size == 0:
        return None, "empty"
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                w, h = resized_size(img.width, img.height, image_size)
                img.draft(None, (2 * w, 2 * h))
            if img.width * img.height > MAX_DECODED_PIXELS:
                return None, "too_large"
            img.load()
            rgb = resize_center_crop(to_rgb(img), image_size)
            arr = np.asarray(rgb, dtype=np.uint8)  # [S, S, 3]
    except Exception as exc:  # noqa: BLE001 - a bad file must never crash a run
        reason = _classify_error(exc)
        logger.debug("Cannot read image %s (%s): %r", path, reason, exc)
        return None, reason
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), None  # [3, S, S]


def _index_image_dir(image_dir: str) -> dict[str, str]:
    """Map file stem -> file name for the preferred extension in ``image_dir``."""
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    best: dict[str, tuple[int, str]] = {}
    try:
        entries = list(os.scandir(image_dir))
    except OSError:
        return {}
    for entry in entries:
        stem, dot, ext = entry.name.rpartition(".")
        if not dot or ext.lower() not in rank:
            continue
        r = rank[ext.lower()]
        # exact lower-case extensions win over upper-case spellings of the same
        key = (r, 0 if ext == ext.lower() else 1)
        old = best.get(stem)
        if old is None or key < old[0]:
            best[stem] = (key, entry.name)
    return {stem: name for stem, (_, name) in best.items()}


def find_item_images(
    dataset_dir: str | os.PathLike,
    raw_item_ids: list[str],
    image_dir: str | None = "images",
    image_column_values: list[str | None] | None = None,
) -> list[str | None]:
    """Find the image file of each item.

    For item ``i`` the path is ``image_column_values[i]`` when that is a non-empty
    string (relative to ``dataset_dir`` unless absolute; it is returned even if the
    file does not exist, so the store reports it as ``missing``), else
    ``<dataset_dir>/<image_dir>/<raw_id>.<ext>`` for the first extension of
    :data:`IMAGE_EXTENSIONS` that exists (lower case preferred, upper case
    accepted), else ``None``. RecBole's padding token ``[PAD]`` always gets
    ``None``, so ``dataset.field2id_token[iid_field]`` can be passed directly.

    Args:
        dataset_dir (str | os.PathLike): The dataset folder.
        raw_item_ids (list[str]): Raw item tokens, in internal-id order.
        image_dir (str | None): Folder of ``<raw_id>.<ext>`` files, relative to
            ``dataset_dir`` unless absolute; ``None`` to use the column only.
        image_column_values (list[str | None] | None): Per-item paths from an
            item feature column, aligned with ``raw_item_ids``.

    Returns:
        list[str | None]: One path or ``None`` per item.

    Raises:
        ValueError: If ``image_column_values`` and ``raw_item_ids`` differ in
            length.
    """
    dataset_dir = os.fspath(dataset_dir)
    if image_column_values is not None and len(image_column_values) != len(
        raw_item_ids
    ):
        raise ValueError(
            "image_column_values must have one value per item: got "
            f"{len(image_column_values)} values for {len(raw_item_ids)} items"
        )
    folder = None
    index: dict[str, str] = {}
    if image_dir is not None:
        folder = os.path.join(dataset_dir, image_dir)
        index = _index_image_dir(folder)
    paths: list[str | None] = []
    for i, raw_id in enumerate(raw_item_ids):
        raw_id = str(raw_id)
        if raw_id == PADDING_TOKEN:
            paths.append(None)
            continue
        value = None if image_column_values is None else image_column_values[i]
        if isinstance(value, str) and value.strip():
            value = value.strip()
            paths.append(
                value if os.path.isabs(value) else os.path.join(dataset_dir, value)
            )
        elif folder is not None and raw_id in index:
            paths.append(os.path.join(folder, index[raw_id]))
        else:
            paths.append(None)
    n_found = sum(p is not None for p in paths)
    logger.info("Found image paths for %d of %d items", n_found, len(raw_item_ids))
    return paths
