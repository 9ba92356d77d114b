"""Item content laid out by internal item id: tokenised texts and stored images.

Texts are tokenised once, when the model is built; images are read once into a
memory-mapped store (:mod:`recbole_perpeft.data.image_store`). A training step
only gathers rows: it never tokenises a title or decodes an image file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ContentBatch:
    """The content of a batch of items, ready for an encoder.

    Attributes:
        input_ids (torch.Tensor | None): token ids [N, T], T the longest text of
            this batch.
        attention_mask (torch.Tensor | None): 1 on real tokens [N, T].
        has_text (torch.Tensor): bool [N], False where the item has no text.
        pixels (torch.Tensor | None): uint8 images [N, 3, S, S].
        has_image (torch.Tensor): bool [N], False where the image is missing or
            broken.
    """

    input_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    has_text: torch.Tensor
    pixels: torch.Tensor | None
    has_image: torch.Tensor

    def to(self, device: torch.device | str) -> "ContentBatch":
        """A copy on ``device``."""

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, non_blocking=True)

        return ContentBatch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.has_text),
            move(self.pixels),
            move(self.has_image),
        )


class ItemContent:
    """Tokenised texts and stored images of the whole catalogue.

    Args:
        input_ids (torch.Tensor | None): token ids of every item [n_items, T_max],
            right-padded with ``pad_token_id``.
        text_lengths (torch.Tensor | None): tokens per item [n_items].
        has_text (torch.Tensor): bool [n_items].
        image_store (ImageStore | None): images keyed by internal item id.
    """

    def __init__(
        self,
        input_ids: torch.Tensor | None,
        text_lengths: torch.Tensor | None,
        has_text: torch.Tensor,
        image_store=None,
    ) -> None:
        self.input_ids = input_ids
        self.text_lengths = text_lengths
        self.has_text = has_text
        self.image_store = image_store
        if image_store is not None:
            self.has_image = torch.from_numpy(image_store.available.copy())
        else:
            self.has_image = torch.zeros_like(has_text)

    @property
    def n_items(self) -> int:
        return len(self.has_text)

    def by_text_length(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Positions of ``item_ids`` ordered by text length (stable), so that
        chunks of neighbours share a short padded length."""
        if self.text_lengths is None:
            return torch.arange(len(item_ids))
        lengths = self.text_lengths[item_ids.cpu()]
        return torch.sort(lengths, stable=True).indices

    def gather(self, item_ids: torch.Tensor, images: bool = True) -> ContentBatch:
        """Content of ``item_ids`` (a 1-D tensor of internal ids), text padded
        only to the longest text among them; ``images=False`` leaves the pixels
        out (None) for encoders that start from cached states."""
        ids = item_ids.cpu()
        input_ids = attention_mask = pixels = None
        if self.input_ids is not None:
            lengths = self.text_lengths[ids]
            longest = max(int(lengths.max()), 1) if len(ids) else 1
            input_ids = self.input_ids[ids, :longest]
            positions = torch.arange(longest)
            attention_mask = (positions[None, :] < lengths[:, None]).long()
        if self.image_store is not None and images:
            pixels = self.image_store.gather(ids)
        return ContentBatch(
            input_ids, attention_mask, self.has_text[ids], pixels, self.has_image[ids]
        )
