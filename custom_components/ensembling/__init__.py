"""Ensembling: averaging members' softmax probabilities, and choosing the best configuration or pair by
cross-validation Dice (nnU-Net's `find_best_configuration`)."""

from custom_components.ensembling.selection import (
    average_probabilities,
    candidate_ensembles,
    score_candidates,
    select_best,
)
from custom_components.ensembling.best_configuration import find_best, run_ensemble_inference, write_ensemble_bundle
