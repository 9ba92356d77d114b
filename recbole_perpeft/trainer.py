"""The trainer of FrozenMM, GlobalPEFT and PerPEFT.

It feeds the models one training example per user
(:class:`~recbole_perpeft.data.user_sequences.UserSequenceLoader`), runs
PerPEFT's three stages, and reports metrics per user group. Everything else
(epoch loop, early stopping, checkpoints, evaluator) is RecBole's ``Trainer``.
"""

from __future__ import annotations

import time
from logging import getLogger

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_perpeft.data.user_sequences import UserSequenceLoader
from recbole_perpeft.group_evaluation import format_group_table, group_results
from recbole_perpeft.grouping import group_users
from recbole_perpeft.model.perpeft import PerPEFT

logger = getLogger(__name__)


class PerPEFTTrainer(Trainer):
    """RecBole's trainer with per-user batches, PerPEFT's stages and group reports."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        self.group_table: list = []
        # wall seconds of every training and validation epoch, by stage
        # ("train" / "stage1" / "stage3"), for benchmarks
        self.timings: dict[str, dict[str, list[float]]] = {}
        self._stage = "train"

    def _timed(self, phase: str, method, *args, **kwargs):
        start = time.perf_counter()
        result = method(*args, **kwargs)
        stage = self.timings.setdefault(self._stage, {"train": [], "valid": []})
        stage[phase].append(time.perf_counter() - start)
        return result

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        return self._timed(
            "train", super()._train_epoch, train_data, epoch_idx, loss_func, show_progress
        )

    def _valid_epoch(self, valid_data, show_progress=False):
        return self._timed("valid", super()._valid_epoch, valid_data, show_progress)

    def user_loader(self, train_data) -> UserSequenceLoader:
        """The per-user training loader of ``train_data`` (itself if it is one)."""
        if isinstance(train_data, UserSequenceLoader):
            return train_data
        return UserSequenceLoader(
            self.config, train_data.dataset, batch_size=self.config["train_batch_size"]
        )

    def _log_stage(self, title: str, epochs: int, loader: UserSequenceLoader) -> None:
        model = self.model
        sizes = np.bincount(loader.user_group[loader.users], minlength=loader.n_groups)
        logger.info(
            set_color(title, "green")
            + f": {epochs} epochs, {len(loader)} batches of up to {loader.batch_size} "
            f"users, group sizes {sizes.tolist()}"
        )
        peft, projector = model.module_parameter_counts()
        per_module = peft + projector
        n_modules = len(model.projectors)
        logger.info(
            f"trainable per group module: {per_module:,} ({peft:,} PEFT + {projector:,} "
            f"projector), {model.trainable_percent():.2f}% of the encoder's "
            f"{model.foundation_parameters:,}; all {n_modules} modules: "
            f"{model.trainable_percent(n_modules):.2f}%"
        )

    def _run_stage(self, loader, valid_data, n_epochs, first_epoch, verbose, saved, show_progress, callback_fn):
        self.start_epoch = first_epoch
        self.epochs = first_epoch + n_epochs
        self.eval_step = max(1, min(self.config["eval_step"], n_epochs or 1))
        if n_epochs == 0:
            return self.best_valid_score, self.best_valid_result
        return super().fit(loader, valid_data, verbose, saved, show_progress, callback_fn)

    def _reset_best(self) -> None:
        self.best_valid_score = -np.inf if self.valid_metric_bigger else np.inf
        self.best_valid_result = None
        self.cur_step = 0

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Train; for PerPEFT, stage 1 (global), stage 2 (grouping), stage 3 (per group).

        Returns:
            (float, dict): best valid score and result of the last stage.
        """
        loader = self.user_loader(train_data)
        model = self.model
        if not isinstance(model, PerPEFT):
            self._stage = "train"
            self._log_stage(f"{type(model).__name__} training", self.config["epochs"], loader)
            return self._run_stage(loader, valid_data, self.config["epochs"], 0, verbose, saved, show_progress, callback_fn)

        global_epochs = self.config["global_epochs"]
        self._stage = "stage1"
        self._log_stage("Stage 1/3: global PEFT", global_epochs, loader)
        best_score, best_result = self._run_stage(
            loader, valid_data, global_epochs, 0, verbose, saved, show_progress, callback_fn
        )
        if global_epochs and best_result is not None:
            logger.info(set_color("stage 1 best valid", "yellow") + f": {best_score:.6f}")
            if saved:
                self._load_checkpoint(self.saved_model_file)

        self._group(loader)
        self._stage = "stage3"
        self._log_stage("Stage 3/3: per-group PEFT", self.config["epochs"], loader)
        self.optimizer = self._build_optimizer()
        self._reset_best()
        return self._run_stage(
            loader, valid_data, self.config["epochs"], global_epochs, verbose, saved, show_progress, callback_fn
        )

    def _group(self, loader: UserSequenceLoader) -> None:
        model = self.model
        n_groups = len(model.projectors)
        items, lengths = loader.sequences.full_sequences(loader.max_len)
        reps = model.user_representations(torch.from_numpy(items), torch.from_numpy(lengths))
        labels, _ = group_users(
            reps.cpu().numpy(), n_groups, self.config["grouping"], int(self.config["seed"])
        )
        user_group = np.zeros(loader.sequences.n_users, dtype=np.int64)
        user_group[loader.users] = labels
        untrained = np.setdiff1d(np.arange(1, loader.sequences.n_users), loader.users)
        if len(untrained):
            logger.warning(
                f"{len(untrained)} users have no training sequence; they are scored "
                "with group 0's module."
            )
        model.user_group.copy_(torch.from_numpy(user_group))
        model.copy_global_to_groups()
        group_negatives = bool(self.config["group_negatives"])
        loader.set_groups(user_group, n_groups, group_negatives)
        sizes = np.bincount(labels, minlength=n_groups).tolist()
        negatives = "group pools" if group_negatives else "all items"
        logger.info(
            set_color("Stage 2/3: grouping", "green")
            + f": {self.config['grouping']} over {len(labels)} users into {n_groups} "
            f"groups of sizes {sizes}; negatives from {negatives}"
        )

    def _load_checkpoint(self, path: str) -> None:
        checkpoint = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        logger.info(f"Loading stage-1 best model from {path}")

    def evaluate_groups(self, eval_data, pools: list[np.ndarray] | None, k: int = 20) -> list:
        """Per-group NDCG@k and Hit@k of the current model, logged as a table.

        Args:
            eval_data (FullSortEvalDataLoader): the users to evaluate.
            pools (list[np.ndarray] | None): each group's negative pool (for its
                size), None where negatives are drawn from all items.
            k (int): the cut-off.
        """
        self.group_table = group_results(self.model, eval_data, pools, k)
        logger.info(set_color("test result per group", "yellow") + ":\n" + format_group_table(self.group_table, k))
        return self.group_table
