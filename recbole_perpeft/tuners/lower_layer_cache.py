"""Cached lower layers: the frozen blocks below a tower's first adapter run once.

When a PEFT method adapts only blocks k and above of a tower (peft's
``layers_to_transform``), blocks 0..k-1 are frozen and see fixed inputs, so
their output, the token states that enter block k, is the same in every
training step. ``cache_frozen_layers: True`` computes it once for the whole
catalogue; each step then runs blocks k.. only, as IISAN's side network reads
its cached states instead of running the encoder.

The states are computed in eval mode (no dropout in the frozen lower blocks)
and kept in memory as float32, [n_items, T, D] per tower: T is the catalogue's
longest text (cut to each batch's longest when read) or the image's tokens.
"""

from __future__ import annotations

import time
from logging import getLogger

import torch
from tqdm import tqdm

from recbole_perpeft.encoders.base import ItemEncoder

logger = getLogger(__name__)


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
        encoder (ItemEncoder): must implement ``hidden_before_block`` and
            ``encode_from_block``.
        first_blocks (dict[str, int]): the first adapted block per modality
            (:func:`first_adapted_blocks`).
    """

    def __init__(self, encoder: ItemEncoder, first_blocks: dict[str, int]) -> None:
        self.encoder = encoder
        self.first_blocks = dict(first_blocks)
        self.states: dict[str, torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.states.values())

    @torch.no_grad()
    def build(
        self,
        content,
        batch_size: int,
        device: torch.device | str,
        show_progress: bool = False,
    ) -> None:
        """Run the lower blocks over the catalogue ``content`` (ItemContent) once."""
        encoder = self.encoder
        was_training = encoder.training
        encoder.eval()
        start = time.perf_counter()
        chunks = torch.arange(content.n_items).split(batch_size)
        if show_progress:
            chunks = tqdm(chunks, total=len(chunks), ncols=100, desc="Lower layers")
        try:
            for chunk in chunks:
                batch = content.gather(chunk).to(device)
                for modality, block in self.first_blocks.items():
                    hidden = encoder.hidden_before_block(batch, modality, block).float().cpu()
                    if modality not in self.states:
                        width = (
                            content.input_ids.shape[1] if modality == "text" else hidden.shape[1]
                        )
                        self.states[modality] = torch.zeros(
                            content.n_items, width, hidden.shape[-1]
                        )
                    self.states[modality][chunk, : hidden.shape[1]] = hidden
        finally:
            encoder.train(was_training)
        blocks = ", ".join(
            f"{m} blocks 0..{b - 1} of {encoder.layer_count(m)}"
            for m, b in self.first_blocks.items()
        )
        logger.info(
            f"cache_frozen_layers: {blocks} run once for {content.n_items} items in "
            f"{time.perf_counter() - start:.1f} s; {self.nbytes / 2**20:.1f} MiB in memory"
        )

    def embed(
        self, item_ids: torch.Tensor, content, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Embeddings ``{modality: [N, D_m]}`` of ``item_ids`` from the cached
        states, running only the upper (adapted) blocks."""
        if not self.states:
            raise RuntimeError("LowerLayerCache.build(content, ...) must run first")
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
        ids = item_ids.cpu()
        out = {}
        for modality, states in self.states.items():
            hidden = states[ids]
            if modality == "text" and text_length is not None:
                hidden = hidden[:, :text_length]
            out[modality] = hidden.to(device, non_blocking=True)
        return out
