"""IISAN: a decoupled side adapter network per group over a frozen encoder.

The encoder stays frozen and never runs during training: the pooled hidden
states of the selected layers are computed once for the whole catalogue and
kept on disk, memory-mapped (:class:`LayerStateCache`). Each group's side
network reads them.

Per group and per used modality ``m`` (image, text), for each selected layer
``l`` (in order):

- an intra-modal adapter ``a^m_l``: Linear(D_m, b), activation, Linear(b, S);
- a gate ``g^m_l = sigmoid(w^m_l)`` (a learnable scalar) mixing it into the
  running side state: ``s^m_l = g^m_l * a^m_l(h^m_l) + (1 - g^m_l) * s^m_{l-1}``,
  where the first selected layer starts the state (``s^m_first = a^m_first(h)``).

With both modalities, an inter-modal adapter per layer reads the concatenation of
the two intra-modal side states of that layer (Linear(2S, b), activation,
Linear(b, S)), gated the same way into an inter-modal state ``s^x``.

Output: each modality's final side state, with the final inter-modal state
ADDED (folded) to each of them, so ``modality_dims`` is ``{m: S}`` for every used
modality and the projector's input is ``S * n_modalities``. Folding (rather than
a third concatenated part) keeps the model's per-modality "missing content"
replacement meaningful: a missing image replaces the whole image part.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from logging import getLogger

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from recbole_perpeft.encoders.base import ItemEncoder
from recbole_perpeft.tuners.base import CataloguePass, GroupModuleBank

logger = getLogger(__name__)

CACHE_FORMAT = 1
CACHE_DTYPES = ("float16", "float32")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
IISAN_KEYS = ("layers", "bottleneck", "side_dim", "activation", "cache_dtype")


def resolve_layers(layers, n_layers: int) -> list[int]:
    """The sorted layer indices that ``layers`` selects among ``0..n_layers``.

    Args:
        layers (list[int] | str | None): indices (negative ones count from the
            last block), ``'all'`` (the embedding output and every block), or None
            for the default: every other layer from the embedding output, plus
            the last block.
        n_layers (int): blocks of the encoder's tower.
    """
    if layers is None:
        return sorted(set(range(0, n_layers + 1, 2)) | {n_layers})
    if layers == "all":
        return list(range(n_layers + 1))
    allowed = (
        f"'all', None or a non-empty list of integers in [{-n_layers - 1}, {n_layers}]"
    )
    if isinstance(layers, (str, int)) or not layers:
        raise ValueError(f"`peft_config.layers`: expected {allowed}, got {layers!r}.")
    resolved = set()
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(
                f"`peft_config.layers`: expected {allowed}, got {layers!r}."
            )
        if not -n_layers - 1 <= layer <= n_layers:
            raise ValueError(
                f"`peft_config.layers`: expected {allowed}, got {layers!r}."
            )
        resolved.add(layer % (n_layers + 1))
    return sorted(resolved)


def encoder_checksum(encoder: ItemEncoder) -> str:
    """sha256 over the names, shapes and values of the encoder's own tensors."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.backbone.state_dict().items()):
        data = tensor.detach().cpu()
        if data.dtype not in (torch.float32, torch.float16, torch.int64, torch.int32):
            data = data.float()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.contiguous().numpy().tobytes())
    return digest.hexdigest()


def content_checksum(content) -> dict:
    """What of the item content the layer states depend on."""
    digest = hashlib.sha256()
    if content.input_ids is not None:
        digest.update(content.input_ids.cpu().numpy().astype(np.int64).tobytes())
        digest.update(content.text_lengths.cpu().numpy().astype(np.int64).tobytes())
    image = content.image_store.fingerprint if content.image_store is not None else None
    return {
        "n_items": int(content.n_items),
        "tokens": digest.hexdigest(),
        "images": image,
    }


