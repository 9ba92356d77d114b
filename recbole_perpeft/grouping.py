"""Stage 2 of PerPEFT: user representations in, group ids and centroids out."""

from __future__ import annotations

import numpy as np

GROUPINGS = ("kmeans", "random")


def group_users(
    representations: np.ndarray, n_groups: int, method: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split users into ``n_groups`` groups.

    Args:
        representations (np.ndarray): one row per user [U, H].
        n_groups (int): number of groups, 1 <= n_groups <= U.
        method (str): 'kmeans' (seeded k-means) or 'random' (a seeded random split
            into groups of equal size, the paper's ablation).
        seed (int): random seed.

    Returns:
        tuple[np.ndarray, np.ndarray]: the group of each user [U] and the group
        centroids [n_groups, H].
    """
    n_users = len(representations)
    if not 1 <= n_groups <= n_users:
        raise ValueError(
            f"`n_groups`: expected 1 <= n_groups <= {n_users} (the training users), "
            f"got {n_groups}."
        )
    if method == "kmeans":
        from sklearn.cluster import KMeans

        kmeans = KMeans(n_clusters=n_groups, n_init=10, random_state=seed)
        labels = kmeans.fit_predict(representations.astype(np.float64))
        return labels.astype(np.int64), kmeans.cluster_centers_
    if method == "random":
        rng = np.random.default_rng(seed)
        labels = np.empty(n_users, dtype=np.int64)
        labels[rng.permutation(n_users)] = np.arange(n_users) % n_groups
        centroids = np.stack(
            [representations[labels == g].mean(axis=0) for g in range(n_groups)]
        )
        return labels, centroids
    raise ValueError(f"`grouping`: expected one of {list(GROUPINGS)}, got {method!r}.")
