"""Methods of the peft library (LoRA, DoRA, rsLoRA, (IA)3, LoHa, LoKr, ...) as a group bank.

Each group is one peft adapter, named ``group_<g>``, on the same frozen encoder.
peft's per-sample ``adapter_names`` routing works only at inference, so the
bank switches the active adapter per batch (``set_adapter``), and the trainer
makes every training batch hold users of one group.

VeRA and AdaLoRA are refused with the reason (:data:`UNSUPPORTED`): both keep
state on peft's tuner object that n independent adapters cannot share.
"""

from __future__ import annotations

import re
import warnings
from logging import getLogger

import torch
from torch import nn

from recbole_perpeft.encoders.base import ItemEncoder
from recbole_perpeft.tuners.base import CataloguePass, GroupModuleBank

logger = getLogger(__name__)


def adapter_name(index: int) -> str:
    return f"group_{index}"


# peft types that cannot be n independent, switchable adapters on one backbone.
UNSUPPORTED = {
    "VERA": (
        "VeRA's frozen random projections are state shared by all adapters and kept "
        "on peft's tuner object, which inject_adapter_in_model refuses to create; "
        "use 'lora' with a small r, or 'lokr'/'loha'."
    ),
    "ADALORA": (
        "AdaLoRA re-allocates ranks during training through its tuner's "
        "update_and_allocate(global_step) and adds an orthogonality loss in the "
        "tuner's forward; both live on one AdaLoraModel that allows a single "
        "trainable adapter and counts one global step sequence, which groups that "
        "train in turn would share. Without them it is plain LoRA; use 'lora'."
    ),
}


def injectable_peft_types() -> list[str]:
    """peft's types that adapt layers in place (what inject_adapter_in_model does).

    Prompt-learning types (prompt, prefix and p-tuning, ...) and LLaMA's
    adaption prompt add virtual tokens to a language model's input instead, which
    an item encoder has no place for.
    """
    from peft.config import PromptLearningConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return sorted(
        str(key.value).lower()
        for key, config_class in PEFT_TYPE_TO_CONFIG_MAPPING.items()
        if not issubclass(config_class, PromptLearningConfig)
        and str(key.value) != "ADAPTION_PROMPT"
    )


