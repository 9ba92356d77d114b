"""Per-item states of a frozen encoder, computed once for the catalogue and kept
on disk: IISAN's pooled layer states and the token states of cached lower layers.

A store is a folder: ``<modality>.npy`` per modality ([n_items, ...],
memory-mapped when read) and ``meta.json`` (the fingerprint of every input the
states depend on, and the arrays' shapes). A store whose fingerprint or shapes
do not match is rebuilt. The meta file is removed before a rebuild and written
last, and arrays are written under a temporary name and moved in place, so a
half-built store is never taken for a valid one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import ExitStack
from logging import getLogger
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from recbole_perpeft.encoders.base import ItemEncoder
from recbole_perpeft.tuners.base import CataloguePass

logger = getLogger(__name__)

STORE_DTYPES = ("float16", "float32")


def encoder_identity(config) -> dict:
    """How the encoder was made: its path or hub name, and for random weights
    their config and seed (pretrained weights do not depend on the seed, so runs
    with other seeds share their states)."""
    random_init = config["encoder_random_init"]
    return {
        "path": config["encoder_path"],
        "random_init": random_init,
        "seed": config["seed"] if random_init else None,
    }


def store_folder(config, kind: str, variant: list) -> str:
    """``<content_cache_dir>/<dataset>-<kind>-<hash of variant>``; one folder per
    variant (encoder, layer selection), so that runs switching between them do
    not rebuild each other's states; a change of the item content (text fields,
    tokenisation) rebuilds the folder in place. ``content_cache_dir`` defaults
    to ``<checkpoint_dir>/content_cache``; old folders are not removed."""
    digest = hashlib.sha256(json.dumps(variant, sort_keys=True, default=str).encode())
    root = config["content_cache_dir"] or os.path.join(config["checkpoint_dir"], "content_cache")
    return os.path.join(root, f"{config['dataset']}-{kind}-{digest.hexdigest()[:10]}")


def encoder_checksum(encoder: ItemEncoder, skip: set[str] = frozenset()) -> str:
    """sha256 over the names, shapes and values of the backbone's tensors, leaving
    out the ``skip`` keys (trainable adapter tensors, which the states do not use).
    Names are taken as before peft wrapped their module (``.base_layer`` dropped),
    so that every PEFT kind on the same weights gives the same checksum."""
    digest = hashlib.sha256()
    tensors = {
        name.replace(".base_layer.", "."): tensor
        for name, tensor in encoder.backbone.state_dict().items()
        if name not in skip
    }
    for name, tensor in sorted(tensors.items()):
        data = tensor.detach().cpu()
        if data.dtype not in (torch.float32, torch.float16, torch.int64, torch.int32):
            data = data.float()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.contiguous().numpy().tobytes())
    return digest.hexdigest()


def encoder_fingerprint(encoder: ItemEncoder, encoder_id: dict, skip: set[str] = frozenset()) -> dict:
    """The encoder part of a store's fingerprint: its class, how it was made
    (:func:`encoder_identity`) and the checksum of its weights."""
    return {"class": type(encoder).__name__, **encoder_id, "checksum": encoder_checksum(encoder, skip)}


def content_checksum(content) -> dict:
    """What of the item content (ItemContent) the states depend on."""
    digest = hashlib.sha256()
    if content.input_ids is not None:
        digest.update(content.input_ids.cpu().numpy().astype(np.int64).tobytes())
        digest.update(content.text_lengths.cpu().numpy().astype(np.int64).tobytes())
    image = content.image_store.fingerprint if content.image_store is not None else None
    return {"n_items": int(content.n_items), "tokens": digest.hexdigest(), "images": image}


def _same_shape(modality: str, value: torch.Tensor) -> tuple[int, ...]:
    return tuple(value.shape[1:])


class CatalogueStates:
    """The arrays of one store, read-only and memory-mapped.

    Attributes:
        folder (str): the store's folder.
        states (dict[str, np.ndarray]): ``{modality: [n_items, ...]}``.
        rebuilt (bool): whether this call computed the states.
    """

    def __init__(self, folder: str, states: dict[str, np.ndarray], rebuilt: bool) -> None:
        self.folder = folder
        self.states = states
        self.rebuilt = rebuilt

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.states.values())

    def read(
        self, item_ids: torch.Tensor, device: torch.device | str, widths: dict[str, int] | None = None
    ) -> dict[str, torch.Tensor]:
        """States ``{modality: [N, ...]}`` of ``item_ids`` as float32 on ``device``;
        ``widths`` cuts a modality's second axis (a batch's longest text)."""
        rows = item_ids.cpu().numpy()
        out = {}
        for modality, array in self.states.items():
            width = (widths or {}).get(modality)
            picked = array[rows] if width is None else array[rows, :width]
            out[modality] = torch.from_numpy(np.ascontiguousarray(picked)).to(device).float()
        return out

    @classmethod
    def build_or_load(
        cls,
        folder: str,
        fingerprint: dict,
        content,
        compute: Callable[[object], dict[str, torch.Tensor]],
        catalogue_pass: CataloguePass,
        label: str,
        dtype: str = "float32",
        row_shape: Callable[[str, torch.Tensor], tuple[int, ...]] = _same_shape,
        encoder: torch.nn.Module | None = None,
    ) -> CatalogueStates:
        """The store in ``folder``, reused if its fingerprint matches, else rebuilt.

        Args:
            folder (str): the store's folder.
            fingerprint (dict): JSON-able description of every input of the states.
            content (ItemContent): the catalogue's content.
            compute: ``compute(batch)`` gives ``{modality: [B, ...]}`` for a
                :class:`ContentBatch` on the pass's device (run under no_grad).
            catalogue_pass (CataloguePass): batch size, device, progress bar.
            label (str): names the states in logs and on the progress bar.
            dtype (str): storage dtype, one of ``STORE_DTYPES``.
            row_shape: ``row_shape(modality, first_value)`` is one item's array
                shape; values smaller than it (a chunk's shorter texts) fill its
                leading part and the rest stays zero.
            encoder: the module ``compute`` runs; during a build only, it is put
                on the pass's device and in eval mode, and restored after.
        """
        if dtype not in STORE_DTYPES:
            raise ValueError(f"storage dtype: expected one of {list(STORE_DTYPES)}, got {dtype!r}.")
        fingerprint = {**fingerprint, "dtype": dtype}
        meta_path = os.path.join(folder, "meta.json")
        meta = _read_json(meta_path)
        if meta is None:
            reason = "none stored yet" if not os.path.exists(meta_path) else "unreadable meta.json"
        elif meta.get("fingerprint") != fingerprint:
            reason = "encoder, settings or content changed"
        else:
            states = _open(folder, meta.get("shapes") or {}, dtype)
            if states is not None:
                logger.info(f"{label}: reusing {folder}")
                return cls(folder, states, rebuilt=False)
            reason = "arrays missing or of the wrong shape"
        logger.info(f"{label}: building {folder} ({reason})")
        start = time.perf_counter()
        try:
            os.makedirs(folder, exist_ok=True)
            _remove_leftovers(folder)
            if os.path.exists(meta_path):
                os.remove(meta_path)
            shapes = _build(folder, content, compute, catalogue_pass, label, dtype, row_shape, encoder)
            seconds = time.perf_counter() - start
            tmp_meta = f"{meta_path}.tmp-{os.getpid()}"
            with open(tmp_meta, "w", encoding="utf-8") as f:
                json.dump(
                    {"fingerprint": fingerprint, "shapes": shapes, "build_seconds": round(seconds, 3)},
                    f,
                    indent=1,
                )
            os.replace(tmp_meta, meta_path)
        except PermissionError as error:
            raise PermissionError(
                f"`content_cache_dir`: cannot write the {label} store in {folder} "
                f"({error}); set content_cache_dir to a writable folder."
            ) from error
        states = _open(folder, shapes, dtype)
        store = cls(folder, states, rebuilt=True)
        logger.info(
            f"{label}: built {folder} for {content.n_items} items in {seconds:.1f} s "
            f"({store.nbytes / 2**20:.1f} MiB, {dtype})"
        )
        return store


def _remove_leftovers(folder: str) -> None:
    """Temporary files (``<name>.tmp-<pid>``) of builds whose process is gone,
    killed before it could clean up; a live process's build is left alone."""
    for name in os.listdir(folder):
        _, mark, pid = name.rpartition(".tmp-")
        if mark and pid.isdigit() and not _process_alive(int(pid)):
            os.remove(os.path.join(folder, name))


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would signal it there: keep its files
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _open(folder: str, shapes: dict, dtype: str) -> dict[str, np.ndarray] | None:
    states = {}
    for modality, shape in shapes.items():
        try:
            array = np.load(os.path.join(folder, f"{modality}.npy"), mmap_mode="r")
        except (OSError, ValueError):
            return None
        if list(array.shape) != list(shape) or array.dtype != np.dtype(dtype):
            return None
        states[modality] = array
    return states or None


@torch.no_grad()
def _build(folder, content, compute, catalogue_pass, label, dtype, row_shape, encoder) -> dict:
    """Write every modality's array; returns ``{modality: shape}``."""
    with ExitStack() as restore:
        if encoder is not None:
            restore.enter_context(catalogue_pass.on_device(encoder))
            restore.callback(encoder.train, encoder.training)
            encoder.eval()
        return _write_arrays(folder, content, compute, catalogue_pass, label, dtype, row_shape)


def _write_arrays(folder, content, compute, catalogue_pass, label, dtype, row_shape) -> dict:
    chunks = torch.arange(content.n_items).split(catalogue_pass.batch_size)
    if catalogue_pass.show_progress:
        chunks = tqdm(chunks, total=len(chunks), ncols=100, desc=label)
    arrays: dict[str, np.ndarray] = {}
    tmp_paths: dict[str, str] = {}
    try:
        for chunk in chunks:
            out = compute(content.gather(chunk).to(catalogue_pass.device))
            rows = slice(int(chunk[0]), int(chunk[-1]) + 1)
            for modality, value in out.items():
                if modality not in arrays:
                    path = os.path.join(folder, f"{modality}.npy.tmp-{os.getpid()}")
                    shape = (content.n_items, *row_shape(modality, value))
                    arrays[modality] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
                    tmp_paths[modality] = path
                block = (rows, *(slice(0, n) for n in value.shape[1:]))
                arrays[modality][block] = value.float().cpu().numpy().astype(dtype)
        shapes = {m: list(a.shape) for m, a in arrays.items()}
        for array in arrays.values():
            array.flush()
        arrays.clear()
        for modality, path in tmp_paths.items():
            os.replace(path, os.path.join(folder, f"{modality}.npy"))
        return shapes
    finally:
        arrays.clear()
        for path in tmp_paths.values():
            if os.path.exists(path):
                os.remove(path)
