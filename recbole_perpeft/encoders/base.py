"""The interface every item encoder implements: item content in, embeddings out."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

import torch
from torch import nn

from recbole_perpeft.data.content import ContentBatch


class ItemEncoder(nn.Module):
    """A foundation model that embeds item texts and/or images.

    Subclasses build :attr:`backbone` (the module PEFT methods wrap), say how the
    paper's module names translate to theirs (:attr:`TARGET_PATTERNS`), and
    implement :meth:`tokenize`, :meth:`encode_text` and :meth:`encode_image`
    for the modalities they support.

    Args:
        modalities (list[str]): the modalities used, a subset of
            ['image', 'text']; the item embedding concatenates them in that order.
    """

    MODALITIES: tuple[str, ...] = ("image", "text")
    # Canonical PEFT targets (HF CLIP's names) -> regex of this backbone's module
    # names. A name may cover several canonical targets (open_clip's fused attn).
    TARGET_PATTERNS: dict[str, str] = {}
    # Canonical names that only LoRA-like methods can wrap on this backbone.
    LORA_ONLY_TARGETS: frozenset[str] = frozenset()
    # Regex of the container of a tower's blocks in module names: the modules of
    # block i are named ``...<BLOCK_PREFIX>.<i>.<...>``.
    BLOCK_PREFIX: str = r"layers"

    def __init__(self, modalities: list[str]) -> None:
        super().__init__()
        unknown = [m for m in modalities if m not in self.MODALITIES]
        if unknown or not modalities:
            raise ValueError(
                f"`modalities`: expected a non-empty subset of {list(self.MODALITIES)} "
                f"for {type(self).__name__}, got {modalities}."
            )
        self.modalities = [m for m in ("image", "text") if m in modalities]
        self.backbone: nn.Module
        self.image_size: int | None = None
        self.text_max_length: int = 77

    # ---- to implement -------------------------------------------------------
    @property
    def modality_dims(self) -> dict[str, int]:
        """Width of each modality's embedding."""
        raise NotImplementedError

    def tokenize(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [n, T] (right-padded) and lengths [n] of ``texts``."""
        raise NotImplementedError

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text embeddings [N, D_text]."""
        raise NotImplementedError

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings [N, D_image] of uint8 pixels [N, 3, S, S]."""
        raise NotImplementedError

    def layer_count(self, modality: str) -> int:
        """Blocks of ``modality``'s tower; :meth:`layer_states` accepts 0..this."""
        raise NotImplementedError(f"{type(self).__name__} does not expose layer states")

    def layer_states(self, batch: ContentBatch, layers: list[int]) -> dict[str, torch.Tensor]:
        """Pooled hidden states of the given layers, ``{modality: [N, len(layers), D_m]}``.

        Used by side networks (IISAN) over the frozen encoder; layer 0 is the
        embedding output, layer i the output of block i.
        """
        raise NotImplementedError(f"{type(self).__name__} does not expose layer states")

    def hidden_before_block(
        self, batch: ContentBatch, modality: str, block: int
    ) -> torch.Tensor:
        """Token states [N, T, D] that enter block ``block`` of ``modality``'s tower
        (block 0: the embedding output), for :class:`LowerLayerCache`."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot run its towers from a middle block"
        )

    def encode_from_block(
        self, hidden: torch.Tensor, batch: ContentBatch, modality: str, block: int
    ) -> torch.Tensor:
        """The embedding [N, D_m] of ``modality`` computed from the states ``hidden``
        that enter block ``block``: blocks ``block``.. only, then pooling and
        projection as in :meth:`forward`. ``batch`` supplies the text masks (its
        pixels are not read)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot run its towers from a middle block"
        )

    # ---- shared -------------------------------------------------------------
    def module_modality(self, name: str) -> str:
        """The modality of the tower that holds the backbone module ``name``."""
        return self.modalities[0]

    def block_of(self, name: str) -> tuple[str, int] | None:
        """(modality, block index) of the backbone module ``name``, None outside
        the towers' blocks."""
        match = re.search(rf"(?:^|\.){self.BLOCK_PREFIX}\.(\d+)(?:\.|$)", name)
        if match is None:
            return None
        return self.module_modality(name), int(match.group(1))

    def block_lookahead(self, blocks: list[int]) -> str:
        """A regex prefix that lets a ``target_modules`` regex match only
        modules inside the given blocks (peft's ``layers_to_transform``)."""
        indices = "|".join(str(b) for b in sorted(set(blocks)))
        return rf"(?=(?:.*\.)?{self.BLOCK_PREFIX}\.(?:{indices})\.)"

    @property
    def output_dim(self) -> int:
        dims = self.modality_dims
        return sum(dims[m] for m in self.modalities)

    def forward(self, batch: ContentBatch) -> dict[str, torch.Tensor]:
        """Raw embeddings of each used modality, ``{modality: [N, D_m]}``.

        Items without the modality get whatever the encoder computes for the
        empty input; the model replaces those rows by a learned embedding.
        """
        out = {}
        if "image" in self.modalities:
            out["image"] = self.encode_image(batch.pixels)
        if "text" in self.modalities:
            out["text"] = self.encode_text(batch.input_ids, batch.attention_mask)
        return out

    def target_regex(self, canonical: list[str], key: str = "target_modules") -> str:
        """A peft ``target_modules`` regex for the canonical names ``canonical``."""
        if isinstance(canonical, str):
            return canonical
        unknown = [name for name in canonical if name not in self.TARGET_PATTERNS]
        if unknown:
            raise ValueError(
                f"`peft_config.{key}`: {unknown} has no counterpart in "
                f"{type(self).__name__}; expected names from "
                f"{sorted(self.TARGET_PATTERNS)} (HF CLIP's), or one regex string."
            )
        patterns = sorted({self.TARGET_PATTERNS[name] for name in canonical})
        return "|".join(f"(?:{pattern})" for pattern in patterns)

    def count_parameters(self) -> int:
        """Parameters of the foundation model itself (adapters excluded)."""
        return sum(
            p.numel()
            for name, p in self.backbone.named_parameters()
            if not _is_adapter_parameter(name)
        )


