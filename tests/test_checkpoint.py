"""A saved PerPEFT checkpoint holds everything needed to reproduce its test numbers."""

import pytest
import torch

from recbole_perpeft.quick_start import (
    build_config,
    create_data,
    evaluate_checkpoint,
    run_recbole_perpeft,
)
from recbole_perpeft.utils import get_model


def test_checkpoint_round_trip_gives_the_same_test_numbers(run_config, tmp_path):
    result = run_recbole_perpeft("PerPEFT", "ml-slice", config_dict=run_config)
    saved = list((tmp_path / "saved").glob("PerPEFT-*.pth"))
    assert len(saved) == 1
    checkpoint = torch.load(saved[0], weights_only=False)
    state = checkpoint["state_dict"]
    # all group modules, both projectors, the SASRec and the group assignment
    for group in (0, 1):
        assert any(f".group_{group}." in key and "lora_A" in key for key in state)
        assert any(key.startswith(f"projectors.{group}.") for key in state)
    assert "item_embedding.weight" in state and "trm_encoder.layer.0.multi_head_attention.query.weight" in state
    assert state["user_group"].max() == 1 and state["user_group"].min() == 0
    # a randomly initialised encoder cannot be re-read, so it is saved too
    assert any("attention.self.query.base_layer.weight" in key for key in state)

    test_result, trainer = evaluate_checkpoint(str(saved[0]))
    assert dict(test_result) == dict(result["test_result"])
    assert torch.equal(trainer.model.user_group, state["user_group"])
    rows = trainer.group_table
    assert sum(row.users for row in rows) == 60


def test_pretrained_foundation_weights_stay_out_of_the_checkpoint(run_config):
    config = build_config(
        "GlobalPEFT", "ml-slice", config_dict={**run_config, "encoder_random_init": None}
    )
    _, train_data, _, _ = create_data(config)
    model = get_model("GlobalPEFT")(config, train_data.dataset)
    state = model.state_dict()
    assert not any("base_layer" in key or "embeddings.word_embeddings" in key for key in state)
    assert any("lora_A.group_0" in key for key in state)
    fresh = get_model("GlobalPEFT")(config, train_data.dataset)
    fresh.load_state_dict(state)
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value)
    state.pop("item_embedding.weight")
    with pytest.raises(RuntimeError, match="missing keys \\['item_embedding.weight'\\]"):
        fresh.load_state_dict(state)
