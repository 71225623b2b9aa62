"""nnU-Net v2's default trainer, unchanged but for a budget read from the environment and a timestamp per training
iteration, for scripts.benchmark. setup_nnunet_env.sh puts it at the top level of nnU-Net's trainer package:
nnU-Net finds trainers by class name, importing that package's modules, and one of its sub-packages imports
torchvision, which does not load beside CPU torch."""

import json
import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerBudget(nnUNetTrainer):
    """BENCH_EPOCHS x BENCH_ITERATIONS training iterations (BENCH_VAL_ITERATIONS validation ones per epoch);
    `bench_timing.json` in the fold's folder holds the start time of every training iteration (None between
    epochs): the time from one start to the next is a step plus the loading and augmentation of the next batch."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("BENCH_EPOCHS", "4"))
        self.num_iterations_per_epoch = int(os.environ.get("BENCH_ITERATIONS", "25"))
        self.num_val_iterations_per_epoch = int(os.environ.get("BENCH_VAL_ITERATIONS", "5"))
        self.bench_iteration_starts = []

    def train_step(self, batch: dict) -> dict:
        self.bench_iteration_starts.append(time.perf_counter())
        return super().train_step(batch)

    def on_train_epoch_end(self, train_outputs):
        self.bench_iteration_starts.append(None)  # between epochs lies validation: no interval spans it
        super().on_train_epoch_end(train_outputs)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation predicts every held-out case with mirroring: part of its training run, but
        not of a training iteration; the benchmark times inference on its own. BENCH_FINAL_VALIDATION=1 keeps it."""
        if os.environ.get("BENCH_FINAL_VALIDATION", "0") == "1":
            super().perform_actual_validation(save_probabilities)

    def on_train_end(self):
        super().on_train_end()
        starts = [t for t in self.bench_iteration_starts if t is not None]
        with open(os.path.join(self.output_folder, "bench_timing.json"), "w") as f:
            json.dump({"iteration_starts": self.bench_iteration_starts,
                       "iterations_per_epoch": self.num_iterations_per_epoch,
                       # the training loop's wall time: first iteration's start to the end of training
                       "train_seconds": time.perf_counter() - starts[0] if starts else 0.0}, f)
