"""Shared fixtures: a small slice of RecBole's bundled ml-100k and a tiny encoder.

The tiny encoder is a RANDOMLY INITIALISED 2-layer BERT (hidden 32) built from
all-MiniLM-L6-v2's config, with MiniLM's real tokenizer. It stands in for the
pretrained model wherever a test checks behaviour rather than accuracy.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

import recbole_perpeft  # noqa: F401  (applies the compatibility fixes)

TINY_ENCODER = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def ml100k_folder() -> str:
    import recbole

    return os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k")


def write_ml100k_slice(folder, n_users: int = 60, name: str = "ml-slice") -> str:
    """Write the first ``n_users`` users of ml-100k (and their items) as atomic files."""
    source = ml100k_folder()
    inter = pd.read_csv(os.path.join(source, "ml-100k.inter"), sep="\t", dtype=str)
    users = sorted(inter["user_id:token"].unique(), key=int)[:n_users]
    inter = inter[inter["user_id:token"].isin(users)]
    item = pd.read_csv(os.path.join(source, "ml-100k.item"), sep="\t", dtype=str, keep_default_na=False)
    item = item[item["item_id:token"].isin(inter["item_id:token"].unique())]
    out = os.path.join(folder, name)
    os.makedirs(out, exist_ok=True)
    inter.to_csv(os.path.join(out, f"{name}.inter"), sep="\t", index=False)
    item.to_csv(os.path.join(out, f"{name}.item"), sep="\t", index=False)
    return out


@pytest.fixture(scope="session")
def ml_slice_root(tmp_path_factory) -> str:
    """Folder holding the dataset ``ml-slice`` (60 users of ml-100k)."""
    root = tmp_path_factory.mktemp("data")
    write_ml100k_slice(root)
    return str(root)


@pytest.fixture
def run_config(ml_slice_root, tmp_path, monkeypatch) -> dict:
    """Config keys for a fast run on ml-slice with the tiny random encoder.

    The test runs in its own folder, where RecBole writes its logs.
    """
    monkeypatch.chdir(tmp_path)
    return {
        "data_path": ml_slice_root,
        "text_fields": ["movie_title", "class"],
        "encoder_random_init": dict(TINY_ENCODER),
        "checkpoint_dir": str(tmp_path / "saved"),
        "global_epochs": 1,
        "epochs": 1,
        "n_groups": 2,
        "train_batch_size": 16,
        "learning_rate": 1e-3,
        "show_progress": False,
        "state": "ERROR",
        "seed": 7,
    }
