"""Model and trainer look-up: ours first, then RecBole's built-ins."""

from __future__ import annotations

import importlib
import os
import re

OUR_MODELS = {
    "FrozenMM": "recbole_perpeft.model.frozen_mm",
    "GlobalPEFT": "recbole_perpeft.model.global_peft",
    "PerPEFT": "recbole_perpeft.model.perpeft",
}
PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "properties")


def is_our_model(name: str) -> bool:
    return name in OUR_MODELS


def recbole_model_names() -> list[str]:
    """Names of RecBole 1.2.1's built-in models."""
    import recbole

    # Read the families' __init__ files rather than importing them: some need
    # optional packages (lightgbm, xgboost) that a user may not have.
    names = []
    base = os.path.join(os.path.dirname(recbole.__file__), "model")
    for family in sorted(os.listdir(base)):
        init = os.path.join(base, family, "__init__.py")
        if family.endswith("_recommender") and os.path.isfile(init):
            with open(init, encoding="utf-8") as handle:
                names.extend(re.findall(r"^from .+ import (\w+)", handle.read(), re.M))
    return sorted(set(names))


def get_model(name: str):
    """The model class called ``name``: one of ours, or a RecBole built-in."""
    if name in OUR_MODELS:
        return getattr(importlib.import_module(OUR_MODELS[name]), name)
    from recbole.utils import get_model as recbole_get_model

    try:
        return recbole_get_model(name)
    except (ValueError, AttributeError, ImportError):
        raise ValueError(
            f"`model`: expected one of {list(OUR_MODELS)} or a RecBole model "
            f"(e.g. SASRec, GRU4Rec, BERT4Rec; {len(recbole_model_names())} in all), "
            f"got {name!r}."
        ) from None


def get_trainer(model_type, name: str):
    """Our trainer for our models, RecBole's choice for its own."""
    if name in OUR_MODELS:
        from recbole_perpeft.trainer import PerPEFTTrainer

        return PerPEFTTrainer
    from recbole.utils import get_trainer as recbole_get_trainer

    return recbole_get_trainer(model_type, name)


def config_files(name: str, dataset: str) -> list[str]:
    """Our YAML defaults for ``name`` on ``dataset``, most general first."""
    files = [os.path.join(PROPERTIES_DIR, "overall.yaml")]
    if name in OUR_MODELS:
        files.append(os.path.join(PROPERTIES_DIR, "model", "MultimodalSASRec.yaml"))
        files.append(os.path.join(PROPERTIES_DIR, "model", f"{name}.yaml"))
    dataset_file = os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml")
    if os.path.isfile(dataset_file):
        files.append(dataset_file)
    return files
