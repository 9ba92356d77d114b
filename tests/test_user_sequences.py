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


def test_random_windows_are_shifted_slices_that_cover_each_history(run_config):
    config, (_, train_data, _, _) = load(run_config)
    sequences = UserSequences(train_data.dataset)
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    # the five shortest histories, so that 400 draws see every possible end
    by_length = sorted(sequences.train_users, key=lambda u: len(sequences.histories[u]))
    users = np.array(by_length[:5])
    assert max(len(sequences.histories[u]) for u in users) <= 40
    rng = np.random.default_rng(0)
    ends_seen = {uid: set() for uid in users}
    for _ in range(400):
        inputs, targets, lengths = sequences.random_windows(users, max_len, rng)
        for row, uid in enumerate(users):
            history = sequences.histories[uid].tolist()
            n = lengths[row]
            assert 1 <= n <= max_len
            assert not inputs[row, n:].any() and not targets[row, n:].any()
            # targets are inputs shifted by one, all a contiguous slice of the history
            window = inputs[row, :n].tolist() + [int(targets[row, n - 1])]
            assert targets[row, : n - 1].tolist() == inputs[row, 1:n].tolist()
            end = history.index(window[-1]) + 1
            assert history[end - len(window) : end] == window
            # a full window unless it starts at the first item
            assert n == max_len or end - len(window) == 0
            ends_seen[uid].add(end)
    for uid in users:  # every possible end (item 2 .. last) is drawn
        assert ends_seen[uid] == set(range(2, len(sequences.histories[uid]) + 1))


def test_loader_with_random_windows_differs_per_epoch(run_config):
    config, (_, train_data, _, _) = load({**run_config, "train_window": "random"})
    loader = UserSequenceLoader(config, train_data.dataset, batch_size=len(train_data.dataset.inter_feat))
    seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    uid_field = config["USER_ID_FIELD"]
    (first,), (second,) = list(loader), list(loader)
    order_1 = np.argsort(first[uid_field].numpy())
    order_2 = np.argsort(second[uid_field].numpy())
    assert not np.array_equal(first[seq_field].numpy()[order_1], second[seq_field].numpy()[order_2])
    targets = first[UserSequenceLoader.TARGET_SEQ].numpy()
    assert not first[UserSequenceLoader.NEG_SEQ].numpy()[targets == 0].any()
