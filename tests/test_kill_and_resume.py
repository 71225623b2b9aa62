"""Training killed with SIGKILL, mid-epoch or in the middle of a checkpoint save, and started again with the same
command: it resumes from the last epoch's checkpoint, finishes with the right epoch count and a continuous
metric history, never leaves a half-written checkpoint, and ends with the weights of a run never stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_bundle_workflow import ROOT, bundle_run, planned_3d  # noqa: F401 - planned_3d is a fixture

EPOCHS, ITERATIONS = 3, 3
# validation every epoch gives a metric history; no workers, so that resumption is bit-identical
ARGS = ("--train#trainer#max_epochs", str(EPOCHS), "--iterations_per_epoch", str(ITERATIONS), "--val_interval", "1",
        "--num_workers", "0")


def fresh_copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest, ignore=shutil.ignore_patterns("models", "logs"))
    return dest


def train(bundle: Path, data: Path) -> subprocess.CompletedProcess:
    return bundle_run("training", bundle, "--dataset_dir", str(data), *ARGS)


def train_until_killed(bundle: Path, data: Path, point: str, n: int) -> None:
    """Start training that holds still at `point` (see tests/killable_training.py), then SIGKILL it there."""
    marker = bundle / "held"
    cmd = [sys.executable, str(ROOT / "tests" / "killable_training.py"), str(marker), point, str(n), "run", "training",
           "--config_file", str(bundle / "configs" / "train.yaml"), "--bundle_root", str(bundle),
           "--dataset_dir", str(data), *ARGS]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, f"training ended before the kill point:\n{proc.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, "training never reached the kill point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stdout.close()
    marker.unlink()


def checkpoint_epoch(bundle: Path) -> int:
    return int(torch.load(bundle / "models" / "checkpoint_latest.pt", weights_only=True)["epoch"])


def history(bundle: Path) -> list[dict]:
    return json.loads((bundle / "logs" / "progress.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(planned_3d, tmp_path_factory):  # noqa: F811
    data, bundle = planned_3d
    copy = fresh_copy(bundle, tmp_path_factory.mktemp("uninterrupted") / "bundle")
    train(copy, data)
    return copy


def assert_resumed_like_the_uninterrupted_run(copy: Path, data: Path, reference: Path, killed_in_epoch: int) -> None:
    proc = train(copy, data)
    assert f"at epoch {killed_in_epoch - 1}" in proc.stdout and f"epoch {EPOCHS}/{EPOCHS}" in proc.stdout
    assert f"epoch {killed_in_epoch - 1}/{EPOCHS}" not in proc.stdout  # finished epochs are not trained again
    ckpt = torch.load(copy / "models" / "checkpoint_latest.pt", weights_only=True)
    assert ckpt["epoch"] == EPOCHS and ckpt["iteration"] == EPOCHS * ITERATIONS
    assert {"model", "optimizer", "rng"} <= ckpt.keys() and {"schedule", "progress"} <= ckpt["objects"].keys()
    got, want = history(copy), history(reference)
    assert ckpt["objects"]["progress"]["best_val_dice"] == max(h["val_dice"] for h in got)
    assert [h["epoch"] for h in got] == list(range(1, EPOCHS + 1))  # continuous: no gap, no repeat
    assert all(h["val_dice"] is not None for h in got)
    for g, w in zip(got, want):  # the same losses and Dice, epoch by epoch
        assert (g["loss"], g["val_dice"]) == (w["loss"], w["val_dice"]), (g, w)
    final = torch.load(copy / "models" / "model.pt", weights_only=True)
    expected = torch.load(reference / "models" / "model.pt", weights_only=True)
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    assert not list((copy / "models").glob(".*.tmp*"))  # the interrupted save's temporary file is gone


def test_training_killed_mid_epoch_resumes_and_ends_with_the_uninterrupted_weights(planned_3d, uninterrupted, tmp_path):  # noqa: F811
    data, bundle = planned_3d
    copy = fresh_copy(bundle, tmp_path / "bundle")
    train_until_killed(copy, data, "iteration", ITERATIONS + 1)  # the first iteration of epoch 2
    assert checkpoint_epoch(copy) == 1 and [h["epoch"] for h in history(copy)] == [1]
    assert not (copy / "models" / "model.pt").exists()
    assert_resumed_like_the_uninterrupted_run(copy, data, uninterrupted, killed_in_epoch=2)


def test_training_killed_while_saving_a_checkpoint_keeps_the_previous_one_and_resumes(planned_3d, uninterrupted, tmp_path):  # noqa: F811
    data, bundle = planned_3d
    copy = fresh_copy(bundle, tmp_path / "bundle")
    train_until_killed(copy, data, "save", 2)  # half-way through writing epoch 2's checkpoint
    assert list((copy / "models").glob(".checkpoint_latest.pt.*.tmp*"))  # the half-written file is the temporary one
    assert checkpoint_epoch(copy) == 1  # the checkpoint itself is epoch 1's, whole
    # epoch 2 was logged before its checkpoint: the resumed run trains it again and logs it once
    assert [h["epoch"] for h in history(copy)] == [1, 2]
    assert_resumed_like_the_uninterrupted_run(copy, data, uninterrupted, killed_in_epoch=2)
