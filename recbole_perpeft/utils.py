"""Model and trainer look-up: ours first, then RecBole's built-ins."""

from __future__ import annotations

import importlib
import os
import re
import sys

OUR_MODELS = {
    "FrozenMM": "recbole_perpeft.model.frozen_mm",
    "GlobalPEFT": "recbole_perpeft.model.global_peft",
    "PerPEFT": "recbole_perpeft.model.perpeft",
}
#: Where ``pip install .`` puts the YAML defaults (``[options.data_files]``).
INSTALLED_PROPERTIES = os.path.join("share", "recbole_perpeft", "properties")


def find_properties_dir(package_dir: str, prefix: str) -> str:
    """The folder of the YAML defaults.

    A source checkout (and ``pip install -e .``) has ``properties/`` beside the
    package; a regular install has it under ``<prefix>/share/recbole_perpeft``.

    Args:
        package_dir (str): the folder of the ``recbole_perpeft`` package.
        prefix (str): the installation prefix (``sys.prefix``).

    Raises:
        FileNotFoundError: when neither holds ``overall.yaml``.
    """
    candidates = [
        os.path.join(os.path.dirname(package_dir), "properties"),
        os.path.join(prefix, INSTALLED_PROPERTIES),
    ]
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, "overall.yaml")):
            return candidate
    raise FileNotFoundError(
        f"recbole_perpeft's YAML defaults (overall.yaml) are in none of {candidates}; "
        "reinstall the package."
    )


PROPERTIES_DIR = find_properties_dir(os.path.dirname(os.path.abspath(__file__)), sys.prefix)


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
