"""Scoring predictions: Dice and HD95 per class and case."""

from custom_components.evaluation.report import SegmentationReport, score_case, summarise
