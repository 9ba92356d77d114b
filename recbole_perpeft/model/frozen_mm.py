"""FrozenMM: multimodal SASRec over a frozen foundation model.

The encoder's embeddings of the whole catalogue are computed once; only the
projector, the missing-content embeddings and the SASRec train. This is the
paper's "frozen CLIP features" baseline.
"""

from __future__ import annotations

from recbole_perpeft.model.mm_sasrec import MultimodalSASRec


class FrozenMM(MultimodalSASRec):
    """Multimodal SASRec whose encoder is frozen (no PEFT module)."""

    frozen_encoder = True

    def build_bank(self, config, encoder):
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        return None
