"""Every model trains, saves its best checkpoint, reloads it and tests, on a slice of ml-100k."""

import logging
import math
import os
import subprocess
import sys

import pytest

from recbole_perpeft.quick_start import run_recbole_perpeft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_KEYS = {"best_valid_score", "valid_score_bigger", "best_valid_result", "test_result"}
METRICS = {f"{m}@{k}" for m in ("recall", "ndcg", "hit") for k in (10, 20, 30)}


def check_result(result: dict) -> None:
    assert set(result) == RESULT_KEYS
    assert set(result["test_result"]) == METRICS
    for value in result["test_result"].values():
        assert 0.0 <= value <= 1.0 and math.isfinite(value)
    assert result["best_valid_score"] == result["best_valid_result"]["ndcg@20"]


@pytest.mark.parametrize(
    "model, overrides",
    [
        ("FrozenMM", {}),
        ("GlobalPEFT", {"peft_type": "ia3"}),
        ("PerPEFT", {"grouping": "random", "group_negatives": False}),
        ("SASRec", {"epochs": 2}),
    ],
)
def test_model_runs_end_to_end(run_config, tmp_path, model, overrides):
    result = run_recbole_perpeft(model, "ml-slice", config_dict={**run_config, **overrides})
    check_result(result)
    assert len(list((tmp_path / "saved").glob(f"{model}-*.pth"))) == 1


def test_perpeft_logs_stages_and_the_group_table(run_config, caplog):
    # under pytest RecBole's handlers are not installed; caplog sees the records
    caplog.set_level(logging.INFO)
    result = run_recbole_perpeft("PerPEFT", "ml-slice", config_dict=run_config)
    check_result(result)
    text = caplog.text
    for line in ("Stage 1/3: global PEFT", "Stage 2/3: grouping: kmeans over 60 users", "Stage 3/3: per-group PEFT", "test result per group", "group   users  pool items   NDCG@20    Hit@20"):
        assert line in text


def test_command_line_takes_model_dataset_and_key_value_overrides(ml_slice_root, tmp_path):
    command = [
        sys.executable,
        os.path.join(ROOT, "run_recbole_perpeft.py"),
        "--model=SASRec",
        "--dataset=ml-slice",
        f"--data_path={ml_slice_root}",
        "--epochs=1",
        "--show_progress=False",
        f"--checkpoint_dir={tmp_path / 'saved'}",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "test result" in output and "ndcg@20" in output
    assert "MAX_ITEM_LIST_LENGTH = 10" in output


def test_trainer_times_every_epoch_of_each_stage(run_config):
    from recbole_perpeft.quick_start import build_config, train_and_test

    config = build_config(
        "PerPEFT", "ml-slice", config_dict={**run_config, "global_epochs": 2, "epochs": 1}
    )
    result, trainer = train_and_test(config, saved=False)
    check_result(result)
    assert list(trainer.timings) == ["stage1", "stage3"]
    assert [len(trainer.timings["stage1"][p]) for p in ("train", "valid")] == [2, 2]
    assert [len(trainer.timings["stage3"][p]) for p in ("train", "valid")] == [1, 1]
    assert all(t > 0 for stage in trainer.timings.values() for t in stage["train"])
    # LoRA r=4 on query and value of 2 layers of width 32: 2 * 2 * (4*32 + 32*4);
    # projector 32 -> 64 -> 32 with its two LayerNorms
    peft, projector = trainer.model.module_parameter_counts()
    assert peft == 2 * 2 * (4 * 32 + 32 * 4)
    assert projector == (32 * 64 + 64) + 2 * 64 + (64 * 32 + 32) + 2 * 32
