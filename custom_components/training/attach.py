"""A `train#handlers` entry for a handler defined under its own id elsewhere in the config."""

from __future__ import annotations


class Attach:
    """Attaches `handler` (any object with `attach(engine)`) to the engine. The handler keeps its own config id,
    so that the checkpoint can save the same instance, while every `train#handlers` item stays a `_target_`
    mapping, which MONAI Label expects when it prepends its checkpoint loader."""

    def __init__(self, handler) -> None:
        self.handler = handler

    def attach(self, engine) -> None:
        self.handler.attach(engine)
