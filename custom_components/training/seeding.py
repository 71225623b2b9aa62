"""Every training epoch's randomness drawn from (seed, epoch, rank) alone, so that a run resumed from an
epoch's checkpoint makes the same draws as a run that was never stopped.

The checkpoint also keeps the random number generator states, but they cannot cover the random state of each
augmentation transform (kept per transform, and per DataLoader worker). Reseeding at the start of each epoch does:
the sampler and the DataLoader's workers take their seeds from torch's generator when the epoch's iterator is
made, which ignite does after EPOCH_STARTED; with num_workers 0, the transforms are reseeded here.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from ignite.engine import Events
from monai.data.utils import set_rnd

from custom_components.training.distributed import is_distributed


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 1009 + int(rank)) % 2**32


class EpochSeed:
    """Ignite handler: at each epoch start, seed torch, numpy, `random` and the random transforms of `dataset`
    from (seed, epoch, rank). Bit-identical resumption also needs DataLoader workers that are made anew each
    epoch (num_workers 0, or persistent_workers False), since persistent workers keep their own random state."""

    def __init__(self, seed: int, dataset=None) -> None:
        self.seed = int(seed)
        self.dataset = dataset

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reseed)

    def reseed(self, engine) -> None:
        s = epoch_seed(self.seed, engine.state.epoch, torch.distributed.get_rank() if is_distributed() else 0)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        if self.dataset is not None:
            set_rnd(getattr(self.dataset, "transform", self.dataset), s)
