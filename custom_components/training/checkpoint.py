"""Resumable training: an atomic checkpoint at the end of every epoch, restored when the same command runs again.

The checkpoint holds the model, the optimiser, the trainer's epoch and iteration, every attached stateful
handler (schedule, progress history) and the random number generator states. It is written to a temporary
file and renamed, so a kill never leaves a half-written checkpoint. When training completes, the network's
state_dict alone is written to `models/model.pt`, the file that inference, export and MONAI Label load.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events

from custom_components.data.errors import DatasetError
from custom_components.io_utils import atomic_torch_save, load_matching_state, load_weights
from custom_components.training.distributed import is_main_process, same_on_every_rank, unwrap

CHECKPOINT_NAME = "checkpoint_latest.pt"


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


class ResumableCheckpoint:
    """Ignite handler: resume from `<ckpt_dir>/checkpoint_latest.pt` if present, save it every epoch,
    and write the final `model.pt`. `objects` are extra stateful things (anything with state_dict);
    weights whose names match a regex of `exclude_weights` (training-only heads) are left out of `model.pt`."""

    def __init__(self, ckpt_dir: str, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 objects: Mapping[str, object] | None = None, final_filename: str = "model.pt",
                 exclude_weights: Sequence[str] = (), resume: bool = True) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.network = network
        self.optimizer = optimizer
        self.objects = dict(objects or {})
        self.final_filename = final_filename
        self.exclude_weights = [re.compile(p) for p in exclude_weights]
        self.resume = resume

    @property
    def path(self) -> Path:
        return self.ckpt_dir / CHECKPOINT_NAME

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self.save_final)

    def state(self, engine) -> dict:
        return {
            "model": unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "objects": {k: v.state_dict() for k, v in self.objects.items()},
            "rng": rng_state(),
        }

    def save(self, engine) -> None:
        if is_main_process():
            atomic_torch_save(self.state(engine), self.path)

    def remove_interrupted_saves(self) -> None:
        """Temporary files of saves that a kill interrupted (atomic_path's `.<name>.*.tmp*`): never renamed onto
        the checkpoint, never read, only taking space."""
        if is_main_process() and self.ckpt_dir.is_dir():
            for name in (CHECKPOINT_NAME, self.final_filename):
                for tmp in self.ckpt_dir.glob(f".{name}.*.tmp*"):
                    tmp.unlink(missing_ok=True)

    def load(self, engine) -> None:
        self.remove_interrupted_saves()
        found = self.resume and self.path.is_file()
        if found:
            self.restore(engine)
        if not same_on_every_rank(engine.state.iteration):  # rank 0 alone writes: the others must read its file
            raise DatasetError(f"{self.path}: the ranks found different checkpoints (this rank: iteration "
                               f"{engine.state.iteration}); every node must see rank 0's ckpt_dir (a shared file system)")
        if not found:
            return
        print(f"resuming from {self.path} at epoch {engine.state.epoch}", flush=True)
        if engine.state.epoch >= engine.state.max_epochs:
            engine.terminate()

    def restore(self, engine) -> None:
        """Everything the checkpoint holds, back into the network, optimiser, handlers, RNGs and engine state."""
        ckpt = load_weights(self.path)
        if not isinstance(ckpt, dict) or not {"model", "optimizer", "epoch", "iteration", "rng"} <= ckpt.keys():
            raise DatasetError(f"{self.path}: not a training checkpoint of this project (expected model, optimizer, "
                               "epoch, iteration and rng); move it away to train from scratch")
        load_matching_state(unwrap(self.network), ckpt["model"], self.path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            for k, v in ckpt.get("objects", {}).items():
                if k in self.objects:
                    self.objects[k].load_state_dict(v)
        except (ValueError, KeyError, RuntimeError) as e:
            raise DatasetError(f"{self.path}: its optimiser or schedule state does not fit this training ({e})") from e
        set_rng_state(ckpt["rng"])
        engine.state.epoch = int(ckpt["epoch"])
        engine.state.iteration = int(ckpt["iteration"])

    def save_final(self, engine) -> None:
        if not is_main_process():
            return
        weights = {k: v for k, v in unwrap(self.network).state_dict().items() if not any(p.search(k) for p in self.exclude_weights)}
        atomic_torch_save(weights, self.ckpt_dir / self.final_filename)
        print(f"saved {self.ckpt_dir / self.final_filename}", flush=True)
