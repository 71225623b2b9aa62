"""The side-by-side benchmark against nnU-Net v2: the dataset in nnU-Net's raw layout, and measuring runs."""

from custom_components.benchmarking.nnunet_raw import write_nnunet_raw
from custom_components.benchmarking.nnunet_plans import plan_overrides, to_our_axes
from custom_components.benchmarking.timing import preprocess_training_cases, time_sliding_window
