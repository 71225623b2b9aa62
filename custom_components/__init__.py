"""Shared code of the U-Net family bundles, laid out as the stages of the data's journey:
planning, data, transforms, networks, losses, training, inference, postprocessing, evaluation."""

from custom_components.data.errors import install_excepthook

install_excepthook()  # bad input ends `monai.bundle run` with one line, not a traceback

from custom_components.bundle_config import check_command_line_ids  # noqa: E402 - the configs' `initialize` calls it
