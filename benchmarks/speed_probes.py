"""Measurements taken inside one benchmark process, on a trained model
(``speed.py``'s cases; ``scaling.py``'s points use the evaluation timing).

- :func:`time_evaluation`: full-ranking test evaluation, whole and split into
  catalogue encoding and scoring (:func:`encode_then_score`).
- :func:`profile_steps`: a few training steps, timing the loader, the content
  gathering and the whole step, to find the time spent outside the model.
- :func:`compare_scoring`: users scored one at a time (a forward per user and a
  full-catalogue ranking, as the published code does) against the batched
  ``full_sort_predict``, both with the catalogue vectors already computed.

These functions monkeypatch instance methods of the model for timing; that is
fine in a benchmark process that ends right after.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from recbole.data.interaction import Interaction

#: (attribute path from the model, method name): where a training step reads
#: item content outside the model's own computation. ``content.gather`` slices
#: the token ids and reads images from the memory-mapped store;
#: ``bank.read_states`` reads IISAN's cached layer states;
#: ``bank.lower_layers.read_states`` would read the states of cached lower
#: layers (``cache_frozen_layers``) once that cache has such a method. Readers
#: that a model lacks are skipped.
CONTENT_READERS = [
    ("content", "gather"),
    ("bank", "read_states"),
    ("bank.lower_layers", "read_states"),
]


def sync(device) -> None:
    """Wait for queued GPU work, so that wall-clock timings are complete."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class CallTimer:
    """Total seconds spent in wrapped methods; nested calls are counted once."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0

    def wrap(self, method):
        def timed(*args, **kwargs):
            self._depth += 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - start
                    self.calls += 1

        return timed


@contextmanager
def timed_methods(model, readers=CONTENT_READERS):
    """Wrap each existing ``model.<owner>.<method>`` of ``readers`` with one
    :class:`CallTimer` for the duration of the block; yields the timer."""
    timer = CallTimer()
    patched = []
    for owner_path, method_name in readers:
        owner = model
        for name in owner_path.split("."):
            owner = getattr(owner, name, None)
        if owner is None or not hasattr(owner, method_name):
            continue
        own = vars(owner).get(method_name)  # an instance attribute, if any
        setattr(owner, method_name, timer.wrap(getattr(owner, method_name)))
        patched.append((owner, method_name, own))
    try:
        yield timer
    finally:
        for owner, method_name, own in patched:
            if own is None:
                delattr(owner, method_name)  # the class's method shows through again
            else:
                setattr(owner, method_name, own)


def _batches_forever(loader):
    """The loader's batches, starting a new epoch whenever one ends."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise RuntimeError("the training loader yields no batch")


def profile_steps(
    model, loader, optimizer, device, n_steps: int = 10, warmup: int = 1, amp: bool = False
) -> dict:
    """Time ``n_steps`` training steps after ``warmup`` untimed ones.

    A step, as RecBole's trainer takes it: next batch from ``loader`` (moved to
    ``device``) -> ``calculate_loss`` (under autocast where ``amp``, RecBole's
    ``enable_amp``) -> backward -> ``optimizer.step``. The loader's time and the
    content readers' (:data:`CONTENT_READERS`) are the time outside the model.

    Returns:
        dict: ``step_fetch_ms``, ``step_gather_ms``, ``step_total_ms`` (means per
        step) and ``outside_pct`` = 100 * (fetch + gather) / total.
    """
    model.train()
    batches = _batches_forever(loader)
    fetch = gather = total = 0.0
    with timed_methods(model) as timer:
        for step in range(warmup + n_steps):
            gathered_before = timer.seconds
            sync(device)
            start = time.perf_counter()
            batch = next(batches).to(device)
            fetched = time.perf_counter()
            optimizer.zero_grad()
            with torch.autocast(device_type=torch.device(device).type, enabled=amp):
                loss = model.calculate_loss(batch)
            loss.backward()
            optimizer.step()
            sync(device)
            end = time.perf_counter()
            if step >= warmup:
                fetch += fetched - start
                gather += timer.seconds - gathered_before
                total += end - start
    return {
        "step_fetch_ms": 1000 * fetch / n_steps,
        "step_gather_ms": 1000 * gather / n_steps,
        "step_total_ms": 1000 * total / n_steps,
        "outside_pct": 100 * (fetch + gather) / total if total else None,
    }


def encode_catalogue(model) -> float:
    """Seconds to compute the catalogue vectors of every group module (cache dropped first)."""
    model.train()  # drops the catalogue cache
    model.eval()
    sync(model.device)
    start = time.perf_counter()
    for group in range(len(model.projectors)):
        model.catalogue_vectors(group)
    sync(model.device)
    return time.perf_counter() - start


def timed_evaluate(trainer, test_data) -> float:
    """Seconds of RecBole's full-ranking ``evaluate`` of every test user."""
    sync(trainer.device)
    start = time.perf_counter()
    trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    sync(trainer.device)
    return time.perf_counter() - start


