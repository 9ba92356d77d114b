"""Image and text item encoder: any open_clip architecture (e.g. ViT-B-32).

Weights come from exactly one of:

- ``open_clip_pretrained``: a pretrained tag of the architecture (e.g.
  ``openai``), which open_clip downloads into its cache where there is internet;
- ``encoder_path``: a local checkpoint file of the architecture;
- ``encoder_random_init``: random weights (tests and speed runs only). The dict
  is deep-merged over the architecture's open_clip config (``embed_dim``,
  ``vision_cfg``, ``text_cfg``, ...), so a tiny model is e.g.
  ``{embed_dim: 32, vision_cfg: {image_size: 32, layers: 2, width: 32,
  head_width: 16, patch_size: 8}, text_cfg: {width: 32, heads: 2, layers: 2}}``.

Texts are tokenised by open_clip's own tokenizer of the architecture (for the
CLIP family its BPE vocabulary ships inside the open_clip package, so this works
offline). Images arrive as uint8 pixels, are scaled to [0, 1] and normalised with
the mean and std of the model's preprocessing config; ``image_size`` is that
config's size. Both embeddings are the model's projected features, L2-normalised.

open_clip's ``CLIP.encode_text`` adds a positional embedding and a causal mask of
the full ``context_length`` (77), whatever the text length. Where the tower pools
at the end-of-text token (``text_pool_type`` 'argmax' or 'eos', the CLIP family),
:meth:`OpenCLIPEncoder.encode_text` runs the same layers on the batch cut to its
longest text, with the positional embedding and the mask cut alike: the causal
mask keeps later padding out of every earlier position, so the embeddings are
those of fully padded ids, at a fraction of the cost for short titles. Other
towers (pooling at the last position, CustomTextCLIP) get ids padded back to
``context_length``.

PEFT targets (canonical HF-CLIP name -> open_clip module; regexes fullmatched
by peft), in the towers of the used modalities:

==================================  =========================================
canonical                           open_clip
==================================  =========================================
``q_proj``, ``k_proj``, ``v_proj``,  ``<tower>.resblocks.<i>.attn`` (the fused
``out_proj``                        ``nn.MultiheadAttention``, LoRA only)
``fc1``                             ``<tower>.resblocks.<i>.mlp.c_fc``
``fc2``                             ``<tower>.resblocks.<i>.mlp.c_proj``
==================================  =========================================

``<tower>`` is ``visual.transformer`` (image) and/or ``transformer`` (text;
``text.transformer`` for CustomTextCLIP architectures).

open_clip fuses the query, key and value projections into one
``nn.MultiheadAttention`` (``in_proj_weight``), so any of the four attention
names selects the whole module. Only LoRA can wrap it (peft's LoRA for
``nn.MultiheadAttention`` adapts ``in_proj`` and ``out_proj`` together; peft
reports ``...attn`` and ``...attn.base_layer.out_proj`` as wrapped), hence
they are :attr:`OpenCLIPEncoder.LORA_ONLY_TARGETS`: a LoRA on ``[q_proj,
v_proj]`` here adapts all of q, k, v and the output projection, more
parameters than the paper's HF-CLIP setting. NEVER target ``attn.out_proj``
on its own: ``nn.MultiheadAttention.forward`` reads ``out_proj.weight``
directly and never calls ``out_proj``, so an adapter there is silently
ignored. Architectures whose blocks are not ``nn.MultiheadAttention`` (timm or
HF towers, custom attention) are not covered by these patterns.
"""

from __future__ import annotations

import copy
import os
from logging import getLogger

import torch
import torch.nn.functional as F
from torch import nn

from recbole_perpeft.data.content import ContentBatch
from recbole_perpeft.encoders.base import ItemEncoder, resolve_local_path

logger = getLogger(__name__)

#: A tiny architecture for tests and smoke runs, always with RANDOM weights
#: (``encoder_random_init: <this>``): width 32, 2 blocks per tower, 32 px images.
TINY_RANDOM_INIT = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 32,
        "layers": 2,
        "width": 32,
        "head_width": 16,
        "patch_size": 8,
    },
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 2,
    },
}

_ATTN = r".*resblocks\.\d+\.attn"
_SUFFIXES = {
    "q_proj": r"attn",
    "k_proj": r"attn",
    "v_proj": r"attn",
    "out_proj": r"attn",
    "fc1": r"mlp\.c_fc",
    "fc2": r"mlp\.c_proj",
}
# module prefix of each tower's blocks: CLIP keeps the text tower at the top level,
# CustomTextCLIP under ``text``
_TOWERS = {"image": r"visual\.transformer", "text": r"(?:text\.)?transformer"}