class LayerStateCache:
    """Pooled hidden states of the frozen encoder for the whole catalogue, on disk.

    Files in ``folder``: ``<modality>.npy`` ([n_items, n_selected_layers, D_m],
    memory-mapped) and ``meta.json`` (the fingerprint of the inputs). The meta
    file is removed before a rebuild and written last, so a half-built cache is
    never taken for a valid one; arrays are written under a temporary name and
    moved in place.

    Attributes:
        states (dict[str, np.ndarray]): read-only memory maps per modality.
        rebuilt (bool): whether this call computed the states.
    """

    def __init__(
        self, folder: str, states: dict[str, np.ndarray], rebuilt: bool
    ) -> None:
        self.folder = folder
        self.states = states
        self.rebuilt = rebuilt

    @staticmethod
    def fingerprint(
        encoder: ItemEncoder, encoder_id: dict, layers: list[int], content, dtype: str
    ) -> dict:
        """The JSON-able description of every input the states depend on."""
        return {
            "format": CACHE_FORMAT,
            "encoder": {
                "class": type(encoder).__name__,
                **encoder_id,
                "checksum": encoder_checksum(encoder),
            },
            "modalities": list(encoder.modalities),
            "layers": list(layers),
            "dtype": dtype,
            "content": content_checksum(content),
        }

    @classmethod
    def build_or_load(
        cls,
        folder: str,
        encoder: ItemEncoder,
        encoder_id: dict,
        layers: list[int],
        content,
        dtype: str = "float16",
        batch_size: int = 256,
        device: torch.device | str = "cpu",
        show_progress: bool = False,
    ) -> LayerStateCache:
        """The cache in ``folder``, reused if its fingerprint matches, else rebuilt.

        Args:
            folder (str): the cache's folder.
            encoder (ItemEncoder): the frozen encoder.
            encoder_id (dict): how the encoder was made (path, random_init).
            layers (list[int]): the selected layers.
            content (ItemContent): the catalogue's content.
            dtype (str): storage dtype, one of ``CACHE_DTYPES``.
            batch_size (int): items per encoder call.
            device (torch.device | str): where the encoder runs for the build.
            show_progress (bool): a progress bar over the build.
        """
        if dtype not in CACHE_DTYPES:
            raise ValueError(
                f"`peft_config.cache_dtype`: expected one of {list(CACHE_DTYPES)}, got {dtype!r}."
            )
        fingerprint = cls.fingerprint(encoder, encoder_id, layers, content, dtype)
        meta_path = os.path.join(folder, "meta.json")
        meta = None
        if os.path.isfile(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    meta = json.load(f)
            except (OSError, ValueError):
                meta = None
        if meta is not None and meta.get("fingerprint") == fingerprint:
            states = cls._open(folder, encoder.modalities, content.n_items, len(layers))
            if states is not None:
                logger.info(f"IISAN layer states: reusing {folder}")
                return cls(folder, states, rebuilt=False)
        os.makedirs(folder, exist_ok=True)
        if os.path.exists(meta_path):
            os.remove(meta_path)
        start = time.perf_counter()
        cls._build(
            folder, encoder, layers, content, dtype, batch_size, device, show_progress
        )
        seconds = time.perf_counter() - start
        tmp_meta = f"{meta_path}.tmp-{os.getpid()}"
        with open(tmp_meta, "w", encoding="utf-8") as f:
            json.dump(
                {"fingerprint": fingerprint, "build_seconds": round(seconds, 3)},
                f,
                indent=1,
            )
        os.replace(tmp_meta, meta_path)
        logger.info(
            f"IISAN layer states: built {folder} for {content.n_items} items, layers "
            f"{layers}, in {seconds:.1f} s"
        )
        states = cls._open(folder, encoder.modalities, content.n_items, len(layers))
        return cls(folder, states, rebuilt=True)

    @staticmethod
    def _open(
        folder: str, modalities: list[str], n_items: int, n_layers: int
    ) -> dict[str, np.ndarray] | None:
        states = {}
        for modality in modalities:
            path = os.path.join(folder, f"{modality}.npy")
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError):
                return None
            if array.ndim != 3 or array.shape[:2] != (n_items, n_layers):
                return None
            states[modality] = array
        return states

    @staticmethod
    @torch.no_grad()
    def _build(
        folder, encoder, layers, content, dtype, batch_size, device, show_progress
    ) -> None:
        was_training = encoder.training
        encoder.eval()
        chunks = torch.arange(content.n_items).split(batch_size)
        if show_progress:
            chunks = tqdm(chunks, total=len(chunks), ncols=100, desc="IISAN states")
        arrays: dict[str, np.ndarray] = {}
        tmp_paths: dict[str, str] = {}
        try:
            for chunk in chunks:
                out = encoder.layer_states(content.gather(chunk).to(device), layers)
                for modality, value in out.items():
                    if modality not in arrays:
                        path = os.path.join(folder, f"{modality}.npy.tmp-{os.getpid()}")
                        shape = (content.n_items, len(layers), value.shape[-1])
                        arrays[modality] = np.lib.format.open_memmap(
                            path, mode="w+", dtype=dtype, shape=shape
                        )
                        tmp_paths[modality] = path
                    rows = slice(int(chunk[0]), int(chunk[-1]) + 1)
                    arrays[modality][rows] = value.float().cpu().numpy().astype(dtype)
            for modality, array in arrays.items():
                array.flush()
            arrays.clear()
            for modality, path in tmp_paths.items():
                os.replace(path, os.path.join(folder, f"{modality}.npy"))
        finally:
            arrays.clear()
            for path in tmp_paths.values():
                if os.path.exists(path):
                    os.remove(path)
            encoder.train(was_training)