class _Given(nn.Module):
    """Stands in for an embedding layer: returns the given states, whatever the input."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.hidden


@contextmanager
def run_from_block(
    tower: nn.Module,
    embeddings: str,
    blocks_owner: nn.Module,
    blocks: str,
    hidden: torch.Tensor,
    first: int,
    skip: tuple[str, ...] = (),
):
    """Within the block, ``tower``'s forward starts at block ``first`` from ``hidden``.

    The embedding layer ``tower.<embeddings>`` is replaced by one that returns
    ``hidden``, ``blocks_owner.<blocks>`` by its blocks ``first``.. (the same
    module objects, adapters included), and the modules named in ``skip`` (e.g.
    a LayerNorm already applied before block 0) by identities. Everything is
    restored on exit. The tower's own forward still builds its masks and pools,
    so nothing of transformers' internals is re-implemented here.
    """
    originals = {name: getattr(tower, name) for name in (embeddings, *skip)}
    all_blocks = getattr(blocks_owner, blocks)
    try:
        setattr(tower, embeddings, _Given(hidden))
        for name in skip:
            setattr(tower, name, nn.Identity())
        setattr(blocks_owner, blocks, nn.ModuleList(list(all_blocks)[first:]))
        yield
    finally:
        setattr(blocks_owner, blocks, all_blocks)
        for name, module in originals.items():
            setattr(tower, name, module)


_ADAPTER_MARK = re.compile(r"(^|\.)(lora_|ia3_|hada_|lokr_|vera_|boft_|oft_|ranknum|lora_magnitude)")


def _is_adapter_parameter(name: str) -> bool:
    return bool(_ADAPTER_MARK.search(name))


def resolve_local_path(path: str, key: str = "encoder_path") -> str | None:
    """The local file or folder ``path`` names, None if it reads as a hub name.

    A path that exists is local. One that starts like a file system path, or
    ends in a checkpoint suffix, must exist; otherwise it is a hub name.
    """
    expanded = os.path.expanduser(path)
    if os.path.exists(expanded):
        return expanded
    looks_local = path.startswith(("/", "./", "../", "~", ".\\")) or path.endswith(
        (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
    )
    if looks_local:
        raise ValueError(
            f"`{key}`: '{path}' does not exist; expected a local folder or "
            "checkpoint file, or a hub name such as 'openai/clip-vit-base-patch32'."
        )
    return None
