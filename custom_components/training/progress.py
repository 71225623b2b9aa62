"""One line per epoch (loss, lr, validation Dice, time), `progress.json` and a training-curve PNG in the log folder."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Events

from custom_components.io_utils import atomic_path, atomic_write_json
from custom_components.training.distributed import is_main_process, mean_across_ranks
from custom_components.training.schedules import batch_loss


def plot_training_curve(history: list[dict], path: str | Path) -> None:
    """Training loss and validation Dice against epochs, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [h["loss"] for h in history], "b-", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    val = [(h["epoch"], h["val_dice"]) for h in history if h.get("val_dice") is not None]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "g-o", markersize=3, label="validation Dice")
        ax2.set_ylabel("Dice")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


class TrainingProgress:
    """Ignite handler that logs each epoch and keeps the metric history (saved in the checkpoint too, so a
    resumed run's history stays continuous)."""

    def __init__(self, log_dir: str, optimizer, validator=None, metric_name: str = "val_mean_dice", plot: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self.optimizer = optimizer
        self.validator = validator
        self.metric_name = metric_name
        self.plot = plot
        self.history: list[dict] = []
        self._sum, self._n, self._t0 = 0.0, 0, 0.0
        self._starts: list[float] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_STARTED, lambda _: self._starts.append(time.perf_counter()))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.log_epoch)

    def _reset(self, engine) -> None:
        self._sum, self._n, self._t0 = 0.0, 0, time.perf_counter()
        self._starts = []

    def _iteration_seconds(self) -> float | None:
        """The epoch's median time from one iteration's start to the next: the step plus loading and augmenting
        the next batch (ignite fetches a batch before the iteration starts)."""
        gaps = [b - a for a, b in zip(self._starts, self._starts[1:])]
        return round(statistics.median(gaps), 4) if gaps else None

    def _accumulate(self, engine) -> None:
        self._sum += batch_loss(engine)
        self._n += 1

    def _val_dice(self, epoch: int):
        if self.validator is None or self.validator.state is None:
            return None
        if self.validator.state.epoch != epoch:  # MONAI's evaluator runs with the trainer's epoch as its own
            return None
        value = self.validator.state.metrics.get(self.metric_name)
        return None if value is None else float(value)

    def log_epoch(self, engine) -> None:
        epoch = engine.state.epoch
        entry = {
            "epoch": epoch,
            "loss": mean_across_ranks(self._sum, self._n) or 0.0,  # every rank's batches
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "val_dice": self._val_dice(epoch),
            "seconds": round(time.perf_counter() - self._t0, 2),
            "iteration_seconds": self._iteration_seconds(),
        }
        if torch.cuda.is_available():  # the comparison reports the peak device memory of training
            entry["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        self.history.append(entry)
        if not is_main_process():
            return
        val = "" if entry["val_dice"] is None else f"  val Dice {entry['val_dice']:.4f}"
        print(f"epoch {epoch}/{engine.state.max_epochs}  loss {entry['loss']:.4f}  lr {entry['lr']:.2e}{val}  ({entry['seconds']:.1f} s)", flush=True)
        atomic_write_json(self.log_dir / "progress.json", self.history)
        if self.plot:
            plot_training_curve(self.history, self.log_dir / "training_curve.png")

    def best(self) -> tuple[float | None, int | None]:
        """The best validation Dice so far and its epoch (None before the first validation)."""
        scored = [(h["val_dice"], h["epoch"]) for h in self.history if h.get("val_dice") is not None]
        return max(scored, key=lambda t: (t[0], -t[1])) if scored else (None, None)

    def state_dict(self) -> dict:
        best, epoch = self.best()  # in the checkpoint for whoever reads it; derived again from history on load
        return {"history": self.history, "best_val_dice": best, "best_epoch": epoch}

    def load_state_dict(self, state: Mapping) -> None:
        self.history = list(state["history"])

