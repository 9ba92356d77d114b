"""The projector from encoder embeddings to the recommender's item space."""

from __future__ import annotations

from torch import nn


class Projector(nn.Sequential):
    """Linear(in, 2h), LayerNorm, ReLU, Linear(2h, h), LayerNorm, as in the paper.

    Args:
        in_dim (int): width of the concatenated modality embeddings.
        hidden_size (int): width h of the recommender's item vectors.
    """

    def __init__(self, in_dim: int, hidden_size: int) -> None:
        super().__init__(
            nn.Linear(in_dim, 2 * hidden_size),
            nn.LayerNorm(2 * hidden_size),
            nn.ReLU(),
            nn.Linear(2 * hidden_size, hidden_size),
            nn.LayerNorm(hidden_size),
        )
