"""Every public entry point fed bad input, run as the user runs it (a subprocess): the demo data, planning and
verification, the training, inference and export of a trained bundle, DICOM conversion.

Each case must end with a non-zero exit, an `error: ` line naming the input at fault, no traceback, and its
input tree byte for byte as it was (sha256 of every file, before and after). Where the bad input is a pickle
that would run code, the code must not have run.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.test_bad_input import digest, make_tiny_ct_dataset

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BadInput:
    argv: list[str]  # after `python`
    inputs: Path  # the tree that must come out unchanged
    names: str  # what the error must name
    not_created: list[Path] = field(default_factory=list)  # files that must not exist afterwards


@dataclass
class Setting:
    tmp: Path
    data: Path  # a demo dataset (with imagesTs) the trained bundle was trained on
    bundle: Path  # a trained 3D full-res bundle

    def copy_bundle(self) -> Path:
        dest = self.tmp / "bundle"
        shutil.copytree(self.bundle, dest, ignore=shutil.ignore_patterns("logs", "eval", "*.ts"))
        return dest

    def test_folder(self, *cases: tuple[str, np.ndarray]) -> Path:
        """A one-case imagesTs-like folder of the given (file name, voxels) pairs."""
        folder = self.tmp / "inputs"
        folder.mkdir()
        for name, voxels in cases:
            nib.save(nib.Nifti1Image(voxels, np.diag([1.0, 1.0, 3.0, 1.0])), str(folder / name))
        return folder


CASES: dict[str, Callable[[Setting], BadInput]] = {}


def case(fn: Callable[[Setting], BadInput]) -> Callable[[Setting], BadInput]:
    CASES[fn.__name__] = fn
    return fn


def bundle_run(workflow: str, bundle: Path, *args: str, config: str | None = None) -> list[str]:
    cfg = bundle / "configs" / f"{config or {'training': 'train'}.get(workflow, workflow)}.yaml"
    return ["-m", "monai.bundle", "run", workflow, "--config_file", str(cfg), "--bundle_root", str(bundle), *args]


def train(s: Setting, bundle: Path, *args: str) -> list[str]:
    """One iteration on every case (the demo set of 4 training cases is too small for 5 folds)."""
    return bundle_run("training", bundle, "--dataset_dir", str(s.data), "--fold", "all", "--train#trainer#max_epochs", "1",
                      "--iterations_per_epoch", "1", "--num_workers", "0", "--log_dir", str(s.tmp / "logs"), *args)


def infer(bundle: Path, images: Path, output: Path, *args: str, series: bool = False) -> list[str]:
    """Inference on every image of a folder as `--datalist` names them, or with `series`, on the folder as one
    DICOM series."""
    datalist = [{"image": str(images)}] if series else [{"image": str(p)} for p in sorted(images.iterdir())]
    return bundle_run("inference", bundle, "--datalist", repr(datalist), "--output_dir", str(output), *args)


def with_failing_writes(folder: Path, code: str, argv: list[str]) -> list[str]:
    assert argv[0] == "-m"
    return [str(ROOT / "tests" / "failing_writes.py"), str(folder), code, *argv[1:]]


def read_only_folder(path: Path) -> Path | None:
    """A folder nobody may write in: chmod, or for root (whom chmod does not stop) the immutable attribute.
    None where neither holds here; the caller then injects EACCES."""
    path.mkdir()
    path.chmod(0o555)
    if not os.access(path, os.W_OK):
        return path
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        return path
    return None


class CodeRunningPickle:
    """Unpickling this runs `touch <marker>`: what `weights_only=True` must refuse to do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_code_running_pickle(path: Path, marker: Path) -> None:
    torch.save({"model": CodeRunningPickle(marker)}, path)


def plant_weights_of_another_network(path: Path, as_checkpoint: bool) -> None:
    from monai.networks.nets import BasicUNet

    state = BasicUNet(spatial_dims=3, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 16, 4)).state_dict()
    if as_checkpoint:
        state = {"model": state, "optimizer": {}, "epoch": 1, "iteration": 1, "rng": {}}
    torch.save(state, path)