def build_peft_config(peft_type: str, kwargs: dict, encoder: ItemEncoder):
    """peft's config object for ``peft_type`` with the paper's names translated."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    allowed = injectable_peft_types()
    key = peft_type.upper()
    if peft_type.lower() not in allowed:
        raise ValueError(
            f"`peft_type`: expected 'iisan' or one of peft's types {allowed}, "
            f"got {peft_type!r}."
        )
    if key in UNSUPPORTED:
        raise ValueError(
            f"`peft_type`: expected 'iisan' or a peft type other than "
            f"{sorted(k.lower() for k in UNSUPPORTED)}, got {peft_type!r}; "
            f"{UNSUPPORTED[key]}"
        )
    kwargs = dict(kwargs)
    canonical_targets = _names(kwargs.get("target_modules"))
    blocks = _blocks(kwargs.pop("layers_to_transform", None))
    kwargs.pop("layers_pattern", None)
    for field in ("target_modules", "feedforward_modules"):
        if field in kwargs and kwargs[field] is not None:
            kwargs[field] = encoder.target_regex(kwargs[field], key=field)
    if blocks is not None and kwargs.get("target_modules") is not None:
        # peft ignores layers_to_transform once target_modules is a regex, which
        # the translation above makes it: the block filter goes into the regex.
        kwargs["target_modules"] = (
            encoder.block_lookahead(blocks) + f"(?:{kwargs['target_modules']})"
        )
    lora_only = sorted(set(encoder.LORA_ONLY_TARGETS) & set(canonical_targets))
    if lora_only and key != "LORA":
        raise ValueError(
            f"`peft_config.target_modules`: {lora_only} map to a fused attention "
            f"module of {type(encoder).__name__} that only LoRA can wrap; drop them "
            f"for peft_type {peft_type!r}."
        )
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[key]
    try:
        return config_class(**kwargs)
    except TypeError as error:
        raise ValueError(
            f"`peft_config`: {error} (peft_type {peft_type!r})."
        ) from error


def _blocks(value) -> list[int] | None:
    """``layers_to_transform`` as a list of block indices (None: every block)."""
    if value is None:
        return None
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(values, (list, tuple))
        or not values
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values)
    ):
        raise ValueError(
            "`peft_config.layers_to_transform`: expected a block index >= 0 or a "
            f"non-empty list of them, got {value!r}."
        )
    return sorted(set(values))


def _names(value) -> list[str]:
    return [] if value is None or isinstance(value, str) else list(value)


class PeftLibraryBank(GroupModuleBank):
    """``n_modules`` adapters of one peft config on the encoder's backbone.

    Args:
        encoder (ItemEncoder): its backbone gets the adapters, in place.
        peft_config (PeftConfig): one adapter's config.
        n_modules (int): number of adapters.
        cache_frozen_layers (bool): run the frozen blocks below the adapters
            once for the catalogue (:mod:`~recbole_perpeft.tuners.lower_layer_cache`).
        catalogue_pass (CataloguePass | None): batch size, device and progress
            bar of that one pass (default: batches of 256 on the CPU).
        states_folder (str | None): where the cached states are stored, the
            first adapted blocks appended (required with ``cache_frozen_layers``).
        encoder_id (dict | None): how the encoder was made, part of the
            states' fingerprint (:func:`~recbole_perpeft.tuners.state_store.encoder_identity`).
    """

    def __init__(
        self,
        encoder: ItemEncoder,
        peft_config,
        n_modules: int,
        cache_frozen_layers: bool = False,
        catalogue_pass: CataloguePass | None = None,
        states_folder: str | None = None,
        encoder_id: dict | None = None,
    ) -> None:
        super().__init__(n_modules)
        self.cache_frozen_layers = cache_frozen_layers
        self.catalogue_pass = catalogue_pass or CataloguePass()
        self.states_folder = states_folder
        self.encoder_id = dict(encoder_id or {})
        self.lower_layers = None
        from peft import inject_adapter_in_model

        # The model owns the encoder; the bank keeps a plain reference so that the
        # encoder's tensors appear once in the model's state dict.
        object.__setattr__(self, "encoder", encoder)
        self.peft_type = str(peft_config.peft_type.value).lower()
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        with warnings.catch_warnings():
            # Several adapters on one model are the point of the bank.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            try:
                for index in range(n_modules):
                    inject_adapter_in_model(peft_config, encoder.backbone, adapter_name(index))
            except ValueError as error:
                # peft's NoMatchingPeftModuleError (a ValueError): ours names the key
                if "not found in the base model" not in str(error):
                    raise
        self.wrapped_modules = self._wrapped_module_names()
        if not self.wrapped_modules:
            raise ValueError(
                f"`peft_config.target_modules`: {peft_config.target_modules!r} wrapped "
                f"no module of {type(encoder).__name__} (check target_modules and "
                "layers_to_transform against its blocks)."
            )
        logger.info(
            f"{self.peft_type} wraps {len(self.wrapped_modules)} modules: "
            f"{', '.join(self.wrapped_modules)}"
        )
        self.activate(0)

    def prepare(self, content) -> None:
        """With ``cache_frozen_layers``, run the blocks below the adapters once."""
        if not self.cache_frozen_layers or self.lower_layers is not None:
            return
        from recbole_perpeft.tuners.lower_layer_cache import (
            LowerLayerCache,
            first_adapted_blocks,
        )

        encoder = self.encoder
        if type(encoder).hidden_before_block is ItemEncoder.hidden_before_block:
            raise ValueError(
                f"`cache_frozen_layers`: {type(encoder).__name__} cannot run its "
                "towers from a middle block; expected False, or encoder 'hf_text' "
                "or 'hf_clip'."
            )
        first = first_adapted_blocks(encoder, self.wrapped_modules)
        if not any(first.values()):
            logger.warning(
                "cache_frozen_layers: every tower has adapters from block 0 on, so "
                "no frozen lower block can be cached; set "
                "peft_config.layers_to_transform to the upper blocks to use it."
            )
            return
        if self.states_folder is None:
            raise ValueError("cache_frozen_layers needs a states_folder to store the states in")
        cache = LowerLayerCache(encoder, first)
        # one folder per first adapted block(s): every PEFT kind adapting the
        # same blocks shares it
        blocks = "-".join(f"{modality}{block}" for modality, block in sorted(first.items()))
        cache.build(
            f"{self.states_folder}-{blocks}",
            self.encoder_id,
            content,
            self.catalogue_pass,
            self.adapter_state_keys(),
        )
        self.lower_layers = cache

    def adapter_state_keys(self) -> set[str]:
        """The backbone's state keys that belong to any module's adapter."""
        return {name for index in range(self.n_modules) for _, name, _ in self._module_items(index)}

    def _tuner_layers(self) -> list[tuple[str, nn.Module]]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [
            (name, module)
            for name, module in self.encoder.backbone.named_modules()
            if isinstance(module, BaseTunerLayer)
        ]

    def _wrapped_module_names(self) -> list[str]:
        return [name for name, _ in self._tuner_layers()]

    def activate(self, index: int) -> None:
        self.check_index(index)
        for _, layer in self._tuner_layers():
            # set_adapter also sets requires_grad: True for this adapter only.
            layer.set_adapter(adapter_name(index))
        self.active = index

    def _module_items(self, index: int):
        mark = re.compile(rf"(^|\.){re.escape(adapter_name(index))}(\.|$)")
        for name, tensor in self.encoder.backbone.state_dict(keep_vars=True).items():
            if mark.search(name):
                yield mark.sub(r"\1{adapter}\2", name), name, tensor

    def module_parameters(self, index: int) -> list[nn.Parameter]:
        return [
            tensor
            for _, _, tensor in self._module_items(index)
            if isinstance(tensor, nn.Parameter)
        ]

    def module_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        return {key: tensor for key, _, tensor in self._module_items(index)}

    def load_module_state_dict(
        self, index: int, state: dict[str, torch.Tensor]
    ) -> None:
        own = {key: tensor for key, _, tensor in self._module_items(index)}
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
        return self.encoder.modality_dims

    def embed(
        self, item_ids: torch.Tensor, content, device: torch.device
    ) -> dict[str, torch.Tensor]:
        if self.lower_layers is not None:
            return self.lower_layers.embed(item_ids, content, device)
        return self.encoder(content.gather(item_ids).to(device))