def check_open_clip_config(
    model_name: str,
    pretrained: str | None,
    path: str | None,
    random_init: dict | None,
) -> None:
    """Raise ``ValueError`` if the open_clip keys do not name one buildable model.

    Runs before any layer is built; it reads only open_clip's registries.

    Args:
        model_name (str): ``open_clip_model``.
        pretrained (str | None): ``open_clip_pretrained``.
        path (str | None): ``encoder_path``.
        random_init (dict | None): ``encoder_random_init``.
    """
    import open_clip

    architectures = open_clip.list_models()
    if model_name not in architectures:
        raise ValueError(
            "`open_clip_model`: expected one of open_clip's architectures "
            f"(open_clip.list_models()), got {model_name!r}."
        )
    sources = {
        "open_clip_pretrained": pretrained,
        "encoder_path": path,
        "encoder_random_init": random_init,
    }
    given = [key for key, value in sources.items() if value is not None]
    if len(given) != 1:
        raise ValueError(
            "`open_clip_pretrained`: expected exactly one weight source for "
            "open_clip (open_clip_pretrained, encoder_path or encoder_random_init), "
            f"got {given or 'none'}."
        )
    if pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ValueError(
                f"`open_clip_pretrained`: expected one of {tags} for {model_name}, "
                f"got {pretrained!r}."
            )
    if path is not None:
        local = resolve_local_path(path)
        if local is None or not os.path.isfile(local):
            raise ValueError(
                "`encoder_path`: expected a local open_clip checkpoint file for "
                f"encoder 'open_clip', got {path!r}."
            )


