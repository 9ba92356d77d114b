"""The negative sampler never returns a user's own item and keeps to the group pool."""

import numpy as np
import pytest

from recbole_perpeft.data.negative_sampler import NegativeSampler


def make_histories(n_users: int, n_items: int, rng) -> list[np.ndarray]:
    return [rng.choice(np.arange(1, n_items), size=rng.integers(3, 15), replace=False) for _ in range(n_users)]


def test_uniform_negatives_avoid_own_items_and_padding():
    rng = np.random.default_rng(0)
    histories = make_histories(30, 40, rng)
    sampler = NegativeSampler(40, histories)
    users = np.arange(30)
    negatives = sampler.sample(users, 10, np.random.default_rng(1))
    assert negatives.shape == (30, 10)
    assert negatives.min() >= 1 and negatives.max() <= 39
    for user, row in zip(users, negatives):
        assert not set(row) & set(histories[user])


def test_group_negatives_come_only_from_the_group_pool():
    rng = np.random.default_rng(0)
    histories = make_histories(20, 100, rng)
    pools = [np.arange(1, 50), np.arange(50, 100)]
    sampler = NegativeSampler(100, histories, pools=pools)
    for group, pool in enumerate(pools):
        negatives = sampler.sample(np.arange(20), 20, np.random.default_rng(group), group=group)
        pool_set = set(pool.tolist())
        for user, row in enumerate(negatives):
            assert set(row.tolist()) <= pool_set
            assert not set(row.tolist()) & set(histories[user].tolist())


def test_a_user_who_owns_the_whole_pool_falls_back_to_other_items():
    histories = [np.array([1, 2, 3]), np.array([4])]
    sampler = NegativeSampler(10, histories, pools=[np.array([1, 2, 3])])
    negatives = sampler.sample(np.array([0]), 50, np.random.default_rng(0), group=0)
    assert set(negatives[0].tolist()) <= set(range(4, 10))


def test_owns_matches_a_set_lookup():
    rng = np.random.default_rng(3)
    histories = make_histories(15, 30, rng)
    sampler = NegativeSampler(30, histories)
    users = rng.integers(0, 15, size=500)
    items = rng.integers(1, 30, size=500)
    expected = np.array([item in set(histories[user]) for user, item in zip(users, items)])
    assert np.array_equal(sampler.owns(users, items), expected)


def test_a_catalogue_owned_entirely_is_reported():
    sampler = NegativeSampler(4, [np.array([1, 2, 3])])
    with pytest.raises(RuntimeError, match="own"):
        sampler.sample(np.array([0]), 2, np.random.default_rng(0))