class GatedSideStream(nn.Module):
    """Adapters per selected layer and gates mixing them into a running state.

    Args:
        in_dim (int): width of each layer's input.
        n_layers (int): selected layers.
        bottleneck (int): adapter bottleneck width b.
        side_dim (int): side state width S.
        activation (str): one of ``ACTIVATIONS``.
    """

    def __init__(
        self,
        in_dim: int,
        n_layers: int,
        bottleneck: int,
        side_dim: int,
        activation: str,
    ) -> None:
        super().__init__()
        self.adapters = nn.ModuleList(
            nn.Sequential(
                nn.Linear(in_dim, bottleneck),
                ACTIVATIONS[activation](),
                nn.Linear(bottleneck, side_dim),
            )
            for _ in range(n_layers)
        )
        # One logit per layer after the first; sigmoid(0) = 0.5 mixes evenly.
        self.gate_logits = nn.Parameter(torch.zeros(max(n_layers - 1, 0)))

    def step(
        self, layer: int, inputs: torch.Tensor, state: torch.Tensor | None
    ) -> torch.Tensor:
        """The side state after layer ``layer`` given its input [N, in_dim]."""
        update = self.adapters[layer](inputs)
        if state is None:
            return update
        gate = torch.sigmoid(self.gate_logits[layer - 1])
        return gate * update + (1.0 - gate) * state


