"""Item encoders, one file per foundation-model family, behind one interface."""

from __future__ import annotations

from recbole_perpeft.encoders.base import ItemEncoder

ENCODERS = ("hf_text", "hf_clip", "open_clip")


def build_encoder(config) -> ItemEncoder:
    """The encoder that ``config['encoder']`` names, built from its config keys."""
    name = config["encoder"]
    modalities = list(config["modalities"])
    path = config["encoder_path"]
    random_init = config["encoder_random_init"]
    if name == "hf_text":
        from recbole_perpeft.encoders.hf_text import HFTextEncoder

        return HFTextEncoder(path, modalities, random_init=random_init)
    if name == "hf_clip":
        from recbole_perpeft.encoders.hf_clip import HFCLIPEncoder

        return HFCLIPEncoder(path, modalities, random_init=random_init)
    if name == "open_clip":
        from recbole_perpeft.encoders.open_clip import OpenCLIPEncoder

        return OpenCLIPEncoder(
            config["open_clip_model"],
            path,
            modalities,
            random_init=random_init,
            pretrained=config["open_clip_pretrained"],
        )
    raise ValueError(f"`encoder`: expected one of {list(ENCODERS)}, got {name!r}.")


def check_encoder_config(config) -> None:
    """Raise ``ValueError`` for encoder keys that cannot build a model.

    Runs before any layer is built (from :func:`recbole_perpeft.config_checks.
    check_config`); it reads only registries, never weights.
    """

    def get(key: str):
        return config[key] if key in config else None

    if get("encoder") == "open_clip":
        from recbole_perpeft.encoders.open_clip import check_open_clip_config

        check_open_clip_config(
            get("open_clip_model"),
            get("open_clip_pretrained"),
            get("encoder_path"),
            get("encoder_random_init"),
        )
