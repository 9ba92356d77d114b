"""The interface every item encoder implements: item content in, embeddings out."""

from __future__ import annotations

import os
import re

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

    # ---- shared -------------------------------------------------------------
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
