"""Inference: nnU-Net's sliding window with mirroring, and writing predictions."""

from custom_components.inference.mirroring import MirroredSlidingWindowInferer, mirror_combinations
from custom_components.inference.writer import PredictionWriter
