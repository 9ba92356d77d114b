"""One training example per user, recovered from RecBole's leave-one-out split."""

import os

import numpy as np
import pandas as pd

from recbole_perpeft.data.user_sequences import UserSequenceLoader, UserSequences
from recbole_perpeft.quick_start import build_config, create_data


def load(run_config):
    config = build_config("PerPEFT", "ml-slice", config_dict=run_config)
    return config, create_data(config)


def raw_histories(run_config) -> dict[str, dict[str, float]]:
    """item -> timestamp of each user (ml-100k has no repeated user-item pair)."""
    path = os.path.join(run_config["data_path"], "ml-slice", "ml-slice.inter")
    inter = pd.read_csv(path, sep="\t", dtype={"user_id:token": str, "item_id:token": str})
    return {
        user: dict(zip(rows["item_id:token"], rows["timestamp:float"]))
        for user, rows in inter.groupby("user_id:token")
    }


def test_histories_are_all_but_the_last_two_items_in_time_order(run_config):
    config, (dataset, train_data, _, _) = load(run_config)
    sequences = UserSequences(train_data.dataset)
    raw = raw_histories(run_config)
    uid_tokens = dataset.field2id_token[dataset.uid_field]
    iid_tokens = dataset.field2id_token[dataset.iid_field]
    assert len(sequences.train_users) == 60
    for uid in sequences.train_users:
        times = raw[uid_tokens[uid]]
        got = [str(iid_tokens[i]) for i in sequences.histories[uid]]
        assert len(got) == len(times) - 2 == len(set(got))
        assert set(got) <= set(times)
        # RecBole keeps float fields as float32: timestamps near 8.8e8 s are
        # ordered at a resolution of 64 s, ties in file order.
        stamps = [float(np.float32(times[item])) for item in got]
        assert stamps == sorted(stamps)
        # the two held-out items are the user's latest
        held_out = set(times) - set(got)
        assert min(float(np.float32(times[i])) for i in held_out) >= max(stamps)


def test_training_examples_shift_by_one_and_keep_the_last_items(run_config):
    config, (_, train_data, _, _) = load(run_config)
    sequences = UserSequences(train_data.dataset)
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    inputs, targets, lengths = sequences.training_examples(max_len)
    for row, uid in enumerate(sequences.train_users):
        history = sequences.histories[uid]
        n = lengths[row]
        assert n == min(len(history) - 1, max_len)
        assert np.array_equal(inputs[row, :n], history[-n - 1 : -1])
        assert np.array_equal(targets[row, :n], history[-n:])
        assert not inputs[row, n:].any() and not targets[row, n:].any()


def test_loader_batches_hold_one_group_and_cover_every_user_once(run_config):
    config, (_, train_data, _, _) = load(run_config)
    loader = UserSequenceLoader(config, train_data.dataset, batch_size=7)
    user_group = np.zeros(loader.sequences.n_users, dtype=np.int64)
    user_group[loader.users[::3]] = 1
    loader.set_groups(user_group, 2, group_negatives=True)
    seen = []
    batches = list(loader)
    assert len(batches) == len(loader)
    for batch in batches:
        groups = batch[UserSequenceLoader.GROUP_ID]
        assert (groups == groups[0]).all()
        users = batch[config["USER_ID_FIELD"]].numpy()
        assert (user_group[users] == int(groups[0])).all()
        negatives = batch[UserSequenceLoader.NEG_SEQ].numpy()
        targets = batch[UserSequenceLoader.TARGET_SEQ].numpy()
        pool = set(loader.sampler.pools[int(groups[0])].tolist())
        for user, neg_row, target_row in zip(users, negatives, targets):
            real = neg_row[target_row != 0]
            assert set(real.tolist()) <= pool
            assert not set(real.tolist()) & set(loader.sequences.histories[user].tolist())
            assert not neg_row[target_row == 0].any()
        seen.extend(users.tolist())
    assert sorted(seen) == sorted(loader.users.tolist())


def test_batch_order_changes_between_epochs_but_is_seeded(run_config):
    config, (_, train_data, _, _) = load(run_config)
    first = [b[config["USER_ID_FIELD"]].tolist() for b in UserSequenceLoader(config, train_data.dataset, 8)]
    loader = UserSequenceLoader(config, train_data.dataset, 8)
    again = [b[config["USER_ID_FIELD"]].tolist() for b in loader]
    second_epoch = [b[config["USER_ID_FIELD"]].tolist() for b in loader]
    assert first == again
    assert first != second_epoch
