"""PerPEFT end to end on a tiny SYNTHETIC dataset with RANDOMLY INITIALISED tiny CLIP
encoders (open_clip and transformers): the pipeline runs, the numbers mean nothing."""

from __future__ import annotations

import math
import os

import pytest

from recbole_perpeft.data.synthetic import make_synthetic_dataset
from recbole_perpeft.quick_start import run_recbole_perpeft

from recbole_perpeft.encoders.hf_clip import TINY_RANDOM_INIT as TINY_RANDOM_HF_CLIP
from recbole_perpeft.encoders.open_clip import (
    TINY_RANDOM_INIT as TINY_RANDOM_OPEN_CLIP,
)

ENCODERS = {
    "open_clip": {
        "encoder": "open_clip",
        "open_clip_model": "ViT-B-32",
        "encoder_random_init": TINY_RANDOM_OPEN_CLIP,
    },
    "hf_clip": {"encoder": "hf_clip", "encoder_random_init": TINY_RANDOM_HF_CLIP},
}


@pytest.mark.parametrize("peft_type", ["lora", "iisan"])
@pytest.mark.parametrize("kind", list(ENCODERS))
def test_perpeft_with_a_tiny_random_clip(tmp_path, kind, peft_type):
    make_synthetic_dataset(
        tmp_path / "synthetic", n_items=60, n_users=40, seq_len=(6, 9), image_size=32
    )
    cache = tmp_path / "content_cache"
    config_dict = {
        **ENCODERS[kind],
        "peft_type": peft_type,
        "data_path": str(tmp_path),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "text_fields": ["title"],
        "modalities": ["image", "text"],
        "global_epochs": 1,
        "epochs": 1,
        "n_groups": 2,
        "train_batch_size": 16,
        "eval_batch_size": 64,
        "encode_batch_size": 64,
        "show_progress": False,
        "state": "ERROR",
        "checkpoint_dir": str(tmp_path / "saved"),
        "content_cache_dir": str(cache),
    }
    result = run_recbole_perpeft(
        model="PerPEFT", dataset="synthetic", config_dict=config_dict
    )
    assert result["test_result"]
    for metric, value in result["test_result"].items():
        assert math.isfinite(value) and 0.0 <= value <= 1.0, (metric, value)
    stores = sorted(os.listdir(cache))
    # IISAN adds the frozen encoder's layer states of both towers
    assert "synthetic-images-32" in stores
    iisan = [store for store in stores if store.startswith("synthetic-iisan-")]
    assert len(iisan) == (1 if peft_type == "iisan" else 0)
    assert len(stores) == 1 + len(iisan)
    for store in stores:
        assert any(name.endswith(".npy") for name in os.listdir(cache / store))
    if iisan:
        assert sorted(os.listdir(cache / iisan[0])) == ["image.npy", "meta.json", "text.npy"]
