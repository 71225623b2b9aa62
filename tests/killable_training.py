"""`python -m monai.bundle run ...` that stops dead at a chosen point, for the kill-and-resume tests.

    python tests/killable_training.py MARKER POINT N run training --config_file ... (monai.bundle's arguments)

POINT `iteration`: after the N-th training iteration completes. POINT `save`: in the N-th checkpoint save, after
half of the checkpoint's bytes reach the temporary file. There it writes MARKER and sleeps, for the test to
SIGKILL it.
"""

import io
import runpy
import sys
import time
from pathlib import Path

import torch

marker, point, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])


def hold() -> None:
    marker.write_text(point)
    time.sleep(600)


if point == "save":
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):
        if ".checkpoint_latest.pt." in str(getattr(f, "name", f)):
            saves.append(1)
            if len(saves) == n:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                f.flush()
                hold()
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
elif point == "iteration":
    from custom_components.training import TrainingProgress

    accumulate = TrainingProgress._accumulate

    def _accumulate(self, engine) -> None:
        accumulate(self, engine)
        if engine.state.iteration == n:
            hold()

    TrainingProgress._accumulate = _accumulate
else:
    raise SystemExit(f"unknown point {point!r}")

sys.argv = ["monai.bundle", *sys.argv[4:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
