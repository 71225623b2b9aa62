"""Validation during training, skipped when the fold has no held-out cases (nnU-Net's fold 'all')."""

from __future__ import annotations

from monai.handlers import ValidationHandler


class OptionalValidation(ValidationHandler):
    """MONAI's ValidationHandler, attached only when there is something to validate: `interval` > 0 and a
    non-empty validation loader."""

    def __init__(self, validator, interval: int, epoch_level: bool = True, exec_at_start: bool = False) -> None:
        self.active = interval > 0 and validator is not None and len(validator.data_loader.dataset) > 0  # the same on every rank
        super().__init__(interval=max(1, int(interval)), validator=validator, epoch_level=epoch_level, exec_at_start=exec_at_start)

    def attach(self, engine) -> None:
        if self.active:
            super().attach(engine)