def _deep_merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class OpenCLIPEncoder(ItemEncoder):
    """An open_clip model over item images and titles.

    Args:
        model_name (str): open_clip architecture, e.g. 'ViT-B-32'.
        path (str | None): local checkpoint file of that architecture.
        modalities (list[str]): subset of ['image', 'text'].
        random_init (dict | None): random weights, with these overrides of the
            architecture's config (tests and speed runs only).
        pretrained (str | None): open_clip pretrained tag, e.g. 'openai'.
    """

    TARGET_PATTERNS = {
        "q_proj": _ATTN,
        "k_proj": _ATTN,
        "v_proj": _ATTN,
        "out_proj": _ATTN,
        "fc1": r".*resblocks\.\d+\.mlp\.c_fc",
        "fc2": r".*resblocks\.\d+\.mlp\.c_proj",
    }
    LORA_ONLY_TARGETS = frozenset({"q_proj", "k_proj", "v_proj", "out_proj"})
    BLOCK_PREFIX = r"resblocks"

    def module_modality(self, name: str) -> str:
        return "image" if name.startswith("visual.") else "text"

    def __init__(
        self,
        model_name: str,
        path: str | None,
        modalities: list[str],
        random_init: dict | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(modalities)
        import open_clip

        check_open_clip_config(model_name, pretrained, path, random_init)
        if random_init is not None:
            model_cfg = _deep_merge(open_clip.get_model_config(model_name), random_init)
            self.backbone = open_clip.create_model(
                model_name,
                pretrained=None,
                pretrained_image=False,
                pretrained_text=False,
                **model_cfg,
            )
            logger.info(
                f"open_clip encoder: RANDOMLY INITIALISED {model_name} {random_init}"
            )
        else:
            source = pretrained or resolve_local_path(path)
            self.backbone = open_clip.create_model(model_name, pretrained=source)
            logger.info(f"open_clip encoder: {model_name} weights from {source}")
        self.model_name = model_name
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.context_length = int(self.tokenizer.context_length)
        self.text_max_length = self.context_length
        self.eot_token_id = getattr(self.tokenizer, "eot_token_id", None)
        self.pad_token_id = int(getattr(self.tokenizer, "pad_id", 0) or 0)

        preprocess = open_clip.get_model_preprocess_cfg(self.backbone)
        size = preprocess["size"]
        if isinstance(size, (tuple, list)):
            if len(set(size)) != 1:
                raise ValueError(
                    f"`open_clip_model`: expected square input images, got size "
                    f"{tuple(size)} for {model_name}."
                )
            size = size[0]
        self.image_size = int(size)
        mean = torch.tensor(preprocess["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(preprocess["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        towers = "|".join(_TOWERS[m] for m in self.modalities)
        # instance attribute: only the towers of the used modalities get adapters
        self.TARGET_PATTERNS = {
            key: rf"(?:{towers})\.resblocks\.\d+\.{suffix}"
            for key, suffix in _SUFFIXES.items()
        }

    # ---- dimensions ---------------------------------------------------------
    @property
    def modality_dims(self) -> dict[str, int]:
        model = self.backbone
        if hasattr(model, "text"):
            text_dim = int(model.text.output_dim)
        elif isinstance(model.text_projection, nn.Linear):
            text_dim = int(model.text_projection.out_features)
        else:
            text_dim = int(model.text_projection.shape[-1])
        return {"image": int(model.visual.output_dim), "text": text_dim}

    # ---- text ---------------------------------------------------------------
    def tokenize(
        self, texts: list[str], max_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        length = min(int(max_length), self.context_length)
        if length < max_length:
            logger.info(
                f"open_clip encoder: text_max_length {max_length} cut to the "
                f"context length {self.context_length} of {self.model_name}"
            )
        input_ids = self.tokenizer(texts, context_length=length)
        if self.eot_token_id is not None:
            # the first end-of-text token closes each text
            is_eot = input_ids == self.eot_token_id
            lengths = is_eot.int().argmax(dim=1) + 1
            lengths = torch.where(
                is_eot.any(dim=1), lengths, torch.full_like(lengths, length)
            )
        else:
            lengths = (input_ids != self.pad_token_id).sum(dim=1)
        return input_ids, lengths

    def _full_context(self, input_ids: torch.Tensor) -> torch.Tensor:
        missing = self.context_length - input_ids.size(1)
        if missing <= 0:
            return input_ids[:, : self.context_length]
        return F.pad(input_ids, (0, missing), value=self.pad_token_id)

    def _pools_at_end_of_text(self) -> bool:
        model = self.backbone
        return (
            getattr(model, "text_pool_type", None) in ("argmax", "eos")
            and getattr(model, "attn_mask", None) is not None
            and hasattr(model, "positional_embedding")
        )

    def _encode_text_cut(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``CLIP.encode_text`` on ids [N, T], T <= context_length, without padding
        them to the context length: positions and causal mask cut to T."""
        from open_clip.transformer import text_global_pool

        model = self.backbone
        length = input_ids.size(1)
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(input_ids).to(cast_dtype)  # [N, T, W]
        x = x + model.positional_embedding[:length].to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = text_global_pool(
            x, input_ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
        )  # [N, W]
        if isinstance(model.text_projection, nn.Linear):
            return model.text_projection(x)
        return x if model.text_projection is None else x @ model.text_projection

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """L2-normalised text embeddings [N, D] (``attention_mask`` is implied by
        the causal mask and unused)."""
        if self._pools_at_end_of_text() and input_ids.size(1) <= self.context_length:
            features = self._encode_text_cut(input_ids)
        else:
            features = self.backbone.encode_text(self._full_context(input_ids))
        return F.normalize(features, dim=-1)

    # ---- image --------------------------------------------------------------
    def _pixel_values(self, pixels: torch.Tensor) -> torch.Tensor:
        values = pixels.to(self.pixel_mean.dtype) / 255.0
        return (values - self.pixel_mean) / self.pixel_std

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings [N, D] of uint8 pixels [N, 3, S, S]."""
        features = self.backbone.encode_image(self._pixel_values(pixels))
        return F.normalize(features, dim=-1)

    # ---- hidden states for side networks ------------------------------------
    def layer_count(self, modality: str) -> int:
        """Residual blocks of ``modality``'s tower (layer states run 0..this)."""
        return len(self._blocks(modality)[1])

    def _blocks(self, modality: str) -> tuple[nn.Module, list[nn.Module]]:
        model = self.backbone
        if modality == "image":
            transformer = getattr(model.visual, "transformer", None)
        else:
            tower = getattr(model, "text", model)
            transformer = getattr(tower, "transformer", None)
        if transformer is None or not hasattr(transformer, "resblocks"):
            raise NotImplementedError(
                f"OpenCLIPEncoder.layer_states: the {modality} tower of "
                f"{self.model_name} is not an open_clip transformer"
            )
        return transformer, list(transformer.resblocks)

    def _run_collecting(self, modality: str, run) -> list[torch.Tensor]:
        """Hidden states [N, T, D] of layer 0 (block input) and every block."""
        transformer, blocks = self._blocks(modality)
        batch_first = getattr(transformer, "batch_first", True)
        states: list[torch.Tensor] = []

        def keep(tensor: torch.Tensor) -> None:
            states.append(tensor if batch_first else tensor.transpose(0, 1))

        handles = [blocks[0].register_forward_pre_hook(lambda _m, args: keep(args[0]))]
        for block in blocks:
            handles.append(block.register_forward_hook(lambda _m, _a, out: keep(out)))
        try:
            run()
        finally:
            for handle in handles:
                handle.remove()
        return states

    def layer_states(
        self, batch: ContentBatch, layers: list[int]
    ) -> dict[str, torch.Tensor]:
        """Pooled hidden states ``{modality: [N, len(layers), width]}``.

        Layer 0 is the input of the first block, layer i the output of block i
        (before the final LayerNorm). Images are pooled at the class token, texts
        at their end-of-text token (the last real token, where CLIP pools).
        """
        out = {}
        if "image" in self.modalities:
            pixel_values = self._pixel_values(batch.pixels)
            states = self._run_collecting(
                "image", lambda: self.backbone.encode_image(pixel_values)
            )
            out["image"] = torch.stack([states[i][:, 0] for i in layers], dim=1)
        if "text" in self.modalities:
            input_ids = self._full_context(batch.input_ids)
            states = self._run_collecting(
                "text", lambda: self.backbone.encode_text(input_ids)
            )
            last = (batch.attention_mask.sum(dim=1) - 1).clamp(min=0)
            rows = torch.arange(len(last), device=last.device)
            out["text"] = torch.stack([states[i][rows, last] for i in layers], dim=1)
        return out
