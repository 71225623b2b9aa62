"""`scripts.verify_dataset` reports every problem of a dataset in one run, each naming its file, and `scripts.plan`
refuses such a dataset with the same list before planning.

The dataset is test_bad_input's tiny CT dataset grown to 12 cases: 9 cases carry one planted problem each, one is
stored in another orientation (a warning, not an error), and two are clean. The command line runs once as a
subprocess (it imports no torch, so a start costs about 2 s); everything else runs in-process.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom_components.data.verify import verify_dataset
from scripts import verify_dataset as verify_cli
from tests.test_bad_input import (
    AFFINE, N_CASES, REPO, SHAPE, digest, image_path, label_path, make_tiny_ct_dataset, read_array, run_plan_main, save,
)

N_GROWN = 12
REORIENTED = "case_009"
CLEAN = ("case_010", "case_011")


def make_grown_dataset(root: Path, n_cases: int = N_GROWN) -> Path:
    """The tiny CT dataset with more cases, each a copy of case_000 (numTraining follows)."""
    make_tiny_ct_dataset(root)
    for i in range(N_CASES, n_cases):
        shutil.copy(image_path(root, "case_000"), image_path(root, f"case_{i:03d}"))
        shutil.copy(label_path(root, "case_000"), label_path(root, f"case_{i:03d}"))
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": n_cases}))
    return root


# --- the planted problems: each breaks one case and returns the text its error must contain ------------------

def missing_label(root: Path, case: str) -> str:
    label_path(root, case).unlink()
    return f"labelsTr/{case}.nii.gz: file is missing"


def truncated_image(root: Path, case: str) -> str:
    data = image_path(root, case).read_bytes()
    image_path(root, case).write_bytes(data[: len(data) // 2])
    return f"imagesTr/{case}_0000.nii.gz: cannot be read"


def label_of_another_shape(root: Path, case: str) -> str:
    save(np.zeros((16, 16, 5), np.uint8), label_path(root, case))
    return f"labelsTr/{case}.nii.gz: label grid differs from image {image_path(root, case)}: shape (16, 16, 5) vs (16, 16, 6)"


def label_with_another_origin(root: Path, case: str) -> str:
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    save(read_array(label_path(root, case)), label_path(root, case), shifted)
    return f"labelsTr/{case}.nii.gz: label grid differs from image {image_path(root, case)}: origin [5.0, 0.0, 0.0] vs [0.0, 0.0, 0.0]"


def label_value_not_in_dataset_json(root: Path, case: str) -> str:
    label = read_array(label_path(root, case))
    label[7, 7, 2] = 5
    save(label, label_path(root, case))
    return f"labelsTr/{case}.nii.gz: label values [5] are not among dataset.json's labels [0, 1]"


def nan_intensity(root: Path, case: str) -> str:
    image = read_array(image_path(root, case))
    image[7, 7, 2] = np.nan
    save(image, image_path(root, case))
    return f"imagesTr/{case}_0000.nii.gz: image has 1 NaN or infinite voxel value(s)"


def rewrite_header(path: Path, **fields) -> None:
    """Change header fields as written, past nibabel's checks (which would fix a voxel size that is not positive)."""
    raw = gzip.decompress(path.read_bytes())
    header = nib.Nifti1Header(raw[:348], check=False)
    for name, value in fields.items():
        header[name] = value
    path.write_bytes(gzip.compress(header.binaryblock + raw[348:]))


