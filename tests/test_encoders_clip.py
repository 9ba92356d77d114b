"""The CLIP item encoders (open_clip and transformers) on RANDOMLY INITIALISED tiny
configs: nothing is downloaded, the numbers mean nothing, only the plumbing is
checked (shapes, normalisation, padding, modality subsets, PEFT target names)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbole_perpeft.data.content import ItemContent
from recbole_perpeft.encoders import hf_clip as hf_clip_encoder
from recbole_perpeft.encoders import open_clip as open_clip_encoder
from recbole_perpeft.encoders.hf_clip import HFCLIPEncoder, packaged_clip_tokenizer
from recbole_perpeft.encoders.open_clip import OpenCLIPEncoder, check_open_clip_config
from recbole_perpeft.tuners.peft_library import PeftLibraryBank, build_peft_config

# Randomly initialised tiny architectures (not pretrained models).
TINY_RANDOM_OPEN_CLIP = open_clip_encoder.TINY_RANDOM_INIT
TINY_RANDOM_HF_CLIP = hf_clip_encoder.TINY_RANDOM_INIT
TITLES = [
    "",
    "eco red cotton lamp",
    "vintage bag",
    "deluxe blue wooden chair with a very long extra description of the chair",
    "kids mug",
    "sport green steel bottle",
]
KINDS = ("open_clip", "hf_clip")


def make_encoder(kind: str, modalities=("image", "text")):
    torch.manual_seed(0)
    if kind == "open_clip":
        encoder = OpenCLIPEncoder(
            "ViT-B-32", None, list(modalities), random_init=TINY_RANDOM_OPEN_CLIP
        )
    else:
        encoder = HFCLIPEncoder(None, list(modalities), random_init=TINY_RANDOM_HF_CLIP)
    return encoder.eval()


def make_content(encoder) -> ItemContent:
    """Content of len(TITLES) items (item 0 the padding item), random images."""
    input_ids = lengths = None
    if "text" in encoder.modalities:
        input_ids, lengths = encoder.tokenize(TITLES, 32)
    has_text = torch.tensor([bool(t) for t in TITLES])
    content = ItemContent(input_ids, lengths, has_text)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (len(TITLES), 3, 32, 32), generator=generator)

    class Images:  # the slice of ImageStore that ItemContent.gather uses
        def gather(self, ids):
            return pixels[ids].to(torch.uint8)

    if "image" in encoder.modalities:
        content.image_store = Images()
    return content


@pytest.fixture(scope="module", params=KINDS)
def encoder(request):
    return make_encoder(request.param)


def test_shapes_and_l2_normalised(encoder):
    assert encoder.image_size == 32
    assert encoder.modality_dims == {"image": 32, "text": 32}
    assert encoder.output_dim == 64
    batch = make_content(encoder).gather(torch.arange(len(TITLES)))
    with torch.no_grad():
        out = encoder(batch)
    assert set(out) == {"image", "text"}
    for value in out.values():
        assert value.shape == (len(TITLES), 32)
        torch.testing.assert_close(value.norm(dim=-1), torch.ones(len(TITLES)))


def test_per_batch_padding_matches_full_padding(encoder):
    content = make_content(encoder)
    with torch.no_grad():
        full_ids = content.input_ids
        full_mask = (
            torch.arange(full_ids.size(1))[None] < content.text_lengths[:, None]
        ).long()
        full = encoder.encode_text(full_ids, full_mask)
        short = torch.tensor([1, 2, 4])  # shorter than the longest title
        batch = content.gather(short)
        assert batch.input_ids.size(1) < full_ids.size(1)
        cut = encoder.encode_text(batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(cut, full[short], atol=1e-5, rtol=0)


def test_open_clip_text_tower_runs_on_the_batch_length_only():
    encoder = make_encoder("open_clip")
    batch = make_content(encoder).gather(torch.tensor([1, 2, 4]))
    seen = []
    encoder.backbone.transformer.register_forward_pre_hook(
        lambda _module, args: seen.append(args[0].shape[1])
    )
    with torch.no_grad():
        cut = encoder.encode_text(batch.input_ids, batch.attention_mask)
        seen_cut = list(seen)
        # open_clip's own encode_text on ids padded to the full context length
        full = encoder.backbone.encode_text(encoder._full_context(batch.input_ids))
    assert seen_cut == [batch.input_ids.size(1)] and seen_cut[0] < encoder.context_length
    assert seen[-1] == encoder.context_length
    torch.testing.assert_close(cut, F.normalize(full, dim=-1), atol=1e-5, rtol=0)


def test_layer_states_pool_where_the_model_pools(encoder):
    batch = make_content(encoder).gather(torch.arange(1, len(TITLES)))
    with torch.no_grad():
        states = encoder.layer_states(batch, [0, 1, 2])
        assert states["image"].shape == (len(TITLES) - 1, 3, 32)
        assert states["text"].shape == (len(TITLES) - 1, 3, 32)
        # the last layer's pooled text state, through the final norm and the
        # projection, is the model's own text feature: pooling is at the EOT token
        last = states["text"][:, -1]
        model = encoder.backbone
        if isinstance(encoder, OpenCLIPEncoder):
            projected = model.ln_final(last) @ model.text_projection
        else:
            projected = model.text_projection(model.text_model.final_layer_norm(last))
        expected = encoder.encode_text(batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(
        torch.nn.functional.normalize(projected, dim=-1), expected, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("modalities", [["image"], ["text"], ["text", "image"]])
def test_modality_subsets(kind, modalities):
    encoder = make_encoder(kind, modalities)
    used = [m for m in ("image", "text") if m in modalities]
    assert encoder.modalities == used
    assert encoder.output_dim == 32 * len(used)
    batch = make_content(encoder).gather(torch.arange(1, 4))
    with torch.no_grad():
        out = encoder(batch)
    assert list(out) == used
    # adapters go only into the towers of the used modalities
    config = build_peft_config("lora", {"r": 2, "target_modules": ["q_proj"]}, encoder)
    wrapped = PeftLibraryBank(encoder, config, 1).wrapped_modules
    image_tower = "visual." if kind == "open_clip" else "vision_model."
    assert any(n.startswith(image_tower) for n in wrapped) == ("image" in used)
    assert any(not n.startswith(image_tower) for n in wrapped) == ("text" in used)


def _blocks(prefixes, middle, suffixes):
    return sorted(
        f"{p}.{i}.{middle}{s}" for p in prefixes for i in (0, 1) for s in suffixes
    )


def test_open_clip_lora_and_ia3_wrapped_modules():
    towers = ["visual.transformer.resblocks", "transformer.resblocks"]
    encoder = make_encoder("open_clip")
    lora = build_peft_config(
        "lora", {"r": 2, "target_modules": ["q_proj", "v_proj"]}, encoder
    )
    wrapped = PeftLibraryBank(encoder, lora, 2).wrapped_modules
    # peft wraps the fused nn.MultiheadAttention and, inside it, its out_proj
    assert sorted(wrapped) == _blocks(towers, "attn", ["", ".base_layer.out_proj"])

    encoder = make_encoder("open_clip")
    ia3 = build_peft_config(
        "ia3",
        {"target_modules": ["fc1", "fc2"], "feedforward_modules": ["fc1"]},
        encoder,
    )
    wrapped = PeftLibraryBank(encoder, ia3, 2).wrapped_modules
    assert sorted(wrapped) == _blocks(towers, "mlp.", ["c_fc", "c_proj"])


def test_hf_clip_lora_and_ia3_wrapped_modules():
    towers = ["vision_model.encoder.layers", "text_model.encoder.layers"]
    encoder = make_encoder("hf_clip")
    lora = build_peft_config(
        "lora", {"r": 2, "target_modules": ["q_proj", "v_proj"]}, encoder
    )
    wrapped = PeftLibraryBank(encoder, lora, 2).wrapped_modules
    assert sorted(wrapped) == _blocks(towers, "self_attn.", ["q_proj", "v_proj"])

    encoder = make_encoder("hf_clip")
    ia3 = build_peft_config(
        "ia3",
        {"target_modules": ["k_proj", "v_proj", "fc1"], "feedforward_modules": ["fc1"]},
        encoder,
    )
    wrapped = PeftLibraryBank(encoder, ia3, 2).wrapped_modules
    expected = _blocks(towers, "self_attn.", ["k_proj", "v_proj"])
    assert sorted(wrapped) == sorted(expected + _blocks(towers, "mlp.", ["fc1"]))


def _set_lora_b(layers, value: float) -> None:
    with torch.no_grad():
        for layer in layers:
            for weight in layer.lora_B.values():
                weight.weight.fill_(value)


def test_open_clip_lora_on_fused_attention_changes_the_output():
    from peft.tuners.lora.layer import MultiheadAttention as LoraMHA

    encoder = make_encoder("open_clip")
    batch = make_content(encoder).gather(torch.arange(1, len(TITLES)))
    with torch.no_grad():
        before = encoder(batch)
    config = build_peft_config("lora", {"r": 2, "target_modules": ["q_proj"]}, encoder)
    PeftLibraryBank(encoder, config, 1)
    fused = [m for m in encoder.backbone.modules() if isinstance(m, LoraMHA)]
    assert len(fused) == 4
    with torch.no_grad():
        unchanged = encoder(batch)  # LoRA B starts at zero
    _set_lora_b(fused, 0.5)  # the in_proj (q, k, v) LoRA only, not out_proj's
    with torch.no_grad():
        after = encoder(batch)
    for modality in ("image", "text"):
        torch.testing.assert_close(unchanged[modality], before[modality])
        assert (after[modality] - before[modality]).abs().max() > 1e-3


def test_open_clip_lora_on_attn_out_proj_alone_is_silently_ignored():
    """Why the mapping never targets ``attn.out_proj``: MultiheadAttention reads
    its weight directly, so a LoRA wrapped around it has no effect."""
    encoder = make_encoder("open_clip")
    batch = make_content(encoder).gather(torch.arange(1, len(TITLES)))
    with torch.no_grad():
        before = encoder(batch)
    config = build_peft_config(
        "lora", {"r": 2, "target_modules": r".*resblocks\.\d+\.attn\.out_proj"}, encoder
    )
    bank = PeftLibraryBank(encoder, config, 1)
    _set_lora_b([module for _, module in bank._tuner_layers()], 0.5)
    with torch.no_grad():
        after = encoder(batch)
    for modality in ("image", "text"):
        torch.testing.assert_close(after[modality], before[modality])


def test_open_clip_ia3_on_fused_attention_is_refused():
    encoder = make_encoder("open_clip", ["text"])
    with pytest.raises(ValueError, match=r"`peft_config.target_modules`.*only LoRA"):
        build_peft_config(
            "ia3", {"target_modules": ["q_proj"], "feedforward_modules": []}, encoder
        )


def test_open_clip_config_errors():
    with pytest.raises(ValueError) as error:
        check_open_clip_config("ViT-X", None, None, {})
    assert str(error.value) == (
        "`open_clip_model`: expected one of open_clip's architectures "
        "(open_clip.list_models()), got 'ViT-X'."
    )
    with pytest.raises(ValueError, match=r"`open_clip_pretrained`: expected one of"):
        check_open_clip_config("ViT-B-32", "no-such-tag", None, None)
    with pytest.raises(ValueError, match=r"exactly one weight source"):
        check_open_clip_config("ViT-B-32", "openai", None, {})
    with pytest.raises(ValueError, match=r"exactly one weight source"):
        check_open_clip_config("ViT-B-32", None, None, None)
    with pytest.raises(ValueError, match=r"`encoder_path`: '/no/such.pt' does not"):
        check_open_clip_config("ViT-B-32", None, "/no/such.pt", None)


def test_check_config_validates_encoder_keys_first():
    from recbole_perpeft.config_checks import check_config

    config = {"encoder": "open_clip", "open_clip_model": "ViT-X"}
    with pytest.raises(ValueError, match=r"^`open_clip_model`: expected one of"):
        check_config(config)


def test_packaged_tokenizer_matches_open_clip_tokenizer():
    import open_clip

    hf_ids = packaged_clip_tokenizer()(TITLES, padding="max_length", max_length=32)
    oc_ids = open_clip.get_tokenizer("ViT-B-32")(TITLES, context_length=32)
    for text_ids, reference in zip(hf_ids["input_ids"], oc_ids.tolist()):
        n = reference.index(49407) + 1
        assert text_ids[:n] == reference[:n]


def test_hf_clip_from_a_local_folder(tmp_path):
    from transformers import CLIPImageProcessor

    encoder = make_encoder("hf_clip")
    encoder.backbone.save_pretrained(tmp_path)
    encoder.tokenizer.save_pretrained(tmp_path)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    CLIPImageProcessor(image_mean=mean, image_std=std).save_pretrained(tmp_path)
    loaded = HFCLIPEncoder(str(tmp_path), ["image", "text"]).eval()
    torch.testing.assert_close(loaded.pixel_mean.flatten(), torch.tensor(mean))
    batch = make_content(encoder).gather(torch.arange(1, 4))
    with torch.no_grad():
        expected = encoder.encode_text(batch.input_ids, batch.attention_mask)
        got = loaded.encode_text(batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(got, expected)
