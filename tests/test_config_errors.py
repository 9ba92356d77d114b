"""Bad input is refused before any training, naming the key and what is allowed."""

import pytest

from recbole_perpeft import trainer as trainer_module
from recbole_perpeft.quick_start import run_recbole_perpeft

CASES = [
    # (model, config overrides, expected message)
    ("PerPEFTT", {}, r"`model`: expected one of \['FrozenMM', 'GlobalPEFT', 'PerPEFT'\] or a RecBole model .*got 'PerPEFTT'"),
    ("PerPEFT", {"n_groups": 0}, r"`n_groups`: expected an integer >= 1, got 0"),
    ("PerPEFT", {"n_groups": 61}, r"`n_groups`: expected 1 <= n_groups <= 60 \(the training users of ml-slice\), got 61"),
    ("PerPEFT", {"text_fields": ["title"]}, r"`text_fields`: \['title'\] not in .*ml-slice.item; expected a subset of \['movie_title', 'release_year', 'class'\]"),
    ("GlobalPEFT", {"encoder_path": "/no/such/model"}, r"`encoder_path`: '/no/such/model' does not exist"),
    ("PerPEFT", {"grouping": "knn"}, r"`grouping`: expected one of \['kmeans', 'random'\], got 'knn'"),
    ("PerPEFT", {"encoder": "clip"}, r"`encoder`: expected one of \['hf_text', 'hf_clip', 'open_clip'\], got 'clip'"),
    ("PerPEFT", {"modalities": ["text", "audio"]}, r"`modalities`: expected a non-empty list drawn from \['image', 'text'\]"),
    ("GlobalPEFT", {"peft_type": "lorra"}, r"`peft_type`: expected 'iisan' or one of peft's types \[.*'lora'.*\], got 'lorra'"),
    ("GlobalPEFT", {"peft_config": {"target_modules": ["q_prj"]}}, r"`peft_config.target_modules`: \['q_prj'\] has no counterpart"),
    ("FrozenMM", {"loss_type": "CE"}, r"`loss_type`: expected one of \['BCE'\], got 'CE'"),
    ("PerPEFT", {"group_negatives": "yes"}, r"`group_negatives`: expected True or False, got 'yes'"),
    ("PerPEFT", {"text_fields": []}, r"`text_fields`: the modality 'text' needs at least one column of the .item file, got \[\]"),
    ("GlobalPEFT", {"peft_type": "prefix_tuning"}, r"`peft_type`: expected 'iisan' or one of peft's types \[.*'lora'.*\], got 'prefix_tuning'"),
    ("GlobalPEFT", {"train_window": "latest"}, r"`train_window`: expected one of \['last', 'random'\], got 'latest'"),
]


@pytest.mark.parametrize("model, overrides, message", CASES, ids=[c[2][:30] for c in CASES])
def test_bad_input_is_refused_before_training(run_config, monkeypatch, model, overrides, message):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(trainer_module.PerPEFTTrainer, "fit", no_training)
    with pytest.raises(ValueError, match=message):
        run_recbole_perpeft(model, "ml-slice", config_dict={**run_config, **overrides})
