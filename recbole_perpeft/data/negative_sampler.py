"""Negative items for BCE training, drawn from a pool and never from the user's own items."""

from __future__ import annotations

from logging import getLogger

import numpy as np

logger = getLogger(__name__)


class NegativeSampler:
    """Draws negatives for each user from a pool of items, skipping the user's own.

    A user's "own" items are all items of their training history. With one pool
    per group (PerPEFT's group negatives), a user of group ``g`` gets negatives
    from the items that appear in the training histories of group ``g``; with no
    pools, from all items ``1 .. n_items - 1``.

    Args:
        n_items (int): number of item ids, padding (0) included.
        histories (list[np.ndarray]): training history of each user, indexed by
            internal user id (empty for users without one).
        pools (list[np.ndarray] | None): candidate items of each group, or None
            for one uniform pool of all items.
        max_rounds (int): redraws of rejected samples before falling back to the
            uniform pool.
    """

    def __init__(
        self,
        n_items: int,
        histories: list[np.ndarray],
        pools: list[np.ndarray] | None = None,
        max_rounds: int = 50,
    ) -> None:
        self.n_items = n_items
        self.max_rounds = max_rounds
        self.all_items = np.arange(1, n_items, dtype=np.int64)
        self.pools = pools
        # Sorted keys user * n_items + item make "does u own i" one searchsorted.
        keys = [
            uid * n_items + np.unique(items)
            for uid, items in enumerate(histories)
            if len(items)
        ]
        self._owned = np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64)

    def owns(self, user_ids: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each user owns the item at the same position (broadcast)."""
        keys = user_ids.astype(np.int64) * self.n_items + items.astype(np.int64)
        if len(self._owned) == 0:
            return np.zeros(keys.shape, dtype=bool)
        pos = np.searchsorted(self._owned, keys)
        pos = np.minimum(pos, len(self._owned) - 1)
        return self._owned[pos] == keys

    def sample(
        self,
        user_ids: np.ndarray,
        n_per_user: int,
        rng: np.random.Generator,
        group: int | None = None,
    ) -> np.ndarray:
        """Negatives for a batch of users of one group.

        Args:
            user_ids (np.ndarray): internal user ids, shape [B].
            n_per_user (int): negatives per user (one per sequence position).
            rng (np.random.Generator): source of randomness.
            group (int | None): the users' group; None or no pools means uniform.

        Returns:
            np.ndarray: item ids, shape [B, n_per_user].
        """
        pool = self.all_items
        if self.pools is not None and group is not None:
            pool = self.pools[group]
        users = np.repeat(user_ids[:, None], n_per_user, axis=1)
        negatives = pool[rng.integers(len(pool), size=users.shape)]
        bad = self.owns(users, negatives)
        for _ in range(self.max_rounds):
            if not bad.any():
                return negatives
            negatives[bad] = pool[rng.integers(len(pool), size=int(bad.sum()))]
            bad[bad] = self.owns(users[bad], negatives[bad])
        # The user owns (nearly) the whole pool: fall back to all items.
        negatives[bad] = self._uniform_unowned(users[bad], rng)
        return negatives

    def _uniform_unowned(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        items = self.all_items[rng.integers(len(self.all_items), size=users.shape)]
        bad = self.owns(users, items)
        for _ in range(self.max_rounds):
            if not bad.any():
                break
            items[bad] = self.all_items[rng.integers(len(self.all_items), size=int(bad.sum()))]
            bad[bad] = self.owns(users[bad], items[bad])
        if bad.any():
            raise RuntimeError(
                f"{int(bad.sum())} negatives could not be drawn: the users own "
                "(almost) every item of the catalogue."
            )
        return items
