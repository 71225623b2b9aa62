"""Dataset folders (MSD and nnU-Net v2 layouts), cross-validation splits and data lists."""

from custom_components.data.dataset import DatasetInfo, read_dataset, require_training_cases
from custom_components.data.errors import DatasetError, OutputError
from custom_components.data.splits import kfold_split, inference_datalist, training_datalist, validation_datalist, with_previous_stage
