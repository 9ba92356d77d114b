"""IISAN: the layer-state cache (reuse, invalidation, atomic build), training
without the encoder, group-free state keys and the parameter report."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from _tiny import TINY_BERT, build_tiny_perpeft
from recbole_perpeft.data.content import ItemContent
from recbole_perpeft.data.user_sequences import UserSequenceLoader
from recbole_perpeft.encoders.hf_text import HFTextEncoder
from recbole_perpeft.tuners.base import CataloguePass
from recbole_perpeft.tuners.iisan import layer_state_store, resolve_layers

SMALL = {"bottleneck": 8, "side_dim": 16}


class CountingEncoder(HFTextEncoder):
    """The tiny random BERT, counting calls of ``layer_states``."""

    calls = 0

    def layer_states(self, batch, layers):
        CountingEncoder.calls += 1
        return super().layer_states(batch, layers)


def _encoder(seed: int = 0) -> CountingEncoder:
    torch.manual_seed(seed)
    return CountingEncoder(None, ["text"], random_init=dict(TINY_BERT))


def _content(encoder, titles: list[str]) -> ItemContent:
    ids, lengths = encoder.tokenize(titles, 16)
    return ItemContent(ids, lengths, torch.tensor([bool(t) for t in titles]))


def _build(folder, encoder, content, layers=(0, 2), dtype="float16"):
    return layer_state_store(
        str(folder),
        encoder,
        {"random_init": TINY_BERT},
        list(layers),
        content,
        dtype=dtype,
        catalogue_pass=CataloguePass(batch_size=4),
    )


TITLES = ["", "red lamp", "blue golf bag", "eco tent", "green mug", "travel chair"]


def test_cache_reused_when_inputs_unchanged_and_rebuilt_when_they_change(
    tmp_path,
) -> None:
    encoder = _encoder()
    content = _content(encoder, TITLES)
    CountingEncoder.calls = 0
    first = _build(tmp_path, encoder, content)
    assert first.rebuilt and CountingEncoder.calls == 2  # 6 items in batches of 4
    assert isinstance(first.states["text"], np.memmap) and first.states[
        "text"
    ].shape == (6, 2, 32)
    assert first.states["text"].dtype == np.float16
    assert sorted(os.listdir(tmp_path)) == [
        "meta.json",
        "text.npy",
    ]  # no temporary left

    CountingEncoder.calls = 0
    again = _build(
        tmp_path, _encoder(), _content(encoder, TITLES)
    )  # same seed: same weights
    assert not again.rebuilt and CountingEncoder.calls == 0
    np.testing.assert_array_equal(again.states["text"], first.states["text"])

    for changed in (
        dict(layers=(0, 1, 2)),  # the layers
        dict(content=_content(encoder, TITLES[:-1] + ["travel stool"])),  # the content
        dict(encoder=_encoder(seed=1)),  # other random weights
        dict(dtype="float32"),  # the storage
    ):
        CountingEncoder.calls = 0
        kwargs = dict(encoder=encoder, content=content, layers=(0, 2)) | changed
        cache = _build(tmp_path, **kwargs)
        assert cache.rebuilt and CountingEncoder.calls > 0, changed
    # the states match a direct call of the encoder
    cache = _build(tmp_path, encoder, content, dtype="float32")
    with torch.no_grad():
        direct = encoder.eval().layer_states(content.gather(torch.arange(6)), [0, 2])[
            "text"
        ]
    np.testing.assert_allclose(
        cache.states["text"], direct.numpy(), rtol=1e-5, atol=1e-6
    )


def test_a_broken_cache_is_rebuilt(tmp_path) -> None:
    encoder = _encoder()
    content = _content(encoder, TITLES)
    _build(tmp_path, encoder, content)
    np.save(
        tmp_path / "text.npy", np.zeros((3, 2, 32), dtype=np.float16)
    )  # wrong shape
    assert _build(tmp_path, encoder, content).rebuilt


def test_resolve_layers() -> None:
    assert resolve_layers(None, 6) == [0, 2, 4, 6]
    assert resolve_layers(None, 5) == [0, 2, 4, 5]
    assert resolve_layers("all", 2) == [0, 1, 2]
    assert resolve_layers([-1, 1], 6) == [1, 6]
    for bad in ([], [7], "last", [1.5], 3):
        with pytest.raises(ValueError, match="`peft_config.layers`: expected"):
            resolve_layers(bad, 6)


def test_model_reuses_cache_and_trains_without_the_encoder(
    tmp_path, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(
        "recbole_perpeft.encoders.hf_text.HFTextEncoder", CountingEncoder
    )
    CountingEncoder.calls = 0
    config, train_data, model = build_tiny_perpeft(tmp_path, "iisan", SMALL)
    assert model.bank.cache.rebuilt and CountingEncoder.calls > 0
    folder = model.bank.cache_folder
    assert os.path.dirname(folder) == os.path.join(config["checkpoint_dir"], "content_cache")
    assert os.path.basename(folder).startswith("tiny-iisan-")

    CountingEncoder.calls = 0
    _, _, model = build_tiny_perpeft(tmp_path, "iisan", SMALL)
    assert not model.bank.cache.rebuilt and CountingEncoder.calls == 0
    _, _, other = build_tiny_perpeft(tmp_path, "iisan", {**SMALL, "layers": "all"})
    assert other.bank.cache.rebuilt and other.bank.layers == [0, 1, 2]
    # another layer selection has its own folder: the first one is still valid
    assert other.bank.cache_folder != folder
    _, _, model = build_tiny_perpeft(tmp_path, "iisan", SMALL)
    assert not model.bank.cache.rebuilt
    CountingEncoder.calls = 0

    # a training step and a catalogue encoding never run the encoder
    forward_calls = []
    model.encoder.backbone.register_forward_hook(lambda *args: forward_calls.append(1))
    model.copy_global_to_groups()
    loader = UserSequenceLoader(config, train_data.dataset, batch_size=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    loss = model.calculate_loss(next(iter(loader)))
    loss.backward()
    optimizer.step()
    model.eval()
    assert torch.isfinite(model.catalogue_vectors(1)).all()
    assert forward_calls == [] and CountingEncoder.calls == 0

    # group modules: keys without the index; all of them in the checkpoint, no encoder
    keys = set(model.bank.module_state_dict(0))
    assert keys == set(model.bank.module_state_dict(1)) and not any(
        "1" in k.split(".")[0] for k in keys
    )
    # a randomly initialised encoder is saved, since it cannot be re-read ...
    assert any(k.startswith("encoder.") for k in model.state_dict())
    # ... a pretrained one is not, and IISAN keeps nothing of its own in it
    model.save_foundation = False
    state = model.state_dict()
    assert not any(k.startswith("encoder.") for k in state)
    assert {k.split(".")[2] for k in state if k.startswith("bank.")} == {"0", "1"}
    _, _, fresh = build_tiny_perpeft(tmp_path, "iisan", SMALL)
    fresh.save_foundation = False
    fresh.load_state_dict(state)
    for k, v in fresh.bank.module_state_dict(1).items():
        assert torch.equal(v, model.bank.module_state_dict(1)[k])

    # parameter report: 2 selected layers of Linear(32, 8) + Linear(8, 16), one gate
    per_layer = 32 * 8 + 8 + 8 * 16 + 16
    assert model.bank.layers == [0, 2]
    assert model.bank.module_parameter_count(0) == 2 * per_layer + 1
    assert model.bank.modality_dims == {"text": 16}
    assert model.projectors[0][0].in_features == 16
    assert model.foundation_parameters == sum(
        p.numel() for p in model.encoder.parameters()
    )
    from recbole_perpeft.trainer import PerPEFTTrainer

    trainer = PerPEFTTrainer(config, model)
    with caplog.at_level(logging.INFO, logger="recbole_perpeft.trainer"):
        trainer._log_stage("Stage 3/3", 1, loader)
    assert f"({2 * per_layer + 1:,} PEFT" in caplog.text
    assert f"encoder's {model.foundation_parameters:,}" in caplog.text
