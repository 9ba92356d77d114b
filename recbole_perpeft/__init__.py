"""Personalised PEFT of multimodal foundation models for sequential recommendation."""
