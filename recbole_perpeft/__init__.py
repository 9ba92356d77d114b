"""Personalised PEFT of multimodal foundation models for sequential recommendation.

A RecBole 1.2.1 plugin. Importing it applies :mod:`recbole_perpeft.compat`.
"""

from recbole_perpeft import compat

compat.apply()

__version__ = "0.1.0"