def tiny_dataset(s: Setting) -> Path:
    return make_tiny_ct_dataset(s.tmp / "ds")


def plan(s: Setting, dataset: Path, *args: str) -> list[str]:
    return ["-m", "scripts.plan", "--dataset_dir", str(dataset), "--template", str(ROOT / "bundles" / "nnunet_3d_fullres"),
            "--output_dir", str(s.tmp / "planned"), "--memory_gb", "0.5", *args]


VOLUME = np.full((16, 16, 6), 40.0, np.float32)


# --- the demo data -------------------------------------------------------------------------------------------

@case
def demo_data_with_no_training_cases(s: Setting) -> BadInput:
    return BadInput(["-m", "scripts.make_demo_data", "--output_dir", str(s.tmp / "demo"), "--n_train", "0"], s.tmp, "--n_train")


@case
def demo_data_into_a_folder_holding_other_files(s: Setting) -> BadInput:
    folder = s.tmp / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a demo dataset")
    return BadInput(["-m", "scripts.make_demo_data", "--output_dir", str(folder)], folder, str(folder))


# --- planning and dataset verification -------------------------------------------------------------------------

@case
def plan_of_a_missing_dataset_folder(s: Setting) -> BadInput:
    return BadInput(plan(s, s.tmp / "nowhere"), s.tmp, str(s.tmp / "nowhere"))


@case
def plan_with_an_unknown_template(s: Setting) -> BadInput:
    ds = tiny_dataset(s)
    argv = plan(s, ds)
    argv[argv.index("--template") + 1] = str(s.tmp / "no_template")
    return BadInput(argv, ds, str(s.tmp / "no_template"))


@case
def plan_with_a_negative_memory_budget(s: Setting) -> BadInput:
    ds = tiny_dataset(s)
    return BadInput(plan(s, ds)[:-2] + ["--memory_gb", "-1"], ds, "--memory_gb")


@case
def dataset_json_that_is_not_json(s: Setting) -> BadInput:
    ds = tiny_dataset(s)
    (ds / "dataset.json").write_text('{"name": "TinyCT", "labels": ')
    return BadInput(plan(s, ds), ds, str(ds / "dataset.json"))


@case
def dataset_json_with_the_wrong_schema(s: Setting) -> BadInput:
    ds = tiny_dataset(s)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["labels"] = ["background", "organ"]  # a list, not name -> value
    (ds / "dataset.json").write_text(json.dumps(meta))
    return BadInput(plan(s, ds), ds, str(ds / "dataset.json"))


@case
def zero_byte_image(s: Setting) -> BadInput:
    ds = tiny_dataset(s)
    (ds / "imagesTr" / "case_002_0000.nii.gz").write_bytes(b"")
    return BadInput(plan(s, ds), ds, "imagesTr/case_002_0000.nii.gz")


@case
def truncated_nii_gz(s: Setting) -> BadInput:
    ds = tiny_dataset(s)
    path = ds / "imagesTr" / "case_002_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    return BadInput(plan(s, ds), ds, "imagesTr/case_002_0000.nii.gz")


