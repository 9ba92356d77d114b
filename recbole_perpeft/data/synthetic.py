"""A synthetic multimodal sequential-recommendation dataset with known structure.

Everything here is SYNTHETIC: rendered shapes and made-up titles, generated from a
seed, for tests and benchmarks of models that read item images and titles. It
says nothing about real shopping behaviour.

Items
    Each item has five attributes. Three are visible only in its image: ``shape``
    (circle, square, triangle, diamond, cross, ring), ``texture`` (plain, stripes,
    dots, checks, grid) and ``size`` (small, medium, large). ``colour`` (one of
    eight) is in the image and, for about half of the items, also in the title
    (``colour_in_title`` says which). ``keyword`` (vintage, eco, deluxe, ...) is
    only in the title. A title is ``<keyword> [<colour>] <material> <noun>``, e.g.
    ``eco red cotton lamp``; material and noun are random filler words. Images are
    ``image_size`` x ``image_size`` PNGs: a shape in the item's colour (with a
    little colour jitter) filled with its texture drawn darker, slightly moved
    off centre, on a light grey background.

Users
    User ``u`` belongs to latent group ``u % n_groups``. Group ``g`` shops by the
    attribute ``GROUP_ATTRIBUTES[g % 5]`` (colour, shape, keyword, texture,
    size). Groups that share an attribute (when ``n_groups > 5``) draw their
    users' preferred values from disjoint slices of that attribute's values. Each
    user has a preferred value and a second value of the same attribute. At
    position ``t`` of a sequence of length ``L`` an item is drawn

    - with probability ``1 - p_noise`` (0.8) from the items with the user's
      value: the second value with probability ``drift * t / (L - 1)`` (drift =
      0.4, a slow drift that makes order matter), the preferred value otherwise;
    - else from all items by popularity (a Zipf law over a random item order).

    Within a value, items are also drawn by popularity. Items are not repeated
    within a sequence unless the value has too few items. Lengths are uniform in
    ``seq_len`` (both ends included); timestamps increase strictly per user.

Files (RecBole atomic layout, tab-separated, typed headers)
    ``<name>.inter``: ``user_id:token item_id:token timestamp:float``;
    ``<name>.item``: ``item_id:token title:token_seq`` and the attribute columns
    ``colour:token shape:token texture:token size:token keyword:token
    colour_in_title:token``; ``images/<item_id>.png``; ``groups.tsv``: ground
    truth per user (``user_id group attribute preferred_value second_value``);
    ``stats.json``: counts, settings and per-group shares.

The attribute columns are ground truth: restrict RecBole's ``load_col`` (e.g.
``item: [item_id, title]``) in a model's config so they are not used as features.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
    "cyan": (40, 200, 210),
    "pink": (240, 120, 180),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")
TEXTURES: tuple[str, ...] = ("plain", "stripes", "dots", "checks", "grid")
SIZES: dict[str, float] = {"small": 0.45, "medium": 0.65, "large": 0.85}
KEYWORDS: tuple[str, ...] = (
    "vintage",
    "eco",
    "deluxe",
    "travel",
    "kids",
    "sport",
    "classic",
    "smart",
)
MATERIALS: tuple[str, ...] = (
    "cotton",
    "wooden",
    "steel",
    "ceramic",
    "leather",
    "glass",
    "woollen",
    "plastic",
)
NOUNS: tuple[str, ...] = (
    "mug",
    "lamp",
    "bag",
    "chair",
    "scarf",
    "bottle",
    "clock",
    "cushion",
    "notebook",
    "bowl",
    "vase",
    "hat",
)

#: Values of every attribute, in a fixed order.
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "texture": TEXTURES,
    "size": tuple(SIZES),
    "keyword": KEYWORDS,
}

#: The attribute group ``g`` shops by is ``GROUP_ATTRIBUTES[g % 5]``.
GROUP_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "keyword", "texture", "size")

#: Attribute columns written to the ``.item`` file, in order.
ITEM_COLUMNS: tuple[str, ...] = (
    "colour",
    "shape",
    "texture",
    "size",
    "keyword",
    "colour_in_title",
)

_BACKGROUND = 235
_TEXTURE_SHADE = 0.5
_CHUNK = 500


def _check_positive(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of ``shape`` of radius ``r`` on centred coordinates ``x, y``."""
    if shape == "circle":
        return x * x + y * y <= r * r
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.8 * r
    if shape == "triangle":  # apex up (y grows downwards)
        return (y <= 0.5 * r) & (np.abs(x) <= 0.577 * (y + r))
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= r
    if shape == "cross":
        ax, ay = np.abs(x), np.abs(y)
        return ((ax <= r / 3) & (ay <= r)) | ((ay <= r / 3) & (ax <= r))
    if shape == "ring":
        d2 = x * x + y * y
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _texture_mask(
    texture: str, u: np.ndarray, v: np.ndarray, phase: float
) -> np.ndarray:
    """Texture marks on unit coordinates ``u [1, S]``, ``v [S, 1]``; broadcastable."""
    period = 0.125
    fu = np.mod(u / period + phase, 1.0)
    fv = np.mod(v / period + phase, 1.0)
    if texture == "plain":
        return np.zeros((1, 1), dtype=bool)
    if texture == "stripes":
        return fv < 0.5
    if texture == "dots":
        return (fu - 0.5) ** 2 + (fv - 0.5) ** 2 <= 0.09
    if texture == "checks":
        return (fu < 0.5) ^ (fv < 0.5)
    if texture == "grid":
        return (fu < 0.25) | (fv < 0.25)
    raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")


