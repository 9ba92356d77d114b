"""Image and text item encoder: a transformers ``CLIPModel``.

Weights and tokenizer come from a hub name (the paper's is
``openai/clip-vit-base-patch32``, the default when ``encoder_path`` is None) or a
local folder written by ``save_pretrained``. The image mean and std come from the
folder's image-processor config (OpenAI CLIP's values when it has none); the
image size is ``vision_config.image_size``.

Random weights (tests and speed runs only): ``encoder_random_init`` holds
``CLIPConfig`` keyword arguments, e.g. ``{text_config: {hidden_size: 32, ...},
vision_config: {image_size: 32, patch_size: 8, ...}, projection_dim: 32}``. With
an ``encoder_path`` they are deep-merged over that model's config and its
tokenizer is used. Without one, the tokenizer is built offline, in memory, from
the CLIP BPE vocabulary that ships inside the open_clip package
(:func:`packaged_clip_tokenizer`); it gives the same token ids as OpenAI's CLIP
tokenizer, whose files transformers would otherwise have to download.

Item embeddings are the projected features of ``get_text_features`` and
``get_image_features``, L2-normalised. Texts are pooled by CLIP itself at the
end-of-text token; padding is masked, so a batch cut to its longest text gives
the embeddings of fully padded ids.

PEFT targets are HF CLIP's own names (the canonical ones), in the towers of the
used modalities:

===========  ==============================================
canonical    transformers CLIP
===========  ==============================================
``q_proj``   ``<tower>.encoder.layers.<i>.self_attn.q_proj``
``k_proj``   ``<tower>.encoder.layers.<i>.self_attn.k_proj``
``v_proj``   ``<tower>.encoder.layers.<i>.self_attn.v_proj``
``out_proj`` ``<tower>.encoder.layers.<i>.self_attn.out_proj``
``fc1``      ``<tower>.encoder.layers.<i>.mlp.fc1``
``fc2``      ``<tower>.encoder.layers.<i>.mlp.fc2``
===========  ==============================================

``<tower>`` is ``vision_model`` (image) and/or ``text_model`` (text).
"""

from __future__ import annotations

import copy
from functools import lru_cache
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

#: A tiny architecture for tests and smoke runs, always with RANDOM weights
#: (``encoder_random_init: <this>``): width 32, 2 blocks per tower, 32 px images.
TINY_RANDOM_INIT = {
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    },
    "projection_dim": 32,
}

DEFAULT_HUB_NAME = "openai/clip-vit-base-patch32"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TOWERS = {"image": "vision_model", "text": "text_model"}
_SUFFIXES = {
    "q_proj": r"self_attn\.q_proj",
    "k_proj": r"self_attn\.k_proj",
    "v_proj": r"self_attn\.v_proj",
    "out_proj": r"self_attn\.out_proj",
    "fc1": r"mlp\.fc1",
    "fc2": r"mlp\.fc2",
}


@lru_cache(maxsize=1)
def _packaged_vocabulary() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    from open_clip.tokenizer import SimpleTokenizer

    simple = SimpleTokenizer()
    # open_clip spells CLIP's two special tokens differently; the ids are the same.
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(token, token): index for token, index in simple.encoder.items()}
    merges = tuple(
        pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])
    )
    return vocab, merges


