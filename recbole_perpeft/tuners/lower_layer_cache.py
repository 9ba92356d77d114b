"""Cached lower layers: the frozen blocks below a tower's first adapter run once.

When a PEFT method adapts only blocks k and above of a tower (peft's
``layers_to_transform``), blocks 0..k-1 are frozen and see fixed inputs, so
their output, the token states that enter block k, is the same in every
training step. ``cache_frozen_layers: True`` computes it once for the whole
catalogue; each step then runs blocks k.. only, as IISAN's side network reads
its cached states instead of running the encoder.

The states are computed in eval mode (no dropout in the frozen lower blocks)
and stored as float32 on disk (:mod:`~recbole_perpeft.tuners.state_store`,
memory-mapped, reused by later runs with the same encoder, blocks and content),
[n_items, T, D] per tower: T is the catalogue's longest text (cut to each
batch's longest when read) or the image's tokens.
"""

from __future__ import annotations

import torch

from recbole_perpeft.encoders.base import ItemEncoder
from recbole_perpeft.tuners.base import CataloguePass
from recbole_perpeft.tuners.state_store import CatalogueStates, content_checksum, encoder_fingerprint

STATES_FORMAT = 1


def first_adapted_blocks(encoder: ItemEncoder, module_names: list[str]) -> dict[str, int]:
    """The lowest adapted block of each used tower; a tower without adapters gets
    its block count (all of it is frozen).

    Args:
        encoder (ItemEncoder): the encoder the adapters sit in.
        module_names (list[str]): backbone module names of the wrapped modules.
    """
    first = {m: encoder.layer_count(m) for m in encoder.modalities}
    for name in module_names:
        located = encoder.block_of(name)
        if located is None:
            # an adapter outside the blocks (e.g. on a projection): nothing below
            # it can be cached in the tower that holds it
            first[encoder.module_modality(name)] = 0
            continue
        modality, block = located
        if modality in first:
            first[modality] = min(first[modality], block)
    return first


class LowerLayerCache:
    """The token states entering each tower's first adapted block, for the catalogue.

    Args:
        encoder (ItemEncoder): implements ``hidden_before_block`` and
            ``encode_from_block``.
        first_blocks (dict[str, int]): the first adapted block per modality
            (:func:`first_adapted_blocks`).
    """

    def __init__(self, encoder: ItemEncoder, first_blocks: dict[str, int]) -> None:
        self.encoder = encoder
        self.first_blocks = dict(first_blocks)
        self.store: CatalogueStates | None = None

    @property
    def states(self) -> dict:
        """``{modality: [n_items, T, D]}`` memory-mapped arrays (empty before build)."""
        return self.store.states if self.store is not None else {}

    def build(
        self,
        folder: str,
        encoder_id: dict,
        content,
        catalogue_pass: CataloguePass,
        adapter_keys: set[str] = frozenset(),
    ) -> None:
        """Run the lower blocks over the catalogue ``content`` (ItemContent) once,
        or reuse the states a run with the same inputs stored in ``folder``.

        Args:
            folder (str): the store's folder.
            encoder_id (dict): how the encoder was made (path, random init, seed).
            content (ItemContent): the catalogue's content.
            catalogue_pass (CataloguePass): batch size, device, progress bar.
            adapter_keys (set[str]): backbone state keys of the adapters, left
                out of the encoder's checksum (the lower blocks do not use them).
        """
        encoder = self.encoder
        fingerprint = {
            "format": STATES_FORMAT,
            "encoder": encoder_fingerprint(encoder, encoder_id, adapter_keys),
            "first_blocks": self.first_blocks,
            "content": content_checksum(content),
        }
        text_width = content.input_ids.shape[1] if content.input_ids is not None else 0

        def compute(batch):
            return {
                modality: encoder.hidden_before_block(batch, modality, block)
                for modality, block in self.first_blocks.items()
            }

        def row_shape(modality, value):
            # texts: room for the catalogue's longest, whatever the chunk's longest
            return (text_width, value.shape[-1]) if modality == "text" else tuple(value.shape[1:])

        blocks = ", ".join(
            f"{m} blocks 0..{b - 1} of {encoder.layer_count(m)}" for m, b in self.first_blocks.items()
        )
        self.store = CatalogueStates.build_or_load(
            folder,
            fingerprint,
            content,
            compute,
            catalogue_pass,
            f"cache_frozen_layers ({blocks})",
            row_shape=row_shape,
            encoder=encoder,
        )

    def embed(
        self, item_ids: torch.Tensor, content, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Embeddings ``{modality: [N, D_m]}`` of ``item_ids`` from the cached
        states, running only the upper (adapted) blocks."""
        if self.store is None:
            raise RuntimeError("LowerLayerCache.build(...) must run first")
        batch = content.gather(item_ids, images=False).to(device)
        text_length = batch.input_ids.shape[1] if batch.input_ids is not None else None
        states = self.read_states(item_ids, device, text_length)
        return {
            modality: self.encoder.encode_from_block(states[modality], batch, modality, block)
            for modality, block in self.first_blocks.items()
        }

    def read_states(
        self, item_ids: torch.Tensor, device: torch.device, text_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Cached states ``{modality: [N, T, D]}`` of ``item_ids``; text cut to
        ``text_length`` tokens (the batch's longest)."""
        return self.store.read(item_ids, device, None if text_length is None else {"text": text_length})