def encode_then_score(trainer, test_data) -> tuple[float, float]:
    """A full-ranking test evaluation of one of our models from a cold
    catalogue cache, timed in two parts.

    Returns:
        tuple[float, float]: seconds of the catalogue vectors of every group
        (:func:`encode_catalogue`), then of the evaluation reusing them.
    """
    encode_s = encode_catalogue(trainer.model)
    return encode_s, timed_evaluate(trainer, test_data)


def time_evaluation(trainer, test_data) -> dict:
    """Full-ranking test evaluation of every user, from a cold catalogue cache.

    Returns:
        dict: ``eval_s`` (the whole evaluation), and for our models
        ``eval_encode_s`` (catalogue vectors of every group) and ``eval_score_s``
        (the same evaluation again, with the catalogue vectors cached).
    """
    trainer.model.train()  # our models drop the catalogue cache; harmless for RecBole's
    result = {"eval_s": timed_evaluate(trainer, test_data)}
    if hasattr(trainer.model, "catalogue_vectors"):
        result["eval_encode_s"], result["eval_score_s"] = encode_then_score(trainer, test_data)
    return result


def eval_subset(model, test_data, n_users: int) -> dict[str, torch.Tensor]:
    """User ids, sequences and lengths of the first ``n_users`` test users."""
    fields = [model.USER_ID, model.ITEM_SEQ, model.ITEM_SEQ_LEN]
    parts: dict[str, list[torch.Tensor]] = {f: [] for f in fields}
    taken = 0
    for interaction, *_ in test_data:
        for field in fields:
            parts[field].append(interaction[field])
        taken += len(interaction[model.USER_ID])
        if taken >= n_users:
            break
    return {f: torch.cat(v)[:n_users].to(model.device) for f, v in parts.items()}


@torch.no_grad()
def score_one_at_a_time(model, users: dict, k: int) -> tuple[float, torch.Tensor]:
    """The reference path: per user, a forward of their sequence with their
    group's module, then a ranking of the full catalogue.

    Returns:
        tuple[float, torch.Tensor]: seconds, and the top-``k`` item ids [U, k].
    """
    seqs, lengths = users[model.ITEM_SEQ], users[model.ITEM_SEQ_LEN]
    groups = model.user_group[users[model.USER_ID]].tolist()
    top = []
    sync(model.device)
    start = time.perf_counter()
    for i, group in enumerate(groups):
        out = model.forward(seqs[i : i + 1], lengths[i : i + 1], module=group)
        scores = out @ model.catalogue_vectors(group).T
        top.append(torch.topk(scores, k, dim=-1).indices)
    sync(model.device)
    return time.perf_counter() - start, torch.cat(top)


@torch.no_grad()
def score_batched(model, users: dict, k: int, batch_size: int) -> tuple[float, torch.Tensor]:
    """The batched path: ``full_sort_predict`` over batches of ``batch_size`` users.

    Returns:
        tuple[float, torch.Tensor]: seconds, and the top-``k`` item ids [U, k].
    """
    n = len(users[model.USER_ID])
    top = []
    sync(model.device)
    start = time.perf_counter()
    for begin in range(0, n, batch_size):
        batch = Interaction({f: t[begin : begin + batch_size] for f, t in users.items()})
        scores = model.full_sort_predict(batch)
        top.append(torch.topk(scores, k, dim=-1).indices)
    sync(model.device)
    return time.perf_counter() - start, torch.cat(top)


def top_k_mismatches(first: torch.Tensor, second: torch.Tensor) -> int:
    """Users whose two top-k lists hold different items (order within a list ignored)."""
    a = torch.sort(first, dim=-1).values
    b = torch.sort(second, dim=-1).values
    return int((a != b).any(dim=-1).sum())


def compare_scoring(
    model, test_data, n_users: int = 200, k: int = 20, batch_size: int = 256, repeats: int = 3
) -> dict:
    """Per-user milliseconds of the one-at-a-time and batched scoring paths.

    The catalogue vectors of every group are computed first and excluded from
    both timings. The batched path, much shorter, is timed ``repeats`` times
    and its fastest run kept.

    Returns:
        dict: ``score_users``, ``score_loop_ms_per_user``,
        ``score_batched_ms_per_user``, ``score_speedup`` and
        ``score_top20_mismatch`` (users whose top-``k`` items differ).
    """
    model.eval()
    encode_catalogue(model)
    users = eval_subset(model, test_data, n_users)
    n = len(users[model.USER_ID])
    loop_s, loop_top = score_one_at_a_time(model, users, k)
    runs = [score_batched(model, users, k, batch_size) for _ in range(repeats)]
    batched_s = min(seconds for seconds, _ in runs)
    return {
        "score_users": n,
        "score_loop_ms_per_user": 1000 * loop_s / n,
        "score_batched_ms_per_user": 1000 * batched_s / n,
        "score_speedup": loop_s / batched_s if batched_s else None,
        "score_top20_mismatch": top_k_mismatches(loop_top, runs[0][1]),
    }
