"""The embedded default (``python run_recbole_perpeft.py`` with no argument):
its config resolves as its comments say, on the packaged (real, pretrained)
all-MiniLM-L6-v2, loaded offline. The run itself is timed by hand (README)."""

from __future__ import annotations

import os

import pytest

from recbole_perpeft.encoders import build_encoder
from recbole_perpeft.quick_start import build_config
from recbole_perpeft.tuners import peft_kwargs
from recbole_perpeft.tuners.lower_layer_cache import first_adapted_blocks
from recbole_perpeft.tuners.peft_library import PeftLibraryBank, build_peft_config
from recbole_perpeft.utils import PROPERTIES_DIR

# the file run_recbole_perpeft.py runs when given no argument
DEFAULT_RUN = os.path.join(PROPERTIES_DIR, "quick_start_config", "default_run.yaml")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_BLOCKS = os.path.join(ROOT, "benchmarks", "configs", "all_blocks.yaml")


@pytest.fixture(scope="module")
def minilm_config():
    return build_config("PerPEFT", "ml-100k", [DEFAULT_RUN])


def _adapted_blocks(config) -> tuple[list[int], dict[str, int]]:
    encoder = build_encoder(config)
    peft_config = build_peft_config("lora", peft_kwargs(config), encoder)
    wrapped = PeftLibraryBank(encoder, peft_config, 1).wrapped_modules
    blocks = sorted({encoder.block_of(name)[1] for name in wrapped})
    return blocks, first_adapted_blocks(encoder, wrapped)


def test_default_run_adapts_minilms_top_two_blocks_and_caches_the_rest(minilm_config) -> None:
    config = minilm_config
    assert config["encoder"] == "hf_text" and config["encoder_path"] is None  # packaged MiniLM
    assert config["peft_type"] == "lora" and config["cache_frozen_layers"] is True
    blocks, first = _adapted_blocks(config)
    assert blocks == [4, 5]
    assert first == {"text": 4}  # blocks 0-3 are run once and cached


def test_all_blocks_file_restores_lora_in_every_block() -> None:
    config = build_config("PerPEFT", "ml-100k", [DEFAULT_RUN, ALL_BLOCKS])
    assert config["cache_frozen_layers"] is False
    assert config["train_batch_size"] == 64  # the rest of the default is kept
    blocks, first = _adapted_blocks(config)
    assert blocks == [0, 1, 2, 3, 4, 5]
    assert first == {"text": 0}
