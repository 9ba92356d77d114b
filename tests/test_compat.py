"""The fixes that let RecBole 1.2.1 run on numpy 2, torch >= 2.6 and new setuptools."""

import numpy as np
import torch

from recbole_perpeft import compat


def test_numpy_aliases_are_the_types_they_stood_for():
    compat.apply()
    # float/int as numpy 1 had them (another package may already have set the
    # numpy scalar types, which behave the same)
    assert np.float in (float, np.float64) and np.int in (int, np.int64)
    assert np.float_ is np.float64 and np.bool8 is np.bool_
    # the aliases keep RecBole's NDCG, which builds arrays with np.float, working
    from recbole.evaluator.metrics import NDCG

    pos_index = np.array([[False, True, False]])
    ndcg = NDCG.metric_info(None, pos_index, np.array([1]))
    assert np.allclose(ndcg[0], [0.0, 1 / np.log2(3), 1 / np.log2(3)])


def test_recbole_trainer_reloads_a_checkpoint_holding_its_config(tmp_path):
    import recbole.trainer.trainer as recbole_trainer
    from recbole.config import Config

    compat.apply()
    config = Config(
        model="Pop",
        dataset="ml-100k",
        config_dict={"state": "ERROR", "train_neg_sample_args": None},
    )
    path = tmp_path / "checkpoint.pth"
    torch.save({"config": config, "state_dict": {"w": torch.ones(2)}}, path)
    # torch's own default refuses the pickled Config since torch 2.6 ...
    try:
        torch.load(path)
        refused = False
    except Exception:
        refused = True
    assert refused == (torch.__version__ >= "2.6")
    # ... while the torch that RecBole's trainer sees loads it
    loaded = recbole_trainer.torch.load(path)
    assert loaded["config"]["model"] == "Pop"
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    # and the global torch.load keeps its safe default
    assert torch.load is not recbole_trainer.torch.load


def test_recbole_quick_start_imports_with_ray():
    compat.apply()
    from recbole.quick_start import run_recbole

    assert callable(run_recbole)


def test_apply_is_idempotent():
    compat.apply()
    import recbole.trainer.trainer as recbole_trainer

    first = recbole_trainer.torch
    compat.apply()
    compat.patch_recbole_checkpoint_loading()
    assert recbole_trainer.torch is first
