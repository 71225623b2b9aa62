"""Bad input gives a clear error that names the file at fault, a non-zero exit from `scripts.plan` without a
traceback, and leaves the input folder untouched.

Every case starts from the same tiny valid CT dataset (6 cases, 16x16x6 voxels, spacing 1x1x3 mm) and
breaks one thing in case_003. Every case runs `scripts.plan.main` (what the command line runs) in-process;
the command line itself runs as a subprocess for one case of each way planning can fail, because each start
costs ~5 s of CPU importing torch and MONAI.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from custom_components.data import DatasetError, read_dataset, training_datalist
from custom_components.planning.dataset_plan import plan_dataset
from custom_components.transforms import CheckImaged
from scripts import plan as plan_cli

REPO = Path(__file__).resolve().parent.parent
SHAPE = (16, 16, 6)
AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])
N_CASES = 6
BROKEN = "case_003"
MEMORY_GB = 0.5


def image_path(root: Path, case: str = BROKEN) -> Path:
    return root / "imagesTr" / f"{case}_0000.nii.gz"


def label_path(root: Path, case: str = BROKEN) -> Path:
    return root / "labelsTr" / f"{case}.nii.gz"


def save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


def make_tiny_ct_dataset(root: Path) -> Path:
    """Air (-1000 HU) around soft tissue (~40 HU) with a foreground block labelled 1."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    for i in range(N_CASES):
        image = rng.normal(40.0, 10.0, SHAPE).astype(np.float32)
        image[:2] = -1000.0
        label = np.zeros(SHAPE, np.uint8)
        label[5:11, 5:11, 1:5] = 1
        save(image, image_path(root, f"case_{i:03d}"))
        save(label, label_path(root, f"case_{i:03d}"))
    (root / "dataset.json").write_text(json.dumps({
        "name": "TinyCT", "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1},
        "numTraining": N_CASES, "file_ending": ".nii.gz",
    }))
    return root


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under the dataset folder (a file added or removed changes it too)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def read_array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).copy()


# --- the ways to break the dataset: each returns the text the error must contain (the file at fault) --------

def delete_image(root: Path) -> str:
    image_path(root).unlink()
    return f"imagesTr/{BROKEN}_0000.nii.gz"


def delete_label(root: Path) -> str:
    label_path(root).unlink()
    return f"labelsTr/{BROKEN}.nii.gz"


