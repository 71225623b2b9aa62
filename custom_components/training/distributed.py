"""torch.distributed for the training handlers: which process writes, numbers every rank must agree on, and a
report of what each rank did.

Every rank runs the same handlers in the same order, so a collective call made from an epoch-end handler meets
its partners on the other ranks. Outside a distributed run each helper is the single-process identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Events

from custom_components.io_utils import atomic_write_json


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main_process() -> bool:
    """Rank 0 of a torch.distributed run, or the only process: the one that writes files."""
    return not is_distributed() or torch.distributed.get_rank() == 0


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside DistributedDataParallel (its state_dict has no `module.` prefix)."""
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


def mean_across_ranks(total: float, count: int) -> float | None:
    """The mean of a per-rank sum over all ranks' items (None where there were none), so that an epoch's loss
    (and a schedule driven by it) is the same number on every rank; otherwise the ranks' learning rates, and then
    their weights, drift apart. Every rank must call it, whatever its own count."""
    if is_distributed():
        t = torch.tensor([float(total), float(count)], dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            t = t.cuda()
        torch.distributed.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / count if count else None


def same_on_every_rank(value: int) -> bool:
    """Whether every rank holds the same integer (always, in a single process)."""
    if not is_distributed():
        return True
    t = torch.tensor([int(value), -int(value)], dtype=torch.int64)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t[0]) == -int(t[1])


def validation_sampler(dataset):
    """Each rank validates its own share of the held-out cases; MONAI's metrics gather every rank's scores
    before reducing them. With fewer cases than ranks, cases repeat so that no rank has an empty loader (the mean
    then weights the repeated cases twice)."""
    if not is_distributed():
        return None
    from monai.data import DistributedSampler

    return DistributedSampler(dataset, even_divisible=len(dataset) < torch.distributed.get_world_size(), shuffle=False)


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state_dict's names and values, independent of how the file holding it was written."""
    h = hashlib.sha256()
    for name, value in state_dict.items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _case_ids(dataset, indices) -> list[str]:
    """The datalist's case ids (or else indices) of the items a sampler gave."""
    data = getattr(dataset, "data", None)
    return sorted({str(data[i].get("id", i)) if data is not None else str(i) for i in indices})


class DistributedReport:
    """Ignite handler: at the end of a distributed run, rank 0 writes `<log_dir>/distributed.json`, one entry per
    rank: its iterations, its share of the training cases in each of the first epochs (reshuffled every epoch),
    the validation cases it scored, its last validation metric and the digest of its final weights. Iterations
    and shares count from this run's start, a resumed run's too. Does nothing in a single-process run."""

    MAX_EPOCHS = 10

    def __init__(self, log_dir: str, network: torch.nn.Module, sampler=None, validator=None,
                 metric_name: str = "val_mean_dice", filename: str = "distributed.json") -> None:
        self.path = Path(log_dir) / filename
        self.network = network
        self.sampler = sampler
        self.validator = validator
        self.metric_name = metric_name
        self.train_cases: list[list[str]] = []
        self.iterations = 0

    def attach(self, engine) -> None:
        if is_distributed():
            engine.add_event_handler(Events.EPOCH_STARTED, self._record_cases)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
            engine.add_event_handler(Events.COMPLETED, self.write)

    def _record_cases(self, engine) -> None:
        """The rank's share of the cases for this epoch, as its sampler holds them (the first `MAX_EPOCHS`)."""
        if self.sampler is not None and len(self.train_cases) < self.MAX_EPOCHS:  # the sampler's epoch is set
            self.train_cases.append(_case_ids(engine.state.dataloader.dataset, list(iter(self.sampler))))

    def _count(self, engine) -> None:
        self.iterations += 1

    def rank_entry(self) -> dict:
        entry = {"rank": torch.distributed.get_rank(), "iterations": self.iterations, "train_cases": self.train_cases,
                 "weights_sha256": weights_digest(unwrap(self.network).state_dict())}
        loader = getattr(self.validator, "data_loader", None)
        if loader is not None and loader.sampler is not None:
            entry["val_cases"] = _case_ids(loader.dataset, list(iter(loader.sampler)))
        state = getattr(self.validator, "state", None)
        if state is not None and self.metric_name in getattr(state, "metrics", {}):
            entry[self.metric_name] = float(state.metrics[self.metric_name])
        return entry

    def write(self, engine) -> None:
        entries: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(entries, self.rank_entry())
        if is_main_process():
            atomic_write_json(self.path, {"world_size": len(entries), "ranks": entries})
