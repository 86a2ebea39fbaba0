"""Inference with a trained model beyond its encoder: conditional inference for missing pixels."""
from .conditional import METHODS, impute, make_mask

__all__ = ["METHODS", "impute", "make_mask"]
