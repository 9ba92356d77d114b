"""Per-group routing: each user is scored with their own group's module."""

import pytest
import torch

from recbole_perpeft.quick_start import build_config, create_data
from recbole_perpeft.utils import get_model


def build_model(run_config, **overrides):
    config = build_config("PerPEFT", "ml-slice", config_dict={**run_config, **overrides})
    _, train_data, valid_data, test_data = create_data(config)
    torch.manual_seed(0)
    model = get_model("PerPEFT")(config, train_data.dataset)
    return config, model, test_data


def personalise(model) -> None:
    """Give every group its own, different module and projector."""
    model.copy_global_to_groups()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for group in range(len(model.projectors)):
            for tensor in model.bank.module_parameters(group):
                tensor.add_(0.5 * torch.randn(tensor.shape, generator=generator))
            for tensor in model.projectors[group].parameters():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))


def scores_by_hand(model, item_seq, item_seq_len, group) -> torch.Tensor:
    """Scores of one user with group ``group``'s module, without the model's caches."""
    model.bank.activate(group)
    ids = torch.arange(model.n_items)
    batch = model.content.gather(ids)
    raw = model.encoder(batch)
    parts = []
    for modality in model.modalities:
        mask = batch.has_text if modality == "text" else batch.has_image
        parts.append(torch.where(mask.unsqueeze(-1), raw[modality], model.missing[modality]))
    content = model.projectors[group](torch.cat(parts, dim=-1))
    table = model.item_embedding(ids) + model.mm_weight * content
    table[0] = 0
    hidden = model.encode_sequences(item_seq[None], table[item_seq][None])[0]
    return hidden[item_seq_len - 1] @ table.T


@torch.no_grad()
def test_full_sort_predict_scores_each_user_with_their_group_module(run_config):
    config, model, test_data = build_model(run_config, n_groups=3)
    personalise(model)
    model.eval()
    user_group = torch.arange(model.n_users) % 3
    model.user_group.copy_(user_group)
    interaction = next(iter(test_data))[0]
    scores = model.full_sort_predict(interaction)
    assert scores.shape == (len(interaction), model.n_items)
    users = interaction[config["USER_ID_FIELD"]]
    groups_seen = set()
    for row in range(len(interaction)):
        seq = interaction[model.ITEM_SEQ][row]
        length = int(interaction[model.ITEM_SEQ_LEN][row])
        group = int(user_group[users[row]])
        groups_seen.add(group)
        expected = scores_by_hand(model, seq, length, group)
        assert torch.allclose(scores[row], expected, atol=1e-5)
        # and the user's score differs from what another group's module gives
        other = scores_by_hand(model, seq, length, (group + 1) % 3)
        assert not torch.allclose(scores[row], other, atol=1e-3)
    assert groups_seen == {0, 1, 2}


@torch.no_grad()
def test_catalogue_is_encoded_once_per_group_per_evaluation(run_config):
    config, model, test_data = build_model(run_config, n_groups=2)
    personalise(model)
    model.eval()
    model.user_group.copy_(torch.arange(model.n_users) % 2)
    calls = []
    original = model.item_vectors

    def counting(item_ids, module):
        calls.append((module, len(item_ids)))
        return original(item_ids, module)

    model.item_vectors = counting
    for interaction, *_ in test_data:
        model.full_sort_predict(interaction)
    encoded = {}
    for module, n in calls:
        encoded[module] = encoded.get(module, 0) + n
    assert encoded == {0: model.n_items, 1: model.n_items}
    model.train()
    model.eval()
    model.full_sort_predict(next(iter(test_data))[0])
    assert sum(n for m, n in calls) > 2 * model.n_items  # retraining drops the cache


@pytest.mark.parametrize("batch_size", [3, 1000])
def test_scores_do_not_depend_on_encode_or_eval_batch_size(run_config, batch_size):
    _, reference_model, test_data = build_model(run_config, n_groups=2)
    personalise(reference_model)
    reference_model.eval()
    reference_model.user_group.copy_(torch.arange(reference_model.n_users) % 2)
    reference = torch.cat([reference_model.full_sort_predict(i) for i, *_ in test_data])

    _, model, test_small = build_model(
        run_config, n_groups=2, encode_batch_size=batch_size, eval_batch_size=7
    )
    model.load_state_dict(reference_model.state_dict())
    model.eval()
    scores = torch.cat([model.full_sort_predict(i) for i, *_ in test_small])
    assert torch.allclose(scores, reference, atol=1e-5)
    # the same top 20, up to the order of items whose scores tie within float noise
    top = scores.topk(20, dim=1).indices
    twentieth = reference.topk(20, dim=1).values[:, -1:]
    assert bool((reference.gather(1, top) >= twentieth - 1e-5).all())


def test_user_representations_encode_only_the_sequences_items(run_config):
    config, model, _ = build_model(run_config, n_groups=2)
    personalise(model)
    model.eval()
    generator = torch.Generator().manual_seed(3)
    item_seq = torch.randint(1, 40, (9, config["MAX_ITEM_LIST_LENGTH"]), generator=generator)
    item_seq_len = torch.randint(1, item_seq.shape[1] + 1, (9,), generator=generator)
    for row, length in enumerate(item_seq_len.tolist()):
        item_seq[row, length:] = 0
    encoded = []
    original = model.content.gather
    model.content.gather = lambda ids, **kw: encoded.append(len(ids)) or original(ids, **kw)
    reps = model.user_representations(item_seq, item_seq_len, module=1)
    # the distinct ids of the sequences (padding 0 included), not the catalogue
    assert sum(encoded) == len(torch.unique(item_seq)) < model.n_items
    model.content.gather = original
    # the same as scoring through the cached catalogue (the forward of evaluation)
    expected = model.forward(item_seq, item_seq_len, module=1)
    torch.testing.assert_close(reps, expected, atol=1e-5, rtol=1e-4)
