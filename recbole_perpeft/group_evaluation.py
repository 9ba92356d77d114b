"""Metrics per user group, computed with RecBole's own metric functions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from recbole.evaluator.metrics import NDCG, Hit


@dataclass
class GroupResult:
    """One row of the per-group table."""

    group: int
    users: int
    pool_items: int
    ndcg: float
    hit: float


@torch.no_grad()
def per_user_metrics(model, eval_data, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NDCG@k and Hit@k of each evaluated user, scored as RecBole's trainer does.

    Returns:
        tuple[np.ndarray, np.ndarray, np.ndarray]: user ids [U], NDCG@k [U], Hit@k [U].
    """
    model.eval()
    user_field = model.USER_ID
    users, ndcgs, hits = [], [], []
    for interaction, history_index, positive_u, positive_i in eval_data:
        interaction = interaction.to(model.device)
        scores = model.full_sort_predict(interaction).view(len(interaction), -1)
        scores[:, 0] = -np.inf
        if history_index is not None:
            scores[history_index] = -np.inf
        positives = torch.zeros_like(scores, dtype=torch.bool)
        positives[positive_u, positive_i] = True
        top = torch.topk(scores, k, dim=-1).indices
        pos_index = torch.gather(positives, 1, top).cpu().numpy()
        pos_len = positives.sum(dim=1).cpu().numpy()
        ndcgs.append(NDCG.metric_info(None, pos_index, pos_len)[:, k - 1])
        hits.append(Hit.metric_info(None, pos_index)[:, k - 1])
        users.append(interaction[user_field].cpu().numpy())
    return np.concatenate(users), np.concatenate(ndcgs), np.concatenate(hits)


def group_results(
    model, eval_data, pools: list[np.ndarray] | None, k: int = 20
) -> list[GroupResult]:
    """Mean NDCG@k and Hit@k of each group's users.

    Args:
        model (MultimodalSASRec): a trained model; ``model.user_group`` routes users.
        eval_data (FullSortEvalDataLoader): the users to evaluate.
        pools (list[np.ndarray] | None): each group's negative pool, for its size.
        k (int): the cut-off.
    """
    users, ndcg, hit = per_user_metrics(model, eval_data, k)
    groups = model.user_group.cpu().numpy()[users]
    rows = []
    for group in range(len(model.projectors)):
        mask = groups == group
        if not mask.any():
            continue
        pool_items = len(pools[group]) if pools is not None else model.n_items - 1
        rows.append(
            GroupResult(group, int(mask.sum()), pool_items, float(ndcg[mask].mean()), float(hit[mask].mean()))
        )
    return rows


def format_group_table(rows: list[GroupResult], k: int = 20) -> str:
    """The per-group table as aligned text."""
    header = f"{'group':>5}  {'users':>6}  {'pool items':>10}  {f'NDCG@{k}':>8}  {f'Hit@{k}':>8}"
    lines = [header]
    for row in rows:
        lines.append(
            f"{row.group:>5}  {row.users:>6}  {row.pool_items:>10}  {row.ndcg:>8.4f}  {row.hit:>8.4f}"
        )
    return "\n".join(lines)
