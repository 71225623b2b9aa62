"""Inference: nnU-Net's sliding window with mirroring, and writing predictions (NIfTI, DICOM SEG)."""

from custom_components.inference.mirroring import MirroredSlidingWindowInferer, mirror_axes, mirror_combinations
from custom_components.inference.dicom_seg import class_names_from_metadata, write_dicom_seg
from custom_components.inference.writer import KeepProbabilitiesd, PredictionWriter, save_probabilities
from custom_components.inference.previous_stage import PredictPreviousStaged
from custom_components.inference.ensemble import FoldEnsemble, fold_dirs, load_inference_network, parse_folds
from custom_components.inference.failures import FailedCasesReport, SkipFailedCasesDataset
