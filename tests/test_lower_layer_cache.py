"""cache_frozen_layers: the frozen blocks below the adapters run once, and training
and scoring from the cached states give what the full encoder gives.

Encoders are RANDOMLY INITIALISED tiny models (no weights are downloaded)."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from _tiny import TINY_BERT, build_tiny_perpeft
from recbole_perpeft.data.content import ContentBatch
from recbole_perpeft.encoders import hf_clip as hf_clip_encoder
from recbole_perpeft.encoders import open_clip as open_clip_encoder
from recbole_perpeft.encoders.hf_clip import HFCLIPEncoder
from recbole_perpeft.encoders.hf_text import HFTextEncoder
from recbole_perpeft.encoders.open_clip import OpenCLIPEncoder
from recbole_perpeft.tuners.lower_layer_cache import first_adapted_blocks
from recbole_perpeft.tuners.peft_library import PeftLibraryBank, build_peft_config

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _text_batch(encoder, texts):
    ids, lengths = encoder.tokenize(texts, 32)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    n = len(texts)
    return ids, lengths, ContentBatch(ids, mask, torch.ones(n, dtype=torch.bool), None, torch.zeros(n, dtype=torch.bool))


def test_layers_to_transform_wraps_only_the_given_blocks() -> None:
    encoder = HFTextEncoder(None, ["text"], random_init={**TINY_BERT, "num_hidden_layers": 3})
    config = build_peft_config("lora", {**LORA, "layers_to_transform": [1, 2]}, encoder)
    bank = PeftLibraryBank(encoder, config, n_modules=1)
    assert sorted(bank.wrapped_modules) == [
        f"encoder.layer.{block}.attention.self.{name}"
        for block in (1, 2)
        for name in ("query", "value")
    ]
    assert first_adapted_blocks(encoder, bank.wrapped_modules) == {"text": 1}


@pytest.mark.parametrize("value", [[-1], [], "top", [1.5], True])
def test_layers_to_transform_rejects_non_block_indices(value) -> None:
    encoder = HFTextEncoder(None, ["text"], random_init=dict(TINY_BERT))
    with pytest.raises(ValueError, match=r"`peft_config.layers_to_transform`: expected"):
        build_peft_config("lora", {**LORA, "layers_to_transform": value}, encoder)


def test_open_clip_blocks_are_located_per_tower() -> None:
    encoder = OpenCLIPEncoder(
        "ViT-B-32", None, ["image", "text"], random_init=open_clip_encoder.TINY_RANDOM_INIT
    )
    assert encoder.block_of("visual.transformer.resblocks.1.attn") == ("image", 1)
    assert encoder.block_of("transformer.resblocks.0.mlp.c_fc") == ("text", 0)
    assert encoder.block_of("visual.proj") is None


@pytest.mark.parametrize("block", [0, 1, 2])
def test_hf_clip_runs_from_any_block_to_the_same_embedding(block: int) -> None:
    torch.manual_seed(0)
    encoder = HFCLIPEncoder(None, ["image", "text"], random_init=hf_clip_encoder.TINY_RANDOM_INIT).eval()
    _, _, batch = _text_batch(encoder, ["a red shoe", "blue bag with two straps", "x"])
    batch.pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        full = encoder(batch)
        for modality in ("image", "text"):
            hidden = encoder.hidden_before_block(batch, modality, block)
            upper = encoder.encode_from_block(hidden, batch, modality, block)
            torch.testing.assert_close(upper, full[modality], atol=1e-6, rtol=1e-5)
    # the swap is undone: the towers have all their blocks again
    assert len(encoder.backbone.vision_model.encoder.layers) == 2
    assert len(encoder.backbone.text_model.encoder.layers) == 2


def _perturb_lora(model) -> None:
    # LoRA's B starts at zero (the adapter is then the identity); make it matter
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.bank.encoder.backbone.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))


def _two_models(tmp_path):
    peft_config = {**LORA, "layers_to_transform": [1]}
    models = []
    for cached in (False, True):
        config, train_data, model = build_tiny_perpeft(
            tmp_path / str(cached), "lora", peft_config, cache_frozen_layers=cached
        )
        _perturb_lora(model)
        models.append(model)
    return config, train_data, models


def test_cached_lower_layers_give_the_same_vectors_and_gradients(tmp_path) -> None:
    config, train_data, (plain, cached) = _two_models(tmp_path)
    assert plain.bank.lower_layers is None
    assert cached.bank.lower_layers.first_blocks == {"text": 1}
    # text states: one row per item, the catalogue's longest text, hidden width
    states = cached.bank.lower_layers.states["text"]
    assert states.shape == (plain.n_items, cached.content.input_ids.shape[1], TINY_BERT["hidden_size"])

    plain.eval()
    cached.eval()
    ids = torch.arange(1, plain.n_items)
    with torch.no_grad():
        torch.testing.assert_close(
            cached.item_vectors(ids, 0), plain.item_vectors(ids, 0), atol=1e-5, rtol=1e-4
        )
    # a training step's loss and LoRA gradients (dropout off: eval mode)
    from recbole_perpeft.data.user_sequences import UserSequenceLoader

    loader = UserSequenceLoader(config, train_data.dataset, batch_size=16)
    batch = next(iter(loader))
    losses, grads = [], []
    for model in (plain, cached):
        model.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(
            {n: p.grad.clone() for n, p in model.bank.encoder.backbone.named_parameters() if "lora_" in n and p.grad is not None}
        )
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=1e-5)
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-4)


def test_cache_without_frozen_blocks_warns_and_runs_the_full_encoder(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        _, _, model = build_tiny_perpeft(tmp_path, "lora", dict(LORA), cache_frozen_layers=True)
    assert model.bank.lower_layers is None
    assert "no frozen lower block can be cached" in caplog.text


def test_cache_is_refused_on_an_encoder_that_cannot_start_mid_tower() -> None:
    encoder = OpenCLIPEncoder(
        "ViT-B-32", None, ["text"], random_init=open_clip_encoder.TINY_RANDOM_INIT
    )
    config = build_peft_config("lora", {**LORA, "layers_to_transform": [1]}, encoder)
    bank = PeftLibraryBank(encoder, config, 1, cache_frozen_layers=True)
    with pytest.raises(ValueError, match=r"`cache_frozen_layers`: OpenCLIPEncoder cannot"):
        bank.prepare(content=None)


def test_layers_to_transform_beyond_the_blocks_names_the_key() -> None:
    encoder = HFTextEncoder(None, ["text"], random_init=dict(TINY_BERT))
    config = build_peft_config("lora", {**LORA, "layers_to_transform": [99]}, encoder)
    with pytest.raises(ValueError, match=r"`peft_config.target_modules`: .* wrapped no module"):
        PeftLibraryBank(encoder, config, n_modules=1)


def test_cache_with_iisan_is_ignored_with_a_warning(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        _, _, model = build_tiny_perpeft(tmp_path, "iisan", cache_frozen_layers=True)
    assert type(model.bank).__name__ == "IISANBank"
    assert "cache_frozen_layers is ignored with peft_type 'iisan'" in caplog.text


def test_peft_library_block_keys_are_ignored_by_iisan_with_a_warning(tmp_path, caplog) -> None:
    # the embedded default sets layers_to_transform; --peft_type=iisan must still run
    with caplog.at_level(logging.WARNING):
        _, _, model = build_tiny_perpeft(tmp_path, "iisan", {"layers_to_transform": [1]})
    assert type(model.bank).__name__ == "IISANBank"
    assert "peft_config.layers_to_transform is ignored with peft_type 'iisan'" in caplog.text


def test_catalogue_pass_returns_the_encoder_where_it_was_also_on_error() -> None:
    from recbole_perpeft.tuners.base import CataloguePass

    class Recorder(torch.nn.Linear):
        """Records where it is sent (no GPU here); its tensors stay put."""

        def to(self, device):
            self.moves.append(str(device))
            return self

    encoder = Recorder(2, 2)
    encoder.moves = []
    run = CataloguePass(device="cuda:1")
    with run.on_device(encoder) as device:
        assert device == torch.device("cuda:1")
    assert encoder.moves == ["cuda:1", "cpu"]
    with pytest.raises(RuntimeError, match="build failed"):
        with run.on_device(encoder):
            raise RuntimeError("build failed")
    assert encoder.moves == ["cuda:1", "cpu", "cuda:1", "cpu"]


def test_cached_states_are_stored_on_disk_and_reused_by_the_next_run(tmp_path) -> None:
    import numpy as np

    from recbole_perpeft.tuners.base import CataloguePass

    peft_config = {**LORA, "layers_to_transform": [1]}
    config, _, first = build_tiny_perpeft(tmp_path, "lora", peft_config, cache_frozen_layers=True)
    cache = first.bank.lower_layers
    store = cache.store
    assert store.rebuilt
    assert os.path.dirname(store.folder) == os.path.join(config["checkpoint_dir"], "content_cache")
    name = os.path.basename(store.folder)
    assert name.startswith("tiny-lower-") and name.endswith("-text1")  # first adapted block
    assert sorted(os.listdir(store.folder)) == ["meta.json", "text.npy"]  # no temporary left
    assert isinstance(store.states["text"], np.memmap) and store.states["text"].dtype == np.float32

    # trained adapters leave the lower blocks' states valid
    _perturb_lora(first)
    cache.build(store.folder, first.bank.encoder_id, first.content, CataloguePass(), first.bank.adapter_state_keys())
    assert not cache.store.rebuilt
    # the next run with the same encoder, blocks and content reads them back
    _, _, second = build_tiny_perpeft(tmp_path, "lora", peft_config, cache_frozen_layers=True)
    again = second.bank.lower_layers.store
    assert not again.rebuilt and again.folder == store.folder
    np.testing.assert_array_equal(again.states["text"], store.states["text"])
    # (IA)3 in the same blocks reads the same states
    _, _, ia3 = build_tiny_perpeft(tmp_path, "ia3", {"layers_to_transform": [1]}, cache_frozen_layers=True)
    assert ia3.bank.lower_layers.store.folder == store.folder and not ia3.bank.lower_layers.store.rebuilt
    # another seed: other random weights (and their own folder), built anew
    _, _, other = build_tiny_perpeft(tmp_path, "lora", peft_config, cache_frozen_layers=True, seed=7)
    assert other.bank.lower_layers.store.rebuilt


def test_reading_states_cuts_texts_to_the_batchs_longest(tmp_path) -> None:
    _, _, model = build_tiny_perpeft(
        tmp_path, "lora", {**LORA, "layers_to_transform": [1]}, cache_frozen_layers=True
    )
    cache = model.bank.lower_layers
    ids = torch.tensor([3, 1, 3])
    full = torch.from_numpy(cache.states["text"][ids.numpy()].copy())
    cut = cache.read_states(ids, torch.device("cpu"), text_length=5)["text"]
    assert cut.shape == (3, 5, full.shape[-1]) and cut.dtype == torch.float32
    torch.testing.assert_close(cut, full[:, :5], rtol=0, atol=0)