def packaged_clip_tokenizer():
    """A transformers ``CLIPTokenizer`` built offline from open_clip's BPE files.

    Returns:
        CLIPTokenizer: OpenAI CLIP's vocabulary (49408 tokens, ``<|endoftext|>``
        as end and pad token), identical ids to ``openai/clip-vit-base-patch32``'s
        tokenizer on ordinary text.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _packaged_vocabulary()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges))


def _deep_merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _features(output) -> torch.Tensor:
    """The projected features from a ``get_*_features`` result: a tensor in
    transformers 4, an output object with ``pooler_output`` in transformers 5."""
    if isinstance(output, torch.Tensor):
        return output
    if getattr(output, "pooler_output", None) is not None:
        return output.pooler_output
    return output[0]


class HFCLIPEncoder(ItemEncoder):
    """A transformers CLIP model over item images and titles.

    Args:
        path (str | None): hub name or local folder; None for the paper's
            openai/clip-vit-base-patch32 (or, with ``random_init``, no base).
        modalities (list[str]): subset of ['image', 'text'].
        random_init (dict | None): ``CLIPConfig`` arguments for random weights
            (tests and speed runs only).
    """

    TARGET_PATTERNS = {
        name: rf"(?:{'|'.join(_TOWERS.values())})\.encoder\.layers\.\d+\.{suffix}"
        for name, suffix in _SUFFIXES.items()
    }
    BLOCK_PREFIX = r"encoder\.layers"

    def __init__(
        self,
        path: str | None,
        modalities: list[str],
        random_init: dict | None = None,
    ) -> None:
        super().__init__(modalities)
        from transformers import AutoTokenizer, CLIPConfig, CLIPModel

        if path is None and random_init is None:
            path = DEFAULT_HUB_NAME
        local = resolve_local_path(path) if path is not None else None
        name = local or path
        offline = bool(local)
        if random_init is not None:
            if name is not None:
                base = CLIPConfig.from_pretrained(name, local_files_only=offline)
                model_config = CLIPConfig(**_deep_merge(base.to_dict(), random_init))
            else:
                model_config = CLIPConfig(**copy.deepcopy(random_init))
            self.backbone = CLIPModel(model_config)
            logger.info(f"hf_clip encoder: RANDOMLY INITIALISED CLIP {random_init}")
        else:
            self.backbone = CLIPModel.from_pretrained(name, local_files_only=offline)
            logger.info(f"hf_clip encoder: pretrained weights from {name}")
        if name is not None:
            self.tokenizer = AutoTokenizer.from_pretrained(
                name, local_files_only=offline
            )
        else:
            self.tokenizer = packaged_clip_tokenizer()
            logger.info("hf_clip encoder: tokenizer from open_clip's packaged CLIP BPE")
        self.pad_token_id = self.tokenizer.pad_token_id
        config = self.backbone.config
        self.context_length = int(config.text_config.max_position_embeddings)
        self.text_max_length = self.context_length
        self.image_size = int(config.vision_config.image_size)
        mean, std = self._normalisation(name, offline)
        self.register_buffer(
            "pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False
        )
        towers = "|".join(_TOWERS[m] for m in self.modalities)
        # instance attribute: only the towers of the used modalities get adapters
        self.TARGET_PATTERNS = {
            key: rf"(?:{towers})\.encoder\.layers\.\d+\.{suffix}"
            for key, suffix in _SUFFIXES.items()
        }

    @staticmethod
    def _normalisation(
        name: str | None, offline: bool
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if name is None:
            return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(
                name, local_files_only=offline
            )
        except (OSError, ValueError) as error:
            logger.warning(
                f"hf_clip encoder: no image processor config in {name} ({error}); "
                "normalising with OpenAI CLIP's mean and std"
            )
            return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        return tuple(processor.image_mean), tuple(processor.image_std)

    @property
    def modality_dims(self) -> dict[str, int]:
        dim = int(self.backbone.config.projection_dim)
        return {"image": dim, "text": dim}

    # ---- text ---------------------------------------------------------------
    def tokenize(
        self, texts: list[str], max_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=min(int(max_length), self.context_length),
            return_tensors="pt",
        )
        return encoded["input_ids"], encoded["attention_mask"].sum(dim=1)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """L2-normalised projected text features [N, projection_dim]."""
        output = self.backbone.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask
        )
        return F.normalize(_features(output), dim=-1)

    # ---- image --------------------------------------------------------------
    def _pixel_values(self, pixels: torch.Tensor) -> torch.Tensor:
        values = pixels.to(self.pixel_mean.dtype) / 255.0
        return (values - self.pixel_mean) / self.pixel_std

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected image features [N, projection_dim] of uint8
        pixels [N, 3, S, S]."""
        output = self.backbone.get_image_features(
            pixel_values=self._pixel_values(pixels)
        )
        return F.normalize(_features(output), dim=-1)

    # ---- running a tower from a middle block (cached lower layers) -----------
    def module_modality(self, name: str) -> str:
        return "image" if name.startswith("vision_model.") else "text"

    def hidden_before_block(
        self, batch: ContentBatch, modality: str, block: int
    ) -> torch.Tensor:
        """Token states entering block ``block`` (block 0: the embedding output,
        after the vision tower's pre-LayerNorm)."""
        if modality == "image":
            return self.backbone.vision_model(
                pixel_values=self._pixel_values(batch.pixels),
                output_hidden_states=True,
            ).hidden_states[block]
        return self.backbone.text_model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
        ).hidden_states[block]

    def encode_from_block(
        self, hidden: torch.Tensor, batch: ContentBatch, modality: str, block: int
    ) -> torch.Tensor:
        if modality == "image":
            tower = self.backbone.vision_model
            # the tower checks that pixels are given; the stand-in ignores them
            with run_from_block(
                tower, "embeddings", tower.encoder, "layers", hidden, block,
                skip=("pre_layrnorm",),
            ):
                pooled = tower(pixel_values=hidden).pooler_output
            features = self.backbone.visual_projection(pooled)
        else:
            tower = self.backbone.text_model
            with run_from_block(
                tower, "embeddings", tower.encoder, "layers", hidden, block
            ):
                pooled = tower(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask
                ).pooler_output
            features = self.backbone.text_projection(pooled)
        return F.normalize(features, dim=-1)

    # ---- hidden states for side networks ------------------------------------
    def layer_count(self, modality: str) -> int:
        """Encoder layers of ``modality``'s tower (layer states run 0..this)."""
        config = self.backbone.config
        tower = config.vision_config if modality == "image" else config.text_config
        return int(tower.num_hidden_layers)

    def layer_states(
        self, batch: ContentBatch, layers: list[int]
    ) -> dict[str, torch.Tensor]:
        """Pooled hidden states ``{modality: [N, len(layers), hidden_size]}``.

        Layer 0 is the embedding output (after the vision pre-LayerNorm), layer
        i the output of encoder layer i (before the final LayerNorm). Images are
        pooled at the class token, texts at their end-of-text token (the last
        real token, where CLIP pools).
        """
        out = {}
        if "image" in self.modalities:
            states = self.backbone.vision_model(
                pixel_values=self._pixel_values(batch.pixels),
                output_hidden_states=True,
            ).hidden_states
            out["image"] = torch.stack([states[i][:, 0] for i in layers], dim=1)
        if "text" in self.modalities:
            states = self.backbone.text_model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                output_hidden_states=True,
            ).hidden_states
            last = (batch.attention_mask.sum(dim=1) - 1).clamp(min=0)
            rows = torch.arange(len(last), device=last.device)
            out["text"] = torch.stack([states[i][rows, last] for i in layers], dim=1)
        return out
