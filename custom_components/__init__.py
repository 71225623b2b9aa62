"""Shared code of the U-Net family bundles, laid out as the stages of the data's journey:
planning, data, transforms, networks, losses, training, inference, postprocessing, evaluation."""
