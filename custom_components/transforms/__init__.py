"""MONAI transforms for nnU-Net's preprocessing: checks, normalisation and anisotropic resampling; and the
cascade's previous-stage channels; loading that also takes DICOM series folders."""

from custom_components.transforms.cascade import PreviousStageOneHotd, RandPerturbPreviousStaged
from custom_components.transforms.checks import CheckImaged, is_nonzero, source_name
from custom_components.transforms.loading import LoadImageOrSeriesd
from custom_components.transforms.intensity import NormalizeIntensityByPland, normalize_channel
from custom_components.transforms.resampling import AnisotropicResampled
from custom_components.transforms.slicing import SqueezeSliceAxisd, volume_patch