def zero_spacing(root: Path, case: str) -> str:
    rewrite_header(image_path(root, case), srow_z=[0.0, 0.0, 0.0, 0.0], pixdim=[1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    return f"imagesTr/{case}_0000.nii.gz: spacing [1.0, 1.0, 0.0] is not positive"


def extra_channel_file(root: Path, case: str) -> str:
    shutil.copy(image_path(root, case), root / "imagesTr" / f"{case}_0001.nii.gz")
    return f"imagesTr/{case}_0001.nii.gz: channel 1 is beyond the 1 channel(s) of dataset.json"


def two_d_image(root: Path, case: str) -> str:
    save(np.zeros(SHAPE[:2], np.float32), image_path(root, case))
    return f"imagesTr/{case}_0000.nii.gz: image has shape (16, 16); expected a 3D volume"


PLANTED: dict[str, Callable[[Path, str], str]] = {
    "case_000": missing_label, "case_001": truncated_image, "case_002": label_of_another_shape,
    "case_003": label_with_another_origin, "case_004": label_value_not_in_dataset_json, "case_005": nan_intensity,
    "case_006": zero_spacing, "case_007": extra_channel_file, "case_008": two_d_image,
}


def reorient(root: Path, case: str) -> str:
    """Image and label flipped along x together: a legal case, stored LAS where the others are RAS."""
    flipped = AFFINE @ np.diag([-1.0, 1.0, 1.0, 1.0])
    for path in (image_path(root, case), label_path(root, case)):
        save(read_array(path), path, flipped)
    # 12 cases less the 3 whose grid cannot be read (truncated, zero spacing, 2D): 8 of the 9 left are RAS
    return f"imagesTr/{case}_0000.nii.gz: orientation LAS differs from RAS, that of 8 of 9 cases"


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """The dataset with every problem planted, its digest, the expected texts, and one run of the command line."""
    root = make_grown_dataset(tmp_path_factory.mktemp("verify") / "ds")
    expected = {case: plant(root, case) for case, plant in PLANTED.items()}
    warning = reorient(root, REORIENTED)
    before = digest(root)
    result = subprocess.run([sys.executable, "-m", "scripts.verify_dataset", "--dataset_dir", str(root)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    return root, before, expected, warning, result


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_a_valid_dataset_verifies_clean(tmp_path, capsys):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    with pytest.raises(SystemExit) as exited:
        verify_cli.main(str(root))
    out, err = capsys.readouterr()
    assert exited.value.code == 0, err
    assert err == ""
    assert out.strip() == f"{N_CASES} case(s) checked: 0 error(s), 0 warning(s)"


def test_every_planted_problem_is_named_in_one_run(broken):
    _, _, expected, _, result = broken
    errors = error_lines(result.stderr)
    unreported = {case: text for case, text in expected.items() if not any(text in line for line in errors)}
    assert not unreported, result.stderr
    # the clean cases and the reoriented one raise no error
    assert not [line for line in errors if any(case in line for case in (*CLEAN, REORIENTED))], result.stderr


def test_orientation_differing_from_most_cases_is_a_warning(broken):
    _, _, _, warning, result = broken
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warning in warnings[0], result.stderr


def test_verify_command_exits_1_with_a_summary_and_no_traceback_leaving_the_input_untouched(broken):
    root, before, _, _, result = broken
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout.strip() == f"{N_GROWN} case(s) checked: {len(error_lines(result.stderr))} error(s), 1 warning(s)"
    assert digest(root) == before


def test_plan_refuses_the_dataset_listing_every_problem(broken, tmp_path, capsys):
    root, before, expected, _, _ = broken
    code, stderr = run_plan_main(root, tmp_path / "planned", capsys)
    assert code != 0
    assert all(any(text in line for line in error_lines(stderr)) for text in expected.values()), stderr
    assert not (tmp_path / "planned" / "configs" / "plans.json").exists()
    assert digest(root) == before


def test_missing_channel_and_image_files_are_named_for_every_case(tmp_path):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": "CT", "1": "CT"}}))
    for i in range(N_CASES):
        if i != 3:  # case_003 lacks its second channel
            shutil.copy(image_path(root, f"case_{i:03d}"), root / "imagesTr" / f"case_{i:03d}_0001.nii.gz")
    for channel in (0, 1):  # case_004 has a label and no image at all
        (root / "imagesTr" / f"case_004_{channel:04d}.nii.gz").unlink()
    report = verify_dataset(str(root))
    assert sorted(e.split(": ")[0].split("/")[-1] for e in report.errors) == [
        "case_003_0001.nii.gz", "case_004_0000.nii.gz", "case_004_0001.nii.gz"], report.errors
    assert all("file is missing" in e for e in report.errors)


def test_test_images_are_verified_too(tmp_path):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    (root / "imagesTs").mkdir()
    image = read_array(image_path(root, "case_000"))
    image[1, 2, 3] = np.inf
    save(image, root / "imagesTs" / "test_000_0000.nii.gz")
    report = verify_dataset(root)
    assert report.cases_checked == N_CASES + 1
    assert report.errors == [f"{root / 'imagesTs' / 'test_000_0000.nii.gz'}: image has 1 NaN or infinite voxel value(s)"]


def test_duplicate_msd_case_ids_and_a_4d_image_with_another_channel_count_are_reported_together(tmp_path):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    for i in range(N_CASES):  # MSD names files without the channel suffix
        image_path(root, f"case_{i:03d}").rename(root / "imagesTr" / f"case_{i:03d}.nii.gz")
    entries = [{"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"} for i in range(N_CASES)]
    (root / "dataset.json").write_text(json.dumps({
        "name": "Task09_Tiny", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"},
        "training": entries + [entries[1]],
    }))
    two_channel = root / "imagesTr" / "case_002.nii.gz"
    save(np.stack([read_array(two_channel)] * 2, axis=-1), two_channel)
    errors = verify_dataset(str(root)).errors
    assert f"{root / 'dataset.json'}: duplicate training case ids ['case_001']" in errors, errors
    assert any(e.startswith(f"{two_channel.resolve()}: image has 2 channel(s) but dataset.json names 1") for e in errors), errors


def test_header_voxel_sizes_that_are_not_positive_are_an_error_only_where_they_place_the_voxels(tmp_path):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    pixdim = [1.0, 1.0, 1.0, -3.0, 1.0, 1.0, 1.0, 1.0]  # nibabel reads -3 as 3: where it places the voxels, a flip is lost
    rewrite_header(image_path(root, "case_001"), pixdim=pixdim)  # the sform places the voxels
    rewrite_header(image_path(root, "case_002"), pixdim=pixdim, sform_code=0, qform_code=1)  # pixdim does
    report = verify_dataset(str(root))
    assert [w.split(": ")[0] for w in report.warnings] == [str(image_path(root, "case_001"))], report.warnings
    assert [e.split(": ")[0] for e in report.errors] == [str(image_path(root, "case_002"))], report.errors
    assert "pixdim" in report.errors[0] and "-3.0" in report.errors[0]


def test_a_dataset_json_that_cannot_be_read_is_the_one_error(tmp_path, capsys):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(SystemExit) as exited:
        verify_cli.main(str(root))
    out, err = capsys.readouterr()
    assert exited.value.code == 1
    assert error_lines(err) == [line for line in err.splitlines() if line] and len(error_lines(err)) == 1
    assert f"{root / 'dataset.json'}: cannot be read as JSON" in err
    assert out.strip() == "0 case(s) checked: 1 error(s), 0 warning(s)"


def test_an_image_file_without_a_channel_suffix_is_named_not_silently_left_out(tmp_path):
    root = make_tiny_ct_dataset(tmp_path / "ds")
    misnamed = root / "imagesTr" / "case_003.nii.gz"  # the MSD name in an nnU-Net v2 folder
    image_path(root, "case_003").rename(misnamed)
    (root / "imagesTr" / "notes.txt").write_text("not an image, not a problem")
    errors = verify_dataset(root).errors
    assert f"{misnamed}: not named <case>_<channel>.nii.gz (such as case_001_0000.nii.gz), so no case reads it" in errors
    assert not [e for e in errors if "notes.txt" in e]
