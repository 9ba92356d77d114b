"""Every supported PEFT kind runs PerPEFT's stage 1 and stage 3 end to end on the
tiny dataset with the tiny random BERT; unsupported kinds are refused clearly."""

from __future__ import annotations

import math

import pytest

from _tiny import TINY_BERT, build_tiny_perpeft, tiny_config_dict
from recbole_perpeft.encoders.hf_text import HFTextEncoder
from recbole_perpeft.quick_start import run_recbole_perpeft
from recbole_perpeft.tuners.peft_library import build_peft_config

KINDS = [
    ("lora", {}),
    ("lora", {"use_dora": True}),
    ("lora", {"use_rslora": True}),
    ("ia3", {}),
    ("loha", {}),
    ("lokr", {}),
    ("iisan", {"bottleneck": 8, "side_dim": 16}),
]


@pytest.mark.parametrize(
    "peft_type, peft_config",
    KINDS,
    ids=[f"{k}-{'-'.join(c) or 'preset'}" for k, c in KINDS],
)
def test_kind_runs_end_to_end(tmp_path, peft_type: str, peft_config: dict) -> None:
    config_dict = tiny_config_dict(
        tmp_path, peft_type=peft_type, peft_config=peft_config
    )
    result = run_recbole_perpeft("PerPEFT", "tiny", config_dict=config_dict)
    metrics = result["test_result"]
    assert metrics and all(math.isfinite(float(v)) for v in metrics.values()), metrics


@pytest.mark.parametrize("peft_type", ["vera", "adalora"])
def test_kinds_with_shared_tuner_state_are_refused(peft_type: str) -> None:
    encoder = HFTextEncoder(None, ["text"], random_init=dict(TINY_BERT))
    with pytest.raises(
        ValueError, match=rf"`peft_type`: expected .* got '{peft_type}'; "
    ):
        build_peft_config(peft_type, {"target_modules": ["q_proj", "v_proj"]}, encoder)


def test_lora_parameter_report(tmp_path) -> None:
    _, _, model = build_tiny_perpeft(tmp_path, "lora")
    r, hidden, layers, targets = (
        4,
        TINY_BERT["hidden_size"],
        TINY_BERT["num_hidden_layers"],
        2,
    )
    assert (
        model.bank.module_parameter_count(0)
        == layers * targets * r * (hidden + hidden)
        == 1024
    )
    assert model.bank.module_parameter_count(1) == 1024
    own = sum(
        p.numel()
        for n, p in model.encoder.backbone.named_parameters()
        if "lora_" not in n
    )
    assert model.foundation_parameters == own


def test_dora_adds_a_magnitude_per_output_feature(tmp_path) -> None:
    _, _, model = build_tiny_perpeft(tmp_path, "lora", {"use_dora": True})
    keys = model.bank.module_state_dict(0)
    assert any("lora_magnitude_vector" in k for k in keys)
    assert (
        model.bank.module_parameter_count(0) == 1024 + 2 * 2 * TINY_BERT["hidden_size"]
    )
