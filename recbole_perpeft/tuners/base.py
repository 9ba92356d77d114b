"""The interface every PEFT kind implements: a bank of n group modules on an encoder."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CataloguePass:
    """How a bank runs the frozen encoder once over the whole catalogue (IISAN's
    layer states, the cached lower layers): read from the config's
    ``encode_batch_size``, ``device`` and ``show_progress``."""

    batch_size: int = 256
    device: str = "cpu"
    show_progress: bool = False

    @classmethod
    def from_config(cls, config) -> CataloguePass:
        return cls(
            batch_size=int(config["encode_batch_size"] or 256),
            device=str(config["device"] or "cpu"),
            show_progress=bool(config["show_progress"]),
        )

    @contextmanager
    def on_device(self, encoder: nn.Module):
        """Move ``encoder`` to this pass's device, and back to where it was after."""
        home = next(encoder.parameters()).device
        encoder.to(self.device)
        try:
            yield torch.device(self.device)
        finally:
            encoder.to(home)


class GroupModuleBank(nn.Module, ABC):
    """``n_modules`` PEFT modules on one frozen encoder, one active at a time.

    Module 0 is the global module (stage 1); PerPEFT copies it into every group's
    module before stage 3. Only the active module's parameters require grad, so
    a training step on one group leaves every other group's tensors (and their
    optimiser state, which skips parameters without a gradient) untouched.
    """

    def __init__(self, n_modules: int) -> None:
        super().__init__()
        if n_modules < 1:
            raise ValueError(f"`n_groups`: expected at least 1, got {n_modules}.")
        self.n_modules = n_modules
        self.active = 0

    def prepare(self, content) -> None:
        """Called once by the model, right after the bank is built, with the
        catalogue's content store (:class:`ItemContent`). Banks that precompute
        something over the catalogue (IISAN's layer-state cache) do it here; the
        default does nothing."""

    @abstractmethod
    def activate(self, index: int) -> None:
        """Make module ``index`` the one the encoder runs with."""

    @abstractmethod
    def module_parameters(self, index: int) -> list[nn.Parameter]:
        """The trainable parameters of module ``index``."""

    @abstractmethod
    def module_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Module ``index``'s tensors, keyed by a name that does not contain the index."""

    @abstractmethod
    def load_module_state_dict(self, index: int, state: dict[str, torch.Tensor]) -> None:
        """Set module ``index``'s tensors from :meth:`module_state_dict` output."""

    @abstractmethod
    def embed(self, item_ids: torch.Tensor, content, device: torch.device) -> dict[str, torch.Tensor]:
        """Embeddings ``{modality: [N, D_m]}`` of ``item_ids`` with the active module.

        Args:
            item_ids (torch.Tensor): internal item ids [N].
            content (ItemContent): the catalogue's content store.
            device (torch.device): where the embeddings are computed.
        """

    @property
    @abstractmethod
    def modality_dims(self) -> dict[str, int]:
        """Width of each modality's embedding."""

    def copy_module(self, source: int, targets: list[int]) -> None:
        """Copy module ``source`` into each module of ``targets``."""
        state = {k: v.detach().clone() for k, v in self.module_state_dict(source).items()}
        for target in targets:
            self.load_module_state_dict(target, state)

    def module_parameter_count(self, index: int = 0) -> int:
        """Trainable parameters of one module."""
        return sum(p.numel() for p in self.module_parameters(index))

    def check_index(self, index: int) -> None:
        if not 0 <= index < self.n_modules:
            raise IndexError(f"module {index} of a bank of {self.n_modules}")
