"""Run a model end to end: config, data, training, test, per-group table.

:func:`run_recbole_perpeft` takes the arguments of RecBole's ``run_recbole`` and
returns the same dict. It runs our models (FrozenMM, GlobalPEFT, PerPEFT) and
every RecBole built-in, on the same data, split and metrics.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from logging import getLogger

from recbole_perpeft import compat

compat.apply()

import torch  # noqa: E402
from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import get_environment, init_logger, init_seed, set_color  # noqa: E402

from recbole_perpeft.config_checks import check_config  # noqa: E402
from recbole_perpeft.utils import config_files, get_model, get_trainer, is_our_model  # noqa: E402

DEFAULT_MODEL = "PerPEFT"
DEFAULT_DATASET = "ml-100k"


def build_config(
    model: str, dataset: str, config_file_list: list[str] | None = None, config_dict: dict | None = None
) -> Config:
    """RecBole's Config with our defaults below the user's files and dict.

    Raises:
        ValueError: for an unknown model or a key outside its allowed values.
    """
    model_class = get_model(model)
    files = config_files(model, dataset) + list(config_file_list or [])
    config_dict = dict(config_dict or {})
    config = Config(model=model_class, dataset=dataset, config_file_list=files, config_dict=config_dict)
    if not is_our_model(model) and config["loss_type"] == "CE":
        negatives = config["train_neg_sample_args"] or {}
        if negatives.get("distribution", "none") != "none" and "train_neg_sample_args" not in config_dict:
            # RecBole's CE models train without sampled negatives.
            config_dict["train_neg_sample_args"] = None
            config = Config(model=model_class, dataset=dataset, config_file_list=files, config_dict=config_dict)
    if is_our_model(model):
        check_config(config)
    return config


def create_data(config):
    """The dataset and RecBole's train/valid/test loaders for ``config``."""
    if is_our_model(config["model"]):
        from recbole_perpeft.data.dataset import MultimodalSequentialDataset

        dataset = MultimodalSequentialDataset(config)
    else:
        dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data


def check_groups(config, train_data) -> None:
    """``n_groups`` must not exceed the number of users with a training sequence."""
    if config["model"] != "PerPEFT":
        return
    from recbole_perpeft.data.user_sequences import UserSequences

    n_train_users = len(UserSequences(train_data.dataset).train_users)
    n_groups = config["n_groups"]
    if n_groups > n_train_users:
        raise ValueError(
            f"`n_groups`: expected 1 <= n_groups <= {n_train_users} (the training "
            f"users of {config['dataset']}), got {n_groups}."
        )


def group_pools(config, train_data, model):
    """Each group's negative pool, as the trainer builds it; None for uniform negatives."""
    if config["model"] != "PerPEFT" or not config["group_negatives"]:
        return None
    from recbole_perpeft.data.user_sequences import UserSequences

    sequences = UserSequences(train_data.dataset)
    return sequences.group_pools(model.user_group.cpu().numpy(), len(model.projectors))


def run_recbole_perpeft(
    model: str | None = None,
    dataset: str | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    saved: bool = True,
) -> dict:
    """Train and test ``model`` on ``dataset``, as RecBole's ``run_recbole`` does.

    Args:
        model (str | None): one of ours (PerPEFT, GlobalPEFT, FrozenMM) or a RecBole
            built-in (SASRec, GRU4Rec, ...). Defaults to PerPEFT.
        dataset (str | None): a dataset name; defaults to RecBole's bundled ml-100k.
        config_file_list (list[str] | None): YAML files, applied over our defaults.
        config_dict (dict | None): keys applied over everything else.
        saved (bool): save the best checkpoint and test it.

    Returns:
        dict: ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``
        and ``test_result``, as ``recbole.quick_start.run_recbole`` returns.
    """
    model = model or DEFAULT_MODEL
    dataset = dataset or DEFAULT_DATASET
    config = build_config(model, dataset, config_file_list, config_dict)
    result, _ = train_and_test(config, saved)
    return result


@dataclass
class PreparedRun:
    """What :func:`prepare_run` builds: the data, the model and its trainer."""

    dataset: object
    train_data: object
    valid_data: object
    test_data: object
    model: object
    trainer: object


def prepare_run(config: Config) -> PreparedRun:
    """Seed, log, load the data, build the model and its trainer, as RecBole's
    ``run_recbole`` does before training; benchmarks that time the pieces call it."""
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset, train_data, valid_data, test_data = create_data(config)
    logger.info(dataset)
    check_groups(config, train_data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data.dataset).to(config["device"])
    logger.info(model)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return PreparedRun(dataset, train_data, valid_data, test_data, model, trainer)


def train_and_test(config: Config, saved: bool = True) -> tuple[dict, object]:
    """Train and test the model of a built ``config``; the body of
    :func:`run_recbole_perpeft`, which benchmarks call to read the trainer too.

    Returns:
        tuple[dict, PerPEFTTrainer | Trainer]: the result dict of
        :func:`run_recbole_perpeft` and the trainer (its model and, for our
        models, ``timings`` of every epoch).
    """
    run = prepare_run(config)
    train_data, valid_data, test_data = run.train_data, run.valid_data, run.test_data
    recommender, trainer = run.model, run.trainer
    logger = getLogger()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    if is_our_model(config["model"]):
        trainer.evaluate_groups(test_data, group_pools(config, train_data, recommender))

    logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }
    return result, trainer


def evaluate_checkpoint(model_file: str, config_dict: dict | None = None) -> tuple[dict, object]:
    """Rebuild the data and model a checkpoint was trained with, and test it.

    Args:
        model_file (str): a checkpoint saved by :func:`run_recbole_perpeft`.
        config_dict (dict | None): keys to override (e.g. ``eval_batch_size``).

    Returns:
        tuple[dict, PerPEFTTrainer | Trainer]: the test result and the trainer.
    """
    checkpoint = torch.load(model_file, map_location="cpu", weights_only=False)
    config = checkpoint["config"]
    for key, value in (config_dict or {}).items():
        config[key] = value
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    data, train_data, valid_data, test_data = create_data(config)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    recommender = get_model(config["model"])(config, train_data.dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, recommender)
    test_result = trainer.evaluate(test_data, load_best_model=True, model_file=model_file)
    if is_our_model(config["model"]):
        trainer.evaluate_groups(test_data, group_pools(config, train_data, recommender))
    return test_result, trainer
