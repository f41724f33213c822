"""LightningModules: compose models, binarizers and attacks (they compute nothing themselves)."""

from bnnrobust.systems.adversarial import AdversarialClassifier
from bnnrobust.systems.classifier import ImageClassifier

__all__ = ["AdversarialClassifier", "ImageClassifier"]
