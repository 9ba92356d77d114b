"""GlobalPEFT: one PEFT module on the encoder, shared by every user.

This is the paper's main baseline and PerPEFT's stage 1.
"""

from __future__ import annotations

from recbole_perpeft.model.mm_sasrec import MultimodalSASRec
from recbole_perpeft.tuners import build_bank


class GlobalPEFT(MultimodalSASRec):
    """Multimodal SASRec with one PEFT module (``peft_type``) on the encoder."""

    def build_bank(self, config, encoder):
        return build_bank(config, encoder, n_modules=1)
