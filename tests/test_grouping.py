"""Stage 2: k-means and random grouping of user representations."""

import numpy as np
import pytest

from recbole_perpeft.grouping import group_users


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    truth = np.repeat(np.arange(3), 40)
    return centres[truth] + rng.normal(scale=0.5, size=(120, 2)), truth


def test_kmeans_is_the_same_under_the_same_seed():
    reps = np.random.default_rng(1).normal(size=(200, 8))
    first, centroids_1 = group_users(reps, 8, "kmeans", seed=42)
    second, centroids_2 = group_users(reps, 8, "kmeans", seed=42)
    assert np.array_equal(first, second)
    assert np.allclose(centroids_1, centroids_2)


def test_kmeans_recovers_well_separated_groups():
    reps, truth = blobs()
    labels, centroids = group_users(reps, 3, "kmeans", seed=0)
    # same partition up to a renaming of the groups
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 3
    assert centroids.shape == (3, 2)


def test_random_grouping_is_balanced_and_seeded():
    reps = np.zeros((103, 4))
    labels, _ = group_users(reps, 4, "random", seed=5)
    assert sorted(np.bincount(labels).tolist()) == [25, 26, 26, 26]
    again, _ = group_users(reps, 4, "random", seed=5)
    other, _ = group_users(reps, 4, "random", seed=6)
    assert np.array_equal(labels, again) and not np.array_equal(labels, other)


@pytest.mark.parametrize("n_groups", [0, 11])
def test_n_groups_outside_one_to_users_is_refused(n_groups):
    with pytest.raises(ValueError, match=r"`n_groups`: expected 1 <= n_groups <= 10"):
        group_users(np.zeros((10, 2)), n_groups, "kmeans", seed=0)


def test_unknown_grouping_is_refused():
    with pytest.raises(ValueError, match=r"`grouping`: expected one of \['kmeans', 'random'\], got 'knn'"):
        group_users(np.zeros((10, 2)), 2, "knn", seed=0)
