"""PerPEFT's models: a multimodal SASRec and three thin classes over it."""
