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
            config["open_clip_model"], path, modalities, random_init=random_init
        )
    raise ValueError(f"`encoder`: expected one of {list(ENCODERS)}, got {name!r}.")
