"""PEFT kinds, one file each, behind :class:`~recbole_perpeft.tuners.base.GroupModuleBank`."""

from __future__ import annotations

from logging import getLogger

from recbole_perpeft.encoders.base import ItemEncoder
from recbole_perpeft.tuners.base import CataloguePass, GroupModuleBank
from recbole_perpeft.tuners.state_store import encoder_identity, store_folder


def peft_kwargs(config) -> dict:
    """The preset of ``peft_type`` with ``peft_config`` merged over it."""
    peft_type = str(config["peft_type"]).lower()
    presets = config["peft_presets"] or {}
    kwargs = dict(presets.get(peft_type, {}))
    kwargs.update(config["peft_config"] or {})
    return kwargs


def build_bank(config, encoder: ItemEncoder, n_modules: int) -> GroupModuleBank:
    """The bank of ``n_modules`` modules of ``config['peft_type']`` on ``encoder``."""
    peft_type = str(config["peft_type"]).lower()
    kwargs = peft_kwargs(config)
    if peft_type == "iisan":
        from recbole_perpeft.tuners.iisan import IISANBank

        if config["cache_frozen_layers"]:
            getLogger().warning(
                "cache_frozen_layers is ignored with peft_type 'iisan': IISAN runs "
                "the frozen encoder once for the catalogue anyway and trains only "
                "its side networks over the stored layer states."
            )
        for key in ("layers_to_transform", "layers_pattern"):
            if key in kwargs:
                # e.g. the embedded default's LoRA setting, with --peft_type=iisan
                getLogger().warning(
                    f"peft_config.{key} is ignored with peft_type 'iisan', which "
                    "selects its layers with peft_config.layers."
                )
                kwargs.pop(key)
        return IISANBank(config, encoder, n_modules, **kwargs)
    from recbole_perpeft.tuners.peft_library import PeftLibraryBank, build_peft_config

    return PeftLibraryBank(
        encoder,
        build_peft_config(peft_type, kwargs, encoder),
        n_modules,
        cache_frozen_layers=bool(config["cache_frozen_layers"]),
        catalogue_pass=CataloguePass.from_config(config),
        states_folder=store_folder(
            config,
            "lower",
            [type(encoder).__name__, encoder_identity(config), encoder.modalities],
        ),
        encoder_id=encoder_identity(config),
    )
