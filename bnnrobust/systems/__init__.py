"""LightningModules: compose models, binarizers and attacks (they compute nothing themselves)."""

from bnnrobust.systems.classifier import ImageClassifier

__all__ = ["ImageClassifier"]
