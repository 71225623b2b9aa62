"""Training losses."""

from custom_components.losses.deep_supervision import DeepSupervisionDiceCELoss
from custom_components.losses.softmax_mse import SoftmaxMSELoss
