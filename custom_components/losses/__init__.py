"""Training losses."""

from custom_components.losses.deep_supervision import DeepSupervisionDiceCELoss
