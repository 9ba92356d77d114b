"""Per-user training sequences and the loader that feeds them, one user at a time.

RecBole's sequential datasets hold one row per prefix of each history (its data
augmentation). Encoding item content for every prefix would multiply the
encoder's cost by the sequence length, so these models train as the original
SASRec does: one example per user per epoch, ``MAX_ITEM_LIST_LENGTH`` items of
the training history with a target and a sampled negative at every position.

``train_window: last`` (the original SASRec's, and the paper's) always takes the
last items of each history. Where histories are much longer than the window
(ml-100k: about 100 items against 10) that leaves most of the training data
unseen, so ``train_window: random`` takes, each epoch, a window ending at a
uniformly drawn position of the history instead: the cost of an epoch is the
same, and over the epochs every interaction is used.
"""

from __future__ import annotations

from logging import getLogger

import numpy as np
import torch
from recbole.data.interaction import Interaction

from recbole_perpeft.data.negative_sampler import NegativeSampler

logger = getLogger(__name__)


class UserSequences:
    """Each training user's full history, recovered from RecBole's train split.

    Args:
        dataset (SequentialDataset): RecBole's train split (augmented rows).

    Attributes:
        histories (list[np.ndarray]): item ids in time order, indexed by
            internal user id; empty for users without training rows.
        train_users (np.ndarray): ids of users with a training history.
    """

    def __init__(self, dataset) -> None:
        feat = dataset.inter_feat
        uid_field = dataset.uid_field
        iid_field = dataset.iid_field
        list_field = getattr(dataset, "item_id_list_field", iid_field + "_list")
        uids = feat[uid_field].numpy()
        targets = feat[iid_field].numpy()
        first_items = feat[list_field][:, 0].numpy()
        self.n_users = dataset.user_num
        self.n_items = dataset.item_num
        self.histories: list[np.ndarray] = [np.zeros(0, np.int64)] * self.n_users
        order = np.argsort(uids, kind="stable")
        uids, targets, first_items = uids[order], targets[order], first_items[order]
        starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
        ends = np.r_[starts[1:], len(uids)]
        for start, end in zip(starts, ends):
            history = np.concatenate([first_items[start : start + 1], targets[start:end]])
            self.histories[uids[start]] = history.astype(np.int64)
        self.train_users = np.array(
            [uid for uid, h in enumerate(self.histories) if len(h) >= 2], dtype=np.int64
        )

    def windows(
        self, users: np.ndarray, ends: np.ndarray, max_len: int
    ) -> tuple[np.ndarray, ...]:
        """Inputs, targets and lengths of one window per user, left-aligned.

        The window of ``users[i]`` ends (its last target) at history position
        ``ends[i] - 1`` and holds up to ``max_len`` inputs before it.

        Returns:
            tuple[np.ndarray, ...]: ``inputs`` [U, max_len], ``targets``
            [U, max_len], ``lengths`` [U], for ``users`` in that order.
        """
        n = len(users)
        inputs = np.zeros((n, max_len), dtype=np.int64)
        targets = np.zeros((n, max_len), dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        for row, (uid, end) in enumerate(zip(users, ends)):
            window = self.histories[uid][max(0, end - max_len - 1) : end]
            inputs[row, : len(window) - 1] = window[:-1]
            targets[row, : len(window) - 1] = window[1:]
            lengths[row] = len(window) - 1
        return inputs, targets, lengths

    def training_examples(self, max_len: int) -> tuple[np.ndarray, ...]:
        """The last window of each user of :attr:`train_users` (see :meth:`windows`)."""
        ends = np.array([len(self.histories[uid]) for uid in self.train_users])
        return self.windows(self.train_users, ends, max_len)

    def random_windows(
        self, users: np.ndarray, max_len: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, ...]:
        """One window of each user's history ending at a uniformly drawn position,
        from the second item to the last (see :meth:`windows`)."""
        ends = [int(rng.integers(2, len(self.histories[uid]) + 1)) for uid in users]
        return self.windows(users, np.array(ends, dtype=np.int64), max_len)

    def full_sequences(self, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """The last ``max_len`` training items of each training user (for grouping).

        Returns:
            tuple[np.ndarray, np.ndarray]: ``items`` [U, max_len] and ``lengths`` [U].
        """
        n = len(self.train_users)
        items = np.zeros((n, max_len), dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        for row, uid in enumerate(self.train_users):
            seq = self.histories[uid][-max_len:]
            items[row, : len(seq)] = seq
            lengths[row] = len(seq)
        return items, lengths

    def group_pools(self, user_group: np.ndarray, n_groups: int) -> list[np.ndarray]:
        """Items that appear in the training histories of each group's users."""
        pools = []
        for group in range(n_groups):
            members = self.train_users[user_group[self.train_users] == group]
            items = [self.histories[uid] for uid in members]
            pool = np.unique(np.concatenate(items)) if items else np.zeros(0, np.int64)
            pools.append(pool[pool > 0])
        return pools


class UserSequenceLoader:
    """Batches of one group's users, with a negative at every position.

    Each epoch, each group's users are shuffled and cut into batches, and the
    batches of all groups are shuffled together. Before grouping every user is
    in group 0 and negatives are uniform over all items.

    Args:
        config (Config): RecBole config.
        dataset (SequentialDataset): RecBole's train split.
        batch_size (int): users per batch.
        shuffle (bool): shuffle users and batches each epoch.
    """

    TARGET_SEQ = "target_item_list"
    NEG_SEQ = "neg_item_list"
    GROUP_ID = "group_id"

    def __init__(self, config, dataset, batch_size: int, shuffle: bool = True) -> None:
        self.config = config
        self.dataset = dataset
        self._dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.uid_field = config["USER_ID_FIELD"]
        self.item_seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        self.item_seq_len_field = config["ITEM_LIST_LENGTH_FIELD"]
        self.max_len = config["MAX_ITEM_LIST_LENGTH"]
        self.sequences = UserSequences(dataset)
        self.inputs, self.targets, self.lengths = self.sequences.training_examples(
            self.max_len
        )
        self.users = self.sequences.train_users
        self.random_window = config["train_window"] == "random"
        self.seed = int(config["seed"])
        self.epoch = 0
        self.n_groups = 1
        self.user_group = np.zeros(self.sequences.n_users, dtype=np.int64)
        self.sampler = NegativeSampler(self.sequences.n_items, self.sequences.histories)

    def set_groups(
        self, user_group: np.ndarray, n_groups: int, group_negatives: bool
    ) -> None:
        """Route batches by group from now on.

        Args:
            user_group (np.ndarray): group of each internal user id, shape [n_users].
            n_groups (int): number of groups.
            group_negatives (bool): draw negatives from each group's pool.
        """
        self.user_group = np.asarray(user_group, dtype=np.int64)
        self.n_groups = n_groups
        pools = None
        if group_negatives:
            pools = self.sequences.group_pools(self.user_group, n_groups)
        self.sampler = NegativeSampler(
            self.sequences.n_items, self.sequences.histories, pools=pools
        )

    def _batches(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        groups = self.user_group[self.users]
        batches = []
        for group in range(self.n_groups):
            rows = np.flatnonzero(groups == group)
            if self.shuffle:
                rows = rng.permutation(rows)
            for start in range(0, len(rows), self.batch_size):
                batches.append((group, rows[start : start + self.batch_size]))
        if self.shuffle:
            order = rng.permutation(len(batches))
            batches = [batches[i] for i in order]
        return batches

    def __len__(self) -> int:
        groups = self.user_group[self.users]
        counts = np.bincount(groups, minlength=self.n_groups)
        return int(sum(-(-count // self.batch_size) for count in counts))

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        use_pools = self.sampler.pools is not None
        for group, rows in self._batches(rng):
            users = self.users[rows]
            if self.random_window:
                inputs, targets, lengths = self.sequences.random_windows(
                    users, self.max_len, rng
                )
            else:
                inputs, targets = self.inputs[rows], self.targets[rows]
                lengths = self.lengths[rows]
            negatives = self.sampler.sample(
                users, self.max_len, rng, group=group if use_pools else None
            )
            negatives[targets == 0] = 0
            yield Interaction(
                {
                    self.uid_field: torch.from_numpy(users),
                    self.item_seq_field: torch.from_numpy(inputs),
                    self.item_seq_len_field: torch.from_numpy(lengths),
                    self.TARGET_SEQ: torch.from_numpy(targets),
                    self.NEG_SEQ: torch.from_numpy(negatives),
                    self.GROUP_ID: torch.full((len(rows),), group, dtype=torch.long),
                }
            )
