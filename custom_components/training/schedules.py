"""nnU-Net's optimisers and learning-rate schedules, chosen by name from the bundle config.

- `nnunet_v1` (the brief): Adam (lr 3e-4, weight decay 3e-5); the lr is multiplied by 0.2 when the
  exponential moving average of the epoch training loss has not improved (by 1e-3) for 30 epochs; training
  stops when the lr falls below 1e-6.
- `nnunet_v2`: SGD with Nesterov momentum 0.99, lr 1e-2, poly decay (1 - epoch/max_epochs)^0.9, gradient
  norm clipped at 12.
- `step` and `constant` kinds, for the papers of the other U-Nets: the lr multiplied by `step_gamma` every
  `step_epochs` epochs, or left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.handlers import from_engine

from custom_components.training.distributed import mean_across_ranks


def build_optimizer(params: Iterable[torch.nn.Parameter], settings: Mapping) -> torch.optim.Optimizer:
    """Adam or SGD as a schedule's settings say (`optimizer`, `lr`, `weight_decay`, `amsgrad` (Adam; nnU-Net v1
    uses it, so it defaults on), `momentum`, `nesterov`)."""
    name = str(settings["optimizer"]).lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=settings["lr"], weight_decay=settings.get("weight_decay", 0.0),
                                amsgrad=bool(settings.get("amsgrad", True)))
    if name == "sgd":
        return torch.optim.SGD(params, lr=settings["lr"], weight_decay=settings.get("weight_decay", 0.0),
                               momentum=settings.get("momentum", 0.99), nesterov=bool(settings.get("nesterov", True)))
    raise ValueError(f"unknown optimizer {name!r} in the schedule settings; expected 'adam' or 'sgd'")


def batch_loss(engine) -> float:
    return float(from_engine("loss", first=True)(engine.state.output))


class PlateauSchedule:
    """nnU-Net v1's schedule as an ignite handler: ReduceLROnPlateau on the moving-average training loss,
    and an early stop once the lr is below `min_lr`."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: float = 0.2, patience: int = 30,
                 threshold: float = 1e-3, min_lr: float = 1e-6, loss_ma_alpha: float = 0.93) -> None:
        self.optimizer = optimizer
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=factor, patience=patience, threshold=threshold, threshold_mode="abs")
        self.min_lr = min_lr
        self.alpha = loss_ma_alpha
        self.loss_ma: float | None = None
        self._sum, self._n = 0.0, 0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.step)

    def _reset(self, engine) -> None:
        self._sum, self._n = 0.0, 0

    def _accumulate(self, engine) -> None:
        self._sum += batch_loss(engine)
        self._n += 1

    def step(self, engine) -> None:
        loss = mean_across_ranks(self._sum, self._n)  # the same on every rank, so their lrs stay equal
        if loss is None:
            return
        self.loss_ma = loss if self.loss_ma is None else self.alpha * self.loss_ma + (1 - self.alpha) * loss
        self.scheduler.step(self.loss_ma)
        lr = self.optimizer.param_groups[0]["lr"]
        if lr < self.min_lr:
            print(f"learning rate {lr:.2e} < {self.min_lr:.0e}: stopping (nnU-Net v1 rule)", flush=True)
            engine.terminate()

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict(), "loss_ma": self.loss_ma}

    def load_state_dict(self, state: Mapping) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.loss_ma = state["loss_ma"]


class PolySchedule:
    """nnU-Net v2's schedule: lr = lr0 * (1 - epoch / max_epochs)^power, set at the start of each epoch,
    and the gradient norm clipped after each backward pass."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_epochs: int, power: float = 0.9, grad_clip: float = 12.0) -> None:
        self.optimizer = optimizer
        self.initial_lr = [g["lr"] for g in optimizer.param_groups]
        self.max_epochs = max(1, int(max_epochs))
        self.power = power
        self.grad_clip = grad_clip

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.set_lr)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self.clip)

    def set_lr(self, engine) -> None:
        factor = (1 - (engine.state.epoch - 1) / self.max_epochs) ** self.power
        for group, lr0 in zip(self.optimizer.param_groups, self.initial_lr):
            group["lr"] = lr0 * factor

    def clip(self, engine) -> None:
        if self.grad_clip and self.grad_clip > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)

    def state_dict(self) -> dict:
        return {"initial_lr": self.initial_lr}

    def load_state_dict(self, state: Mapping) -> None:
        self.initial_lr = list(state["initial_lr"])


class StepSchedule:
    """lr = lr0 * gamma^((epoch - 1) // step_epochs), set at the start of each epoch (gamma 1: a constant lr)."""

    def __init__(self, optimizer: torch.optim.Optimizer, step_epochs: int = 1, gamma: float = 1.0) -> None:
        if int(step_epochs) < 1:
            raise ValueError(f"step_epochs must be >= 1, got {step_epochs}")
        self.optimizer = optimizer
        self.initial_lr = [g["lr"] for g in optimizer.param_groups]
        self.step_epochs = int(step_epochs)
        self.gamma = float(gamma)

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.set_lr)

    def set_lr(self, engine) -> None:
        factor = self.gamma ** ((engine.state.epoch - 1) // self.step_epochs)
        for group, lr0 in zip(self.optimizer.param_groups, self.initial_lr):
            group["lr"] = lr0 * factor

    def state_dict(self) -> dict:
        return {"initial_lr": self.initial_lr}

    def load_state_dict(self, state: Mapping) -> None:
        self.initial_lr = list(state["initial_lr"])


def build_schedule(optimizer: torch.optim.Optimizer, settings: Mapping, max_epochs: int):
    """The schedule handler that goes with a schedule's settings (`kind`: plateau, poly, step or constant)."""
    kind = str(settings.get("kind", "plateau")).lower()
    if kind == "plateau":
        return PlateauSchedule(optimizer, factor=settings.get("plateau_factor", 0.2), patience=settings.get("plateau_patience", 30),
                               threshold=settings.get("plateau_threshold", 1e-3), min_lr=settings.get("min_lr", 1e-6),
                               loss_ma_alpha=settings.get("loss_ma_alpha", 0.93))
    if kind == "poly":
        return PolySchedule(optimizer, max_epochs=max_epochs, power=settings.get("poly_power", 0.9), grad_clip=settings.get("grad_clip", 12.0))
    if kind == "step":
        return StepSchedule(optimizer, step_epochs=settings.get("step_epochs", 1), gamma=settings.get("step_gamma", 0.1))
    if kind == "constant":
        return StepSchedule(optimizer)
    raise ValueError(f"unknown schedule kind {kind!r}; expected 'plateau', 'poly', 'step' or 'constant'")