def render_item_image(
    image_size: int,
    colour: tuple[int, int, int],
    shape: str,
    texture: str,
    radius: float,
    offset: tuple[float, float] = (0.0, 0.0),
    phase: float = 0.0,
) -> np.ndarray:
    """Draw one item image with numpy.

    Args:
        image_size (int): Side of the square image.
        colour (tuple[int, int, int]): RGB fill colour.
        shape (str): One of :data:`SHAPES`.
        texture (str): One of :data:`TEXTURES`.
        radius (float): Shape radius as a fraction of half the side.
        offset (tuple[float, float]): Centre offset ``(dx, dy)`` in the same unit.
        phase (float): Texture phase in ``[0, 1)``.

    Returns:
        np.ndarray: ``uint8 [S, S, 3]`` RGB pixels.
    """
    s = image_size
    c = (np.arange(s, dtype=np.float32) + 0.5) / s  # [S]
    u, v = c[None, :], c[:, None]  # [1, S], [S, 1]
    x = (u * 2.0 - 1.0) - offset[0]
    y = (v * 2.0 - 1.0) - offset[1]
    shape_m = _shape_mask(shape, x, y, radius)  # [S, S]
    tex_m = _texture_mask(texture, u, v, phase) & shape_m  # [S, S]
    img = np.full((s, s, 3), _BACKGROUND, dtype=np.uint8)  # [S, S, 3]
    fill = np.asarray(colour, dtype=np.uint8)
    dark = (fill.astype(np.float32) * _TEXTURE_SHADE).astype(np.uint8)
    img[shape_m] = fill
    img[tex_m] = dark
    return img


def _render_chunk(
    folder: str,
    image_size: int,
    ids: list[str],
    colours: np.ndarray,
    shapes: list[str],
    textures: list[str],
    radii: np.ndarray,
    offsets: np.ndarray,
    phases: np.ndarray,
) -> int:
    """Render and save a chunk of item images; returns how many were written."""
    for k, item_id in enumerate(ids):
        arr = render_item_image(
            image_size,
            tuple(int(c) for c in colours[k]),
            shapes[k],
            textures[k],
            float(radii[k]),
            (float(offsets[k, 0]), float(offsets[k, 1])),
            float(phases[k]),
        )
        Image.fromarray(arr).save(
            os.path.join(folder, f"{item_id}.png"), compress_level=1
        )
    return len(ids)


