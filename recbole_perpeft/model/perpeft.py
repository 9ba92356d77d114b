"""PerPEFT: personalised PEFT, one module and projector per user group.

Reference: "Personalized Parameter-Efficient Fine-Tuning of Foundation Models
for Multimodal Recommendation", WWW 2026.

The model holds ``n_groups`` PEFT modules and projectors. Module 0 serves as the
global module of stage 1 (while every user is in group 0); the trainer then
groups the users, copies module 0 into every group and trains on (stage 3).
The SASRec (ID and position embeddings, transformer) is shared throughout.

NOTE: peft's per-sample adapter routing works only at inference, so training
batches are split by group and one group's module is active per step.
"""

from __future__ import annotations

from recbole_perpeft.model.mm_sasrec import MultimodalSASRec
from recbole_perpeft.tuners import build_bank


class PerPEFT(MultimodalSASRec):
    """Multimodal SASRec with one PEFT module and projector per user group."""

    def n_modules(self, config, dataset) -> int:
        return int(config["n_groups"])

    def build_bank(self, config, encoder):
        return build_bank(config, encoder, n_modules=int(config["n_groups"]))

    def copy_global_to_groups(self) -> None:
        """Initialise every group's module and projector as a copy of group 0's."""
        targets = list(range(1, len(self.projectors)))
        self.bank.copy_module(0, targets)
        source = self.projectors[0].state_dict()
        for index in targets:
            self.projectors[index].load_state_dict(source)