@case
def one_voxel_training_image(s: Setting) -> BadInput:
    ds = tiny_dataset(s)
    nib.save(nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4)), str(ds / "imagesTr" / "case_002_0000.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), np.eye(4)), str(ds / "labelsTr" / "case_002.nii.gz"))
    return BadInput(plan(s, ds), ds, "imagesTr/case_002_0000.nii.gz")


@case
def plan_into_a_read_only_folder(s: Setting) -> BadInput:
    ds = tiny_dataset(s)
    folder = read_only_folder(s.tmp / "locked")
    argv = plan(s, ds)
    if folder is None:
        folder = s.tmp / "locked"
        argv = with_failing_writes(folder, "EACCES", argv)
    argv[argv.index("--output_dir") + 1] = str(folder / "planned")
    return BadInput(argv, ds, str(folder / "planned"))


@case
def verify_a_missing_dataset_folder(s: Setting) -> BadInput:
    return BadInput(["-m", "scripts.verify_dataset", "--dataset_dir", str(s.tmp / "nowhere")], s.tmp, str(s.tmp / "nowhere"))


# --- training ------------------------------------------------------------------------------------------------

@case
def training_override_with_an_unknown_id(s: Setting) -> BadInput:
    bundle = s.copy_bundle()
    return BadInput(train(s, bundle, "--iteration_per_epoch", "5"), bundle, "--iteration_per_epoch")


@case
def training_on_a_missing_dataset_folder(s: Setting) -> BadInput:
    bundle = s.copy_bundle()
    argv = train(s, bundle)
    argv[argv.index("--dataset_dir") + 1] = str(s.tmp / "nowhere")
    return BadInput(argv, bundle, str(s.tmp / "nowhere"))


@case
def training_fold_out_of_range(s: Setting) -> BadInput:
    bundle = s.copy_bundle()
    argv = train(s, bundle)
    argv[argv.index("--fold") + 1] = "7"
    return BadInput(argv, bundle, "--fold 7")


@case
def training_resumes_from_a_checkpoint_of_another_network(s: Setting) -> BadInput:
    bundle = s.copy_bundle()
    plant_weights_of_another_network(bundle / "models" / "checkpoint_latest.pt", as_checkpoint=True)
    return BadInput(train(s, bundle), bundle, str(bundle / "models" / "checkpoint_latest.pt"))


@case
def training_resumes_from_a_pickle_that_runs_code(s: Setting) -> BadInput:
    bundle = s.copy_bundle()
    marker = s.tmp / "code_ran"
    plant_code_running_pickle(bundle / "models" / "checkpoint_latest.pt", marker)
    return BadInput(train(s, bundle), bundle, str(bundle / "models" / "checkpoint_latest.pt"), [marker])


@case
def training_on_a_full_disk(s: Setting) -> BadInput:
    bundle = s.copy_bundle()
    (bundle / "models" / "checkpoint_latest.pt").unlink()  # train from scratch, to reach the first checkpoint save
    models = s.tmp / "models"
    models.mkdir()
    argv = with_failing_writes(models, "ENOSPC", train(s, bundle, "--ckpt_dir", str(models)))
    return BadInput(argv, bundle, str(models / "checkpoint_latest.pt"))


# --- inference and export --------------------------------------------------------------------------------------

@case
def inference_override_with_an_unknown_id(s: Setting) -> BadInput:
    bundle = s.copy_bundle()
    return BadInput(bundle_run("inference", bundle, "--dataset_dir", str(s.data), "--output_dir", str(s.tmp / "out"),
                               "--use_mirrorring", "False"), bundle, "--use_mirrorring")


@case
def four_d_image_to_a_3d_bundle(s: Setting) -> BadInput:
    folder = s.test_folder(("two_channels_0000.nii.gz", np.stack([VOLUME, VOLUME], axis=-1)))
    return BadInput(infer(s.bundle, folder, s.tmp / "out"), folder, "two_channels_0000.nii.gz")


@case
def zero_byte_image_to_inference(s: Setting) -> BadInput:
    folder = s.tmp / "inputs"
    folder.mkdir()
    (folder / "empty_0000.nii.gz").write_bytes(b"")
    return BadInput(infer(s.bundle, folder, s.tmp / "out"), folder, "empty_0000.nii.gz")


@case
def truncated_nii_gz_to_inference(s: Setting) -> BadInput:
    folder = s.test_folder(("cut_0000.nii.gz", VOLUME))
    data = (folder / "cut_0000.nii.gz").read_bytes()
    (folder / "cut_0000.nii.gz").write_bytes(data[: len(data) // 2])
    return BadInput(infer(s.bundle, folder, s.tmp / "out"), folder, "cut_0000.nii.gz")


@case
def one_voxel_image_to_inference(s: Setting) -> BadInput:
    folder = s.test_folder(("point_0000.nii.gz", np.zeros((1, 1, 1), np.float32)))
    return BadInput(infer(s.bundle, folder, s.tmp / "out"), folder, "point_0000.nii.gz")


@case
def inference_with_weights_of_another_network(s: Setting) -> BadInput:
    bundle = s.copy_bundle()
    plant_weights_of_another_network(bundle / "models" / "model.pt", as_checkpoint=False)
    return BadInput(infer(bundle, s.data / "imagesTs", s.tmp / "out"), bundle, str(bundle / "models" / "model.pt"))


@case
def inference_with_a_pickle_that_runs_code(s: Setting) -> BadInput:
    bundle = s.copy_bundle()
    marker = s.tmp / "code_ran"
    plant_code_running_pickle(bundle / "models" / "model.pt", marker)
    return BadInput(infer(bundle, s.data / "imagesTs", s.tmp / "out"), bundle, str(bundle / "models" / "model.pt"), [marker])


@case
def inference_into_a_read_only_folder(s: Setting) -> BadInput:
    folder = read_only_folder(s.tmp / "locked")
    if folder is None:
        folder = s.tmp / "locked"
        return BadInput(with_failing_writes(folder, "EACCES", infer(s.bundle, s.data / "imagesTs", folder)), s.data, str(folder))
    return BadInput(infer(s.bundle, s.data / "imagesTs", folder), s.data, str(folder))


@case
def inference_on_a_full_disk(s: Setting) -> BadInput:
    out = s.tmp / "out"
    out.mkdir()
    argv = with_failing_writes(out, "ENOSPC", infer(s.bundle, s.data / "imagesTs", out))
    case_id = next((s.data / "imagesTs").iterdir()).name.replace("_0000.nii.gz", "")
    return BadInput(argv, s.data, str(out / f"{case_id}.nii.gz"), [out / f"{case_id}.nii.gz"])


@case
def export_of_a_pickle_that_runs_code(s: Setting) -> BadInput:
    bundle = s.copy_bundle()
    marker = s.tmp / "code_ran"
    plant_code_running_pickle(bundle / "models" / "model.pt", marker)
    return BadInput(["-m", "scripts.export", "--bundle_root", str(bundle)], bundle, str(bundle / "models" / "model.pt"), [marker])


# --- DICOM input ---------------------------------------------------------------------------------------------

@case
def dicom_conversion_of_an_empty_folder(s: Setting) -> BadInput:
    folder = s.tmp / "series"
    folder.mkdir()
    return BadInput(["-m", "scripts.dicom_to_nifti", "--input_dir", str(folder), "--output_dir", str(s.tmp / "nifti")],
                    folder, str(folder))


@case
def inference_on_an_empty_dicom_folder(s: Setting) -> BadInput:
    folder = s.tmp / "series"
    folder.mkdir()
    return BadInput(infer(s.bundle, folder, s.tmp / "out", series=True), folder, str(folder))


@case
def inference_on_a_folder_of_files_that_are_not_dicom(s: Setting) -> BadInput:
    series = s.tmp / "inputs" / "series"
    series.mkdir(parents=True)
    for i in range(3):
        (series / f"slice_{i}.dcm").write_bytes(gzip.compress(b"not a DICOM file"))
    return BadInput(infer(s.bundle, series, s.tmp / "out", series=True), series.parent, str(series))


def test_the_suite_covers_at_least_25_distinct_bad_inputs():
    assert len(CASES) >= 25 and len(set(CASES.values())) == len(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_ends_with_one_clear_error_and_leaves_the_input_untouched(name, trained_fullres, tmp_path):
    data, bundle = trained_fullres
    bad = CASES[name](Setting(tmp_path, data, bundle))
    before = digest(bad.inputs)
    try:
        proc = subprocess.run([sys.executable, *bad.argv], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "locked")], capture_output=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-5000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert any(bad.names in line for line in errors), f"no error naming {bad.names!r}:\n{proc.stderr[-3000:]}"
    assert digest(bad.inputs) == before
    assert not [p for p in bad.not_created if p.exists()]