def _zipf_weights(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Popularity weights ``1 / rank**exponent`` over a random permutation."""
    ranks = rng.permutation(n) + 1
    return 1.0 / ranks.astype(np.float64) ** exponent


def _group_values(n_groups: int) -> list[tuple[str, tuple[str, ...]]]:
    """Per group: the attribute and the values its users may prefer."""
    n_attr = len(GROUP_ATTRIBUTES)
    out = []
    for g in range(n_groups):
        attr = GROUP_ATTRIBUTES[g % n_attr]
        values = ATTRIBUTE_VALUES[attr]
        sharing = len(range(g % n_attr, n_groups, n_attr))
        j = g // n_attr
        subset = values[j::sharing] if sharing <= len(values) else ()
        if not subset:
            subset = (values[j % len(values)],)
        out.append((attr, subset))
    return out


class _Sampler:
    """Draws item ids by popularity from all items or from one attribute value."""

    def __init__(
        self,
        attrs: dict[str, np.ndarray],
        popularity: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        """Index the items of every attribute value.

        Args:
            attrs (dict[str, np.ndarray]): Attribute -> value code per item.
            popularity (np.ndarray): Positive weight per item.
            rng (np.random.Generator): Source of the draws.
        """
        self.rng = rng
        self.all_items = np.arange(len(popularity))
        self.all_cdf = np.cumsum(popularity) / popularity.sum()
        self.pools: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        for attr, codes in attrs.items():
            for value in range(len(ATTRIBUTE_VALUES[attr])):
                items = np.flatnonzero(codes == value)
                if len(items):
                    cdf = np.cumsum(popularity[items])
                    self.pools[(attr, value)] = (items, cdf / cdf[-1])

    def draw(self, key: tuple[str, int] | None, seen: set[int]) -> int:
        """One item of the pool ``key`` (``None``: all items), avoiding ``seen``."""
        items, cdf = (self.all_items, self.all_cdf) if key is None else self.pools[key]
        item = -1
        for _ in range(8):
            item = int(
                items[min(np.searchsorted(cdf, self.rng.random()), len(cdf) - 1)]
            )
            if item not in seen:
                break
        return item


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    name: str = "synthetic",
    n_items: int = 1000,
    n_users: int = 800,
    n_groups: int = 4,
    seq_len: tuple[int, int] = (8, 16),
    image_size: int = 64,
    seed: int = 0,
    show_progress: bool = False,
    p_noise: float = 0.2,
    drift: float = 0.4,
    num_workers: int = 1,
) -> dict:
    """Write a synthetic multimodal dataset in RecBole's atomic layout.

    Args:
        out_dir (str | os.PathLike): Output folder (created; files overwritten).
        name (str): Dataset name, the stem of the ``.inter`` and ``.item`` files.
        n_items (int): Number of items.
        n_users (int): Number of users.
        n_groups (int): Number of latent interest groups.
        seq_len (tuple[int, int]): Inclusive range of sequence lengths.
        image_size (int): Side of the square PNG images.
        seed (int): Random seed; the same seed gives identical files.
        show_progress (bool): Show a tqdm bar while rendering images.
        p_noise (float): Probability that an interaction is a popularity draw.
        drift (float): Share of the second value at the end of a sequence.
        num_workers (int): Processes rendering images (1: in this process).

    Returns:
        dict: The statistics also written to ``stats.json``.

    Raises:
        ValueError: For an argument outside its allowed range (the message names
            the argument, what is allowed and what was given).
    """
    start = time.perf_counter()
    for key, value in [
        ("n_items", n_items),
        ("n_users", n_users),
        ("n_groups", n_groups),
        ("image_size", image_size),
        ("num_workers", num_workers),
    ]:
        _check_positive(key, value)
    if (
        len(seq_len) != 2
        or not all(isinstance(v, int) for v in seq_len)
        or not 1 <= seq_len[0] <= seq_len[1]
    ):
        raise ValueError(
            f"seq_len must be two integers (min, max) with 1 <= min <= max, "
            f"got {seq_len!r}"
        )
    for key, value in [("p_noise", p_noise), ("drift", drift)]:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{key} must be in [0, 1], got {value!r}")
    if not name or os.sep in name:
        raise ValueError(f"name must be a non-empty file stem, got {name!r}")

    out = os.fspath(out_dir)
    img_dir = os.path.join(out, "images")
    os.makedirs(img_dir, exist_ok=True)
    root = np.random.SeedSequence(seed)
    item_ss, user_ss, render_ss = root.spawn(3)
    rng = np.random.default_rng(item_ss)

    # --- items -----------------------------------------------------------------
    width = len(str(n_items))
    item_ids = [f"i{k + 1:0{width}d}" for k in range(n_items)]
    codes = {
        attr: rng.integers(0, len(values), size=n_items)
        for attr, values in ATTRIBUTE_VALUES.items()
    }
    colour_in_title = rng.random(n_items) < 0.5
    materials = rng.integers(0, len(MATERIALS), size=n_items)
    nouns = rng.integers(0, len(NOUNS), size=n_items)
    titles = []
    for k in range(n_items):
        words = [KEYWORDS[codes["keyword"][k]]]
        if colour_in_title[k]:
            words.append(ATTRIBUTE_VALUES["colour"][codes["colour"][k]])
        words += [MATERIALS[materials[k]], NOUNS[nouns[k]]]
        titles.append(" ".join(words))
    popularity = _zipf_weights(n_items, rng, exponent=0.8)

    item_path = os.path.join(out, f"{name}.item")
    header = ["item_id:token", "title:token_seq"] + [f"{c}:token" for c in ITEM_COLUMNS]
    with open(item_path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(header) + "\n")
        for k in range(n_items):
            row = [item_ids[k], titles[k]]
            row += [ATTRIBUTE_VALUES[a][codes[a][k]] for a in ITEM_COLUMNS[:-1]]
            row.append("1" if colour_in_title[k] else "0")
            f.write("\t".join(row) + "\n")

    # --- users and sequences -----------------------------------------------------
    urng = np.random.default_rng(user_ss)
    sampler = _Sampler(codes, popularity, urng)
    groups = _group_values(n_groups)
    user_width = len(str(n_users))
    n_inter = 0
    hits = np.zeros((n_groups, 3), dtype=np.int64)  # preferred, second, total
    inter_path = os.path.join(out, f"{name}.inter")
    groups_path = os.path.join(out, "groups.tsv")
    with open(inter_path, "w", encoding="utf-8", newline="\n") as fi, open(
        groups_path, "w", encoding="utf-8", newline="\n"
    ) as fg:
        fi.write("user_id:token\titem_id:token\ttimestamp:float\n")
        fg.write("user_id\tgroup\tattribute\tpreferred_value\tsecond_value\n")
        for u in range(n_users):
            g = u % n_groups
            attr, subset = groups[g]
            values = ATTRIBUTE_VALUES[attr]
            pref = values.index(subset[urng.integers(len(subset))])
            others = [v for v in range(len(values)) if v != pref]
            second = int(others[urng.integers(len(others))]) if others else pref
            user_id = f"u{u + 1:0{user_width}d}"
            fg.write(f"{user_id}\t{g}\t{attr}\t{values[pref]}\t{values[second]}\n")
            length = int(urng.integers(seq_len[0], seq_len[1] + 1))
            t = 1_600_000_000 + int(urng.integers(0, 10_000_000))
            gaps = urng.integers(60, 86_400, size=length)
            noise = urng.random(length) < p_noise
            drift_u = urng.random(length)
            seen: set[int] = set()
            for pos in range(length):
                if noise[pos]:
                    key = None
                else:
                    share = drift * pos / (length - 1) if length > 1 else 0.0
                    value = second if drift_u[pos] < share else pref
                    key = (attr, value) if (attr, value) in sampler.pools else None
                item = sampler.draw(key, seen)
                seen.add(item)
                t += int(gaps[pos])
                fi.write(f"{user_id}\t{item_ids[item]}\t{t}\n")
                got = int(codes[attr][item])
                hits[g, 0] += got == pref
                hits[g, 1] += got == second
                hits[g, 2] += 1
            n_inter += length

    # --- images ------------------------------------------------------------------
    rrng = np.random.default_rng(render_ss)
    base = np.asarray(list(COLOURS.values()), dtype=np.int16)[codes["colour"]]
    jitter = rrng.integers(-12, 13, size=(n_items, 3))
    colours = np.clip(base + jitter, 0, 255).astype(np.uint8)  # [n_items, 3]
    radii = np.asarray(list(SIZES.values()))[codes["size"]]
    offsets = rrng.uniform(-0.1, 0.1, size=(n_items, 2))  # [n_items, 2]
    phases = rrng.random(n_items)
    shapes = [SHAPES[c] for c in codes["shape"]]
    textures = [TEXTURES[c] for c in codes["texture"]]
    chunks = [
        (
            img_dir,
            image_size,
            item_ids[a : a + _CHUNK],
            colours[a : a + _CHUNK],
            shapes[a : a + _CHUNK],
            textures[a : a + _CHUNK],
            radii[a : a + _CHUNK],
            offsets[a : a + _CHUNK],
            phases[a : a + _CHUNK],
        )
        for a in range(0, n_items, _CHUNK)
    ]
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_items, desc="rendering", unit="img")
    render_start = time.perf_counter()
    if num_workers == 1:
        for chunk in chunks:
            done = _render_chunk(*chunk)
            if bar is not None:
                bar.update(done)
    else:
        methods = ("fork", "spawn")
        ctx = get_context(next(m for m in methods if _has_start_method(m)))
        with ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
            for done in pool.map(_render_chunk_star, chunks):
                if bar is not None:
                    bar.update(done)
    if bar is not None:
        bar.close()
    render_seconds = time.perf_counter() - render_start

    stats = {
        "synthetic": True,
        "name": name,
        "seed": seed,
        "n_items": n_items,
        "n_users": n_users,
        "n_interactions": n_inter,
        "n_groups": n_groups,
        "seq_len": list(seq_len),
        "image_size": image_size,
        "p_noise": p_noise,
        "drift": drift,
        "groups": [
            {
                "group": g,
                "attribute": groups[g][0],
                "candidate_values": list(groups[g][1]),
                "n_users": len(range(g, n_users, n_groups)),
                "preferred_share": float(hits[g, 0] / max(hits[g, 2], 1)),
                "second_share": float(hits[g, 1] / max(hits[g, 2], 1)),
            }
            for g in range(n_groups)
        ],
        "colour_in_title_share": float(colour_in_title.mean()),
        "render_seconds": round(render_seconds, 3),
        "total_seconds": round(time.perf_counter() - start, 3),
    }
    with open(os.path.join(out, "stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2)
    logger.info(
        "Wrote synthetic dataset %s: %d items, %d users, %d interactions in %.1f s",
        out,
        n_items,
        n_users,
        n_inter,
        stats["total_seconds"],
    )
    return stats


def _render_chunk_star(args: tuple) -> int:
    """``_render_chunk`` taking one tuple (for ``Executor.map``)."""
    return _render_chunk(*args)


def _has_start_method(method: str) -> bool:
    """Whether ``multiprocessing`` supports ``method`` here."""
    import multiprocessing

    return method in multiprocessing.get_all_start_methods()