class IISANModule(nn.Module):
    """One group's side network: intra-modal streams and, with two modalities, an
    inter-modal stream. Keys of its state dict do not depend on the group."""

    def __init__(
        self,
        in_dims: dict[str, int],
        n_layers: int,
        bottleneck: int,
        side_dim: int,
        activation: str,
    ) -> None:
        super().__init__()
        self.modalities = list(in_dims)
        self.intra = nn.ModuleDict(
            {
                m: GatedSideStream(d, n_layers, bottleneck, side_dim, activation)
                for m, d in in_dims.items()
            }
        )
        self.inter = (
            GatedSideStream(
                side_dim * len(in_dims), n_layers, bottleneck, side_dim, activation
            )
            if len(in_dims) > 1
            else None
        )
        self.n_layers = n_layers

    def forward(self, states: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{m: [N, S]}`` from layer states ``{m: [N, n_layers, D_m]}``."""
        side: dict[str, torch.Tensor | None] = {m: None for m in self.modalities}
        inter = None
        for layer in range(self.n_layers):
            for m in self.modalities:
                side[m] = self.intra[m].step(layer, states[m][:, layer], side[m])
            if self.inter is not None:
                joint = torch.cat([side[m] for m in self.modalities], dim=-1)
                inter = self.inter.step(layer, joint, inter)
        if inter is None:
            return dict(side)
        return {m: side[m] + inter for m in self.modalities}


class IISANBank(GroupModuleBank):
    """``n_modules`` IISAN side networks over the cached layer states of a frozen encoder.

    Built by :func:`recbole_perpeft.tuners.build_bank` for ``peft_type: iisan``;
    the model calls :meth:`prepare` with the catalogue's content right after, which
    computes (or reuses) the layer-state cache and builds the side networks.

    Args:
        config (Config): RecBole config (``dataset``, ``content_cache_dir``,
            ``checkpoint_dir``, ``encode_batch_size``, ``device``, ...).
        encoder (ItemEncoder): frozen; it must implement ``layer_states``.
        n_modules (int): number of group modules.
        layers (list[int] | str | None): selected layers, see :func:`resolve_layers`.
        bottleneck (int): adapter bottleneck width.
        side_dim (int): side state width, the width of each modality's output.
        activation (str): adapter activation, one of ``ACTIVATIONS``.
        cache_dtype (str): storage dtype of the layer-state cache.
    """

    def __init__(
        self,
        config,
        encoder: ItemEncoder,
        n_modules: int,
        layers=None,
        bottleneck: int = 64,
        side_dim: int = 128,
        activation: str = "gelu",
        cache_dtype: str = "float16",
        **unknown,
    ) -> None:
        super().__init__(n_modules)
        if unknown:
            raise ValueError(
                f"`peft_config`: expected keys from {list(IISAN_KEYS)} for peft_type "
                f"'iisan', got {sorted(unknown)}."
            )
        for key, value in (("bottleneck", bottleneck), ("side_dim", side_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`peft_config.{key}`: expected an integer >= 1, got {value!r}."
                )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"`peft_config.activation`: expected one of {list(ACTIVATIONS)}, got {activation!r}."
            )
        if cache_dtype not in CACHE_DTYPES:
            raise ValueError(
                f"`peft_config.cache_dtype`: expected one of {list(CACHE_DTYPES)}, got {cache_dtype!r}."
            )
        # The model owns the encoder; keep a plain reference (no second copy of
        # its tensors in the state dict).
        object.__setattr__(self, "encoder", encoder)
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        # One selection for every tower (CLIP's towers have equal depth in practice).
        self.layers = resolve_layers(
            layers, min(encoder.layer_count(m) for m in encoder.modalities)
        )
        self.bottleneck = bottleneck
        self.side_dim = side_dim
        self.activation = activation
        self.cache_dtype = cache_dtype
        self.encoder_id = {
            "path": config["encoder_path"],
            "random_init": config["encoder_random_init"],
            "seed": config["seed"],
        }
        # one folder per encoder and layer selection, so that runs that switch
        # between encoders do not rebuild each other's states
        variant = hashlib.sha256(
            json.dumps(
                [type(encoder).__name__, self.encoder_id, encoder.modalities, self.layers],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()[:10]
        self.cache_folder = os.path.join(
            config["content_cache_dir"]
            or os.path.join(config["checkpoint_dir"], "content_cache"),
            f"{config['dataset']}-iisan-{variant}",
        )
        self.catalogue_pass = CataloguePass.from_config(config)
        self.modules_ = nn.ModuleList()
        self.cache: LayerStateCache | None = None
        self._states: dict[str, np.ndarray] | None = None

    # ---- setup --------------------------------------------------------------
    def prepare(self, content) -> None:
        """Build or reuse the layer-state cache of ``content``, then the side networks."""
        run = self.catalogue_pass
        with run.on_device(self.encoder) as device:
            self.cache = LayerStateCache.build_or_load(
                self.cache_folder,
                self.encoder,
                self.encoder_id,
                self.layers,
                content,
                dtype=self.cache_dtype,
                batch_size=run.batch_size,
                device=device,
                show_progress=run.show_progress,
            )
        self._states = self.cache.states
        if len(self.modules_) == 0:
            in_dims = {m: int(a.shape[-1]) for m, a in self.cache.states.items()}
            for _ in range(self.n_modules):
                self.modules_.append(
                    IISANModule(
                        in_dims,
                        len(self.layers),
                        self.bottleneck,
                        self.side_dim,
                        self.activation,
                    )
                )
            self.activate(self.active)

    def _check_prepared(self) -> None:
        if self._states is None:
            raise RuntimeError(
                "IISANBank.prepare(content) must run before the bank is used"
            )

    # ---- GroupModuleBank ----------------------------------------------------
    def activate(self, index: int) -> None:
        self.check_index(index)
        for i, module in enumerate(self.modules_):
            module.requires_grad_(i == index)
        self.active = index

    def module_parameters(self, index: int) -> list[nn.Parameter]:
        self.check_index(index)
        self._check_prepared()
        return list(self.modules_[index].parameters())

    def module_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        self.check_index(index)
        self._check_prepared()
        return dict(self.modules_[index].state_dict(keep_vars=True))

    def load_module_state_dict(
        self, index: int, state: dict[str, torch.Tensor]
    ) -> None:
        self.check_index(index)
        self._check_prepared()
        own = self.module_state_dict(index)
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(
                f"module {index}: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        with torch.no_grad():
            for key, tensor in own.items():
                tensor.copy_(state[key])

    @property
    def modality_dims(self) -> dict[str, int]:
        return {m: self.side_dim for m in self.encoder.modalities}

    def embed(
        self, item_ids: torch.Tensor, content, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Side-network outputs of the active group for ``item_ids``; reads the cache only."""
        if self._states is None:
            self.prepare(content)
        return self.modules_[self.active](self.read_states(item_ids, device))

    def read_states(
        self, item_ids: torch.Tensor, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Cached layer states ``{m: [N, n_layers, D_m]}`` of ``item_ids``, as float32."""
        ids = item_ids.cpu().numpy()
        return {
            m: torch.from_numpy(np.asarray(s[ids], dtype=np.float32)).to(device)
            for m, s in self._states.items()
        }
