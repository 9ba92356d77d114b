"""A tiny atomic dataset and config for fast end-to-end tests of the PEFT banks.

The encoder is a RANDOMLY INITIALISED BERT built from all-MiniLM-L6-v2's config
(hidden 32, 2 layers), with MiniLM's real tokenizer: no weights are downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
WORDS = ["red", "blue", "green", "lamp", "chair", "bag", "golf", "tent", "eco", "mug"]


def write_tiny_dataset(
    root: Path, name: str = "tiny", n_users: int = 50, n_items: int = 60, seed: int = 0
) -> Path:
    """Write ``<root>/<name>/<name>.inter`` and ``.item`` (with a title column).

    Returns:
        Path: the data folder (``root``), to pass as RecBole's ``data_path``.
    """
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, n_users + 1):
        length = int(rng.integers(5, 9))
        items = rng.choice(np.arange(1, n_items + 1), size=length, replace=False)
        for t, item in enumerate(items):
            lines.append(f"u{user}\ti{item}\t{t}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = ["item_id:token\ttitle:token_seq"]
    for item in range(1, n_items + 1):
        title = " ".join(rng.choice(WORDS, size=3))
        rows.append(f"i{item}\t{title} {item}")
    (folder / f"{name}.item").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def tiny_config_dict(tmp_path: Path, **overrides) -> dict:
    """Config keys of a fast PerPEFT run on the tiny dataset in ``tmp_path``."""
    data_path = write_tiny_dataset(tmp_path / "data")
    config = {
        "data_path": str(data_path),
        "load_col": {
            "inter": ["user_id", "item_id", "timestamp"],
            "item": ["item_id", "title"],
        },
        "encoder": "hf_text",
        "encoder_random_init": dict(TINY_BERT),
        "modalities": ["text"],
        "text_max_length": 16,
        "global_epochs": 1,
        "epochs": 1,
        "n_groups": 2,
        "show_progress": False,
        "state": "ERROR",
        "checkpoint_dir": str(tmp_path / "saved"),
        "eval_batch_size": 64,
        "train_batch_size": 16,
        "topk": [10],
        "valid_metric": "NDCG@10",
        "seed": 2020,
    }
    config.update(overrides)
    return config


def build_tiny_perpeft(
    tmp_path: Path, peft_type: str, peft_config: dict | None = None, **overrides
):
    """The config, train split and a PerPEFT model on the tiny dataset, built with
    the real classes (RecBole's Config and data preparation, our dataset).

    Returns:
        tuple: ``(config, train_data, model)``.
    """
    from recbole.utils import init_seed

    from recbole_perpeft.model.perpeft import PerPEFT
    from recbole_perpeft.quick_start import build_config, create_data

    config_dict = tiny_config_dict(
        tmp_path, peft_type=peft_type, peft_config=dict(peft_config or {}), **overrides
    )
    config = build_config("PerPEFT", "tiny", config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, _, _ = create_data(config)
    init_seed(config["seed"], config["reproducibility"])
    model = PerPEFT(config, train_data.dataset)
    return config, train_data, model