def truncate_image(root: Path) -> str:
    data = image_path(root).read_bytes()
    image_path(root).write_bytes(data[: len(data) // 2])
    return f"imagesTr/{BROKEN}_0000.nii.gz"


def label_of_another_shape(root: Path) -> str:
    save(np.zeros((16, 16, 5), np.uint8), label_path(root))
    return f"labelsTr/{BROKEN}.nii.gz"


def label_with_another_affine(root: Path) -> str:
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0  # 5 mm off: same grid size, different place in the world
    save(read_array(label_path(root)), label_path(root), shifted)
    return f"labelsTr/{BROKEN}.nii.gz"


def label_value_not_in_dataset_json(root: Path) -> str:
    label = read_array(label_path(root))
    label[7, 7, 2] = 5
    save(label, label_path(root))
    return f"labelsTr/{BROKEN}.nii.gz"


def nan_intensity(root: Path) -> str:
    image = read_array(image_path(root))
    image[7, 7, 2] = np.nan
    save(image, image_path(root))
    return f"imagesTr/{BROKEN}_0000.nii.gz"


def inf_intensity(root: Path) -> str:
    image = read_array(image_path(root))
    image[3, 9, 4] = np.inf
    save(image, image_path(root))
    return f"imagesTr/{BROKEN}_0000.nii.gz"


def no_training_cases(root: Path) -> str:
    for p in list((root / "imagesTr").iterdir()) + list((root / "labelsTr").iterdir()):
        p.unlink()
    return str(root)


def two_d_image(root: Path) -> str:
    save(np.zeros(SHAPE[:2], np.float32), image_path(root))
    save(np.zeros(SHAPE[:2], np.uint8), label_path(root))
    return f"imagesTr/{BROKEN}_0000.nii.gz"


BREAKERS = {f.__name__: f for f in (
    delete_image, delete_label, truncate_image, label_of_another_shape, label_with_another_affine,
    label_value_not_in_dataset_json, nan_intensity, inf_intensity, no_training_cases, two_d_image,
)}


@dataclass
class BrokenDataset:
    root: Path
    fault: str
    before: dict[str, str]


def run_plan_cli(dataset_dir: Path, output_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scripts.plan", "--dataset_dir", str(dataset_dir), "--template", "bundles/nnunet_3d_fullres",
         "--output_dir", str(output_dir), "--memory_gb", str(MEMORY_GB)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def run_plan_main(dataset_dir: Path, output_dir: Path, capsys) -> tuple[int, str]:
    """`scripts.plan.main`, the function `python -m scripts.plan` runs, in this process: (exit code, stderr).

    An exception other than SystemExit escaping it is what the command line would print as a traceback."""
    capsys.readouterr()
    try:
        plan_cli.main(dataset_dir=str(dataset_dir), template=str(REPO / "bundles" / "nnunet_3d_fullres"),
                      output_dir=str(output_dir), memory_gb=MEMORY_GB)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except Exception as e:  # noqa: BLE001 - report it the way the user would see it
        pytest.fail(f"scripts.plan would print a traceback: {type(e).__name__}: {e}")
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """Every broken dataset, built once for the module."""
    cases = {}
    for name, breaker in BREAKERS.items():
        root = make_tiny_ct_dataset(tmp_path_factory.mktemp(name) / "ds")
        fault = breaker(root)
        cases[name] = BrokenDataset(root, fault, digest(root))
    return cases


def assert_rejected_naming_the_file(case: BrokenDataset, tmp_path: Path, capsys) -> None:
    code, stderr = run_plan_main(case.root, tmp_path / "planned", capsys)
    assert code != 0, "the planner accepted the broken dataset"
    assert "error: " in stderr and case.fault in stderr, stderr
    assert not (tmp_path / "planned" / "configs" / "plans.json").exists()  # no plan from bad input
    assert digest(case.root) == case.before  # the input folder is read, never written


# --- the planner on each broken dataset ------------------------------------------------------------------

def test_tiny_dataset_plans_cleanly_before_it_is_broken(tmp_path, capsys):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    before = digest(root)
    code, stderr = run_plan_main(root, tmp_path / "planned", capsys)
    assert code == 0, stderr
    plans = json.loads((tmp_path / "planned" / "configs" / "plans.json").read_text())
    assert plans["num_channels"] == 1 and len(plans["fingerprint"]["spacings"]) == N_CASES
    assert digest(root) == before


def test_missing_image_file_is_named(broken, tmp_path, capsys):
    # The label of case_003 is still there and dataset.json says numTraining 6: the case must not vanish silently.
    assert_rejected_naming_the_file(broken["delete_image"], tmp_path, capsys)


def test_missing_label_file_is_named(broken, tmp_path, capsys):
    assert_rejected_naming_the_file(broken["delete_label"], tmp_path, capsys)


def test_truncated_image_file_is_named(broken, tmp_path, capsys):
    assert_rejected_naming_the_file(broken["truncate_image"], tmp_path, capsys)


def test_label_with_another_shape_is_named(broken, tmp_path, capsys):
    assert_rejected_naming_the_file(broken["label_of_another_shape"], tmp_path, capsys)


def test_label_with_another_affine_is_named(broken, tmp_path, capsys):
    assert_rejected_naming_the_file(broken["label_with_another_affine"], tmp_path, capsys)


def test_label_value_outside_dataset_json_labels_is_named(broken, tmp_path, capsys):
    case = broken["label_value_not_in_dataset_json"]
    assert_rejected_naming_the_file(case, tmp_path, capsys)
    with pytest.raises(DatasetError, match=r"\[5\]"):  # the offending value is shown too
        plan_dataset(case.root, memory_gb=MEMORY_GB)


def test_nan_intensity_is_named(broken, tmp_path, capsys):
    assert_rejected_naming_the_file(broken["nan_intensity"], tmp_path, capsys)


def test_inf_intensity_is_named(broken, tmp_path, capsys):
    assert_rejected_naming_the_file(broken["inf_intensity"], tmp_path, capsys)


def test_empty_dataset_is_an_error_naming_the_folder(broken, tmp_path, capsys):
    case = broken["no_training_cases"]
    assert_rejected_naming_the_file(case, tmp_path, capsys)
    with pytest.raises(DatasetError, match="no training cases"):
        plan_dataset(case.root, memory_gb=MEMORY_GB)


def test_2d_image_given_to_the_3d_planner_is_named(broken, tmp_path, capsys):
    assert_rejected_naming_the_file(broken["two_d_image"], tmp_path, capsys)


# The command line itself, as a user runs it. Each start costs ~5 s of CPU (torch, MONAI), so it runs for one
# case per way the planner can fail: listing the files, finding no case, loading an image, checking an image.
@pytest.mark.parametrize("name", ["delete_label", "no_training_cases", "truncate_image", "nan_intensity"])
def test_plan_command_exits_nonzero_naming_the_file_without_traceback(broken, tmp_path, name):
    case = broken[name]
    result = run_plan_cli(case.root, tmp_path / "planned")
    assert result.returncode != 0, f"the planner accepted the broken dataset:\n{result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr
    assert "error: " in result.stderr and case.fault in result.stderr, result.stderr
    assert not (tmp_path / "planned" / "configs" / "plans.json").exists()
    assert digest(case.root) == case.before


# --- further bad input, in-process --------------------------------------------------------------------------

def test_truncated_label_file_is_named(tmp_path):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    data = label_path(root).read_bytes()
    label_path(root).write_bytes(data[:-16])  # header intact, voxel data cut short
    before = digest(root)
    with pytest.raises(DatasetError) as raised:
        plan_dataset(root, memory_gb=MEMORY_GB)
    assert f"labelsTr/{BROKEN}.nii.gz" in str(raised.value)  # the label is at fault, not the image
    assert digest(root) == before


def test_file_that_is_not_nifti_is_named(tmp_path):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    image_path(root).write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    with pytest.raises(DatasetError, match=f"imagesTr/{BROKEN}_0000.nii.gz"):
        plan_dataset(root, memory_gb=MEMORY_GB)


def test_msd_training_entry_without_its_image_file_is_named(tmp_path):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    for i in range(N_CASES):  # MSD names files without the channel suffix
        image_path(root, f"case_{i:03d}").rename(root / "imagesTr" / f"case_{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Task09_Tiny", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"},
        "training": [{"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
                     for i in range(N_CASES)],
    }))
    (root / "imagesTr" / f"{BROKEN}.nii.gz").unlink()
    with pytest.raises(DatasetError, match=f"imagesTr/{BROKEN}.nii.gz"):
        plan_dataset(root, memory_gb=MEMORY_GB)


def test_plans_from_a_two_channel_dataset_are_refused_naming_dataset_json_and_plans_json(tmp_path):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    before = digest(root)
    with pytest.raises(DatasetError) as raised:
        training_datalist(root, 0, num_channels=2)
    message = str(raised.value)
    assert "dataset.json" in message and "plans.json" in message
    assert str(root) in message
    assert digest(root) == before


def test_check_image_refuses_a_channel_count_other_than_the_plan_naming_the_file(tmp_path):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    case = read_dataset(root).training[3]
    loaded = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])({"image": case["image"]})
    CheckImaged("image", num_channels=1)(loaded)  # the right count passes
    with pytest.raises(DatasetError, match=f"imagesTr/{BROKEN}_0000.nii.gz") as raised:
        CheckImaged("image", num_channels=2)(loaded)
    assert "2" in str(raised.value) and "plans.json" in str(raised.value)
