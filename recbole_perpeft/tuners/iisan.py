"""IISAN: a decoupled side adapter network per group over a frozen encoder.

The encoder stays frozen and never runs during training: the pooled hidden
states of the selected layers are computed once for the whole catalogue and
kept on disk, memory-mapped (:func:`layer_state_store`). Each group's side
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

import torch
from torch import nn

from recbole_perpeft.encoders.base import ItemEncoder
from recbole_perpeft.tuners.base import CataloguePass, GroupModuleBank
from recbole_perpeft.tuners.state_store import (
    STORE_DTYPES,
    CatalogueStates,
    content_checksum,
    encoder_fingerprint,
    encoder_identity,
    store_folder,
)

STATES_FORMAT = 2
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


def layer_state_store(
    folder: str,
    encoder: ItemEncoder,
    encoder_id: dict,
    layers: list[int],
    content,
    dtype: str = "float16",
    catalogue_pass: CataloguePass | None = None,
) -> CatalogueStates:
    """The pooled states of ``layers`` for every item ([n_items, n_layers, D_m]
    per modality), from the store in ``folder`` or computed into it.

    Args:
        folder (str): the store's folder.
        encoder (ItemEncoder): the frozen encoder; must implement ``layer_states``.
        encoder_id (dict): how the encoder was made (:func:`encoder_identity`).
        layers (list[int]): the selected layers.
        content (ItemContent): the catalogue's content.
        dtype (str): storage dtype (``peft_config.cache_dtype``).
        catalogue_pass (CataloguePass | None): batch size, device, progress bar.
    """
    fingerprint = {
        "format": STATES_FORMAT,
        "encoder": encoder_fingerprint(encoder, encoder_id),
        "modalities": list(encoder.modalities),
        "layers": list(layers),
        "content": content_checksum(content),
    }
    return CatalogueStates.build_or_load(
        folder,
        fingerprint,
        content,
        lambda batch: encoder.layer_states(batch, layers),
        catalogue_pass or CataloguePass(),
        "IISAN layer states",
        dtype=dtype,
        encoder=encoder,
    )


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
        if cache_dtype not in STORE_DTYPES:
            raise ValueError(
                f"`peft_config.cache_dtype`: expected one of {list(STORE_DTYPES)}, got {cache_dtype!r}."
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
        self.encoder_id = encoder_identity(config)
        self.cache_folder = store_folder(
            config,
            "iisan",
            [type(encoder).__name__, self.encoder_id, encoder.modalities, self.layers],
        )
        self.catalogue_pass = CataloguePass.from_config(config)
        self.modules_ = nn.ModuleList()
        self.cache: CatalogueStates | None = None

    # ---- setup --------------------------------------------------------------
    def prepare(self, content) -> None:
        """Build or reuse the layer-state cache of ``content``, then the side networks."""
        self.cache = layer_state_store(
            self.cache_folder,
            self.encoder,
            self.encoder_id,
            self.layers,
            content,
            dtype=self.cache_dtype,
            catalogue_pass=self.catalogue_pass,
        )
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
        if self.cache is None:
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
        if self.cache is None:
            self.prepare(content)
        return self.modules_[self.active](self.read_states(item_ids, device))

    def read_states(
        self, item_ids: torch.Tensor, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Cached layer states ``{m: [N, n_layers, D_m]}`` of ``item_ids``, as float32."""
        return self.cache.read(item_ids, device)
