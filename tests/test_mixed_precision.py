"""RecBole's enable_amp (bf16 autocast on CPU) runs our models, and the catalogue
encodings of evaluation follow it. Tiny RANDOMLY INITIALISED BERT."""

from __future__ import annotations

import math

import torch

from _tiny import build_tiny_perpeft, tiny_config_dict
from recbole_perpeft.quick_start import run_recbole_perpeft


def test_perpeft_trains_and_evaluates_with_amp(tmp_path) -> None:
    config_dict = tiny_config_dict(tmp_path, enable_amp=True)
    result = run_recbole_perpeft("PerPEFT", "tiny", config_dict=config_dict)
    assert result["test_result"]
    assert all(math.isfinite(float(v)) for v in result["test_result"].values())


def test_catalogue_vectors_follow_enable_amp(tmp_path) -> None:
    _, _, model = build_tiny_perpeft(tmp_path, "lora")
    model.eval()
    exact = model.catalogue_vectors(0).clone()
    model.train()  # drops the cached catalogue
    model.eval()
    model.enable_amp = True
    mixed = model.catalogue_vectors(0)
    # float32 tables either way; bf16 rounding shows, but stays small
    assert mixed.dtype == exact.dtype == torch.float32
    assert not torch.equal(mixed, exact)
    torch.testing.assert_close(mixed, exact, atol=0.05, rtol=0.05)
