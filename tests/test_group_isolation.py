"""A training step on one group leaves every other group's module, projector and
optimiser state bit-identical (LoRA, (IA)3 and IISAN, tiny random BERT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _tiny import build_tiny_perpeft
from recbole_perpeft.data.user_sequences import UserSequenceLoader
from recbole_perpeft.trainer import PerPEFTTrainer


def _group_tensors(model, group: int) -> dict[str, torch.Tensor]:
    """Group ``group``'s bank and projector tensors, by name."""
    tensors = {f"bank.{k}": v for k, v in model.bank.module_state_dict(group).items()}
    tensors.update(
        {
            f"projector.{k}": v
            for k, v in model.projectors[group].state_dict(keep_vars=True).items()
        }
    )
    return tensors


def _snapshot(model, optimizer, group: int) -> tuple[dict, dict]:
    tensors = _group_tensors(model, group)
    values = {k: v.detach().clone() for k, v in tensors.items()}
    states = {}
    for name, tensor in tensors.items():
        state = optimizer.state.get(tensor, {})
        states[name] = {
            k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()
        }
    return values, states


def _batch_of(loader: UserSequenceLoader, group: int):
    for batch in loader:
        if int(batch[UserSequenceLoader.GROUP_ID][0]) == group:
            return batch
    raise AssertionError(f"no batch of group {group}")


@pytest.mark.parametrize("peft_type", ["lora", "ia3", "iisan"])
def test_step_on_one_group_leaves_the_others_untouched(
    tmp_path, peft_type: str
) -> None:
    config, train_data, model = build_tiny_perpeft(
        tmp_path,
        peft_type,
        {"bottleneck": 8, "side_dim": 16} if peft_type == "iisan" else {},
    )
    n_groups = config["n_groups"]
    model.copy_global_to_groups()
    # RecBole's trainer builds AdamW over model.parameters(): every group is in it.
    trainer = PerPEFTTrainer(config, model)
    optimizer = trainer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    loader = UserSequenceLoader(config, train_data.dataset, batch_size=8)
    user_group = np.zeros(loader.sequences.n_users, dtype=np.int64)
    user_group[loader.users] = np.arange(len(loader.users)) % n_groups
    loader.set_groups(user_group, n_groups, group_negatives=True)
    model.train()
    for group in range(n_groups):
        before = {g: _snapshot(model, optimizer, g) for g in range(n_groups)}
        optimizer.zero_grad()
        model.calculate_loss(_batch_of(loader, group)).backward()
        optimizer.step()
        for other in range(n_groups):
            values, states = _snapshot(model, optimizer, other)
            old_values, old_states = before[other]
            if other == group:
                changed = [
                    k for k in values if not torch.equal(values[k], old_values[k])
                ]
                assert any(
                    k.startswith("bank.") for k in changed
                ), f"{peft_type}: group {group}'s module did not train"
                assert any(k.startswith("projector.") for k in changed)
                continue
            for name, value in values.items():
                assert torch.equal(
                    value, old_values[name]
                ), f"{peft_type}: step on {group} changed {other}'s {name}"
                assert (
                    states[name].keys() == old_states[name].keys()
                ), f"optimiser state of {other}'s {name}"
                for key, state in states[name].items():
                    assert torch.equal(
                        torch.as_tensor(state), torch.as_tensor(old_states[name][key])
                    )
