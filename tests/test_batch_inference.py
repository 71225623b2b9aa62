"""Batch inference that keeps going: over a folder in which one case is corrupt, `monai.bundle run inference`
writes every other case's prediction and `failures.json`, names the corrupt file and exits non-zero; evaluate
does the same and scores the good cases. The checks that need no trained bundle run in-process on tiny images."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from custom_components.data import DatasetError
from custom_components.inference import FailedCasesReport, SkipFailedCasesDataset
from custom_components.inference.failures import FAILED_CASE, REPORT_NAME
from custom_components.transforms import CheckImaged
from tests.test_bad_input import digest
from tests.test_bundle_workflow import bundle_run, run

GOOD_COPIES = ("extra_001", "extra_002")
FAST = ("--use_mirroring", "False")  # the outputs, not their quality, are under test
CORRUPT = "broken_001"


def bundle_run_failing(workflow: str, bundle: Path, *overrides: str):
    """`bundle_run` for a run that is meant to fail: its exit status and output are the test's to check."""
    config = bundle / "configs" / f"{workflow}.yaml"
    return run("-m", "monai.bundle", "run", workflow, "--config_file", str(config), "--bundle_root", str(bundle),
               *overrides, check=False)



def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def batch_folder(trained_fullres, tmp_path_factory):
    """The demo set's test case, two copies of it under new names and one truncated copy, each with a label:
    (dataset folder, bundle, good case ids, corrupt image)."""
    data, bundle = trained_fullres
    folder = tmp_path_factory.mktemp("batch") / "dataset"
    shutil.copytree(data / "imagesTs", folder / "imagesTs")
    shutil.copytree(data / "labelsTs", folder / "labelsTs")
    shutil.copy(data / "dataset.json", folder / "dataset.json")
    image = next((folder / "imagesTs").glob("*_0000.nii.gz"))
    label = folder / "labelsTs" / image.name.replace("_0000.nii.gz", ".nii.gz")
    for case in (*GOOD_COPIES, CORRUPT):
        shutil.copy(image, folder / "imagesTs" / f"{case}_0000.nii.gz")
        shutil.copy(label, folder / "labelsTs" / f"{case}.nii.gz")
    truncate(folder / "imagesTs" / f"{CORRUPT}_0000.nii.gz")
    good = sorted(p.name[: -len("_0000.nii.gz")] for p in (folder / "imagesTs").glob("*_0000.nii.gz")
                  if not p.name.startswith(CORRUPT))
    return folder, bundle, good, folder / "imagesTs" / f"{CORRUPT}_0000.nii.gz"


def assert_good_predictions_written(out: Path, folder: Path, good: list[str]) -> None:
    for case in good:
        pred = nib.load(out / f"{case}.nii.gz")
        assert pred.shape == nib.load(folder / "imagesTs" / f"{case}_0000.nii.gz").shape
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def assert_corrupt_case_reported(out: Path, file: str, num_cases: int) -> None:
    assert not (out / f"{CORRUPT}.nii.gz").exists()
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["num_cases"] == num_cases and report["num_failed"] == 1
    (failure,) = report["failures"]
    assert failure["case"] == CORRUPT and failure["file"] == file
    assert failure["error"].startswith(f"{file}: cannot be read") and "Compressed file ended" in failure["error"]


def test_a_corrupt_case_is_skipped_every_other_case_predicted_and_the_run_fails_naming_it(batch_folder, tmp_path):
    folder, bundle, good, corrupt = batch_folder
    before = digest(folder)
    out = tmp_path / "pred"
    proc = bundle_run_failing("inference", bundle, "--dataset_dir", str(folder), "--output_dir", str(out), *FAST)
    assert proc.returncode != 0
    assert len(good) == 3
    assert_good_predictions_written(out, folder, good)
    assert_corrupt_case_reported(out, str(corrupt), num_cases=4)
    assert f"skipped case {CORRUPT}: {corrupt}: cannot be read" in proc.stderr
    assert f"{corrupt}: 1 of 4 case(s) skipped" in proc.stderr and str(out / REPORT_NAME) in proc.stderr
    assert "Traceback" not in proc.stderr  # custom_components' excepthook prints a DatasetError as one line
    assert digest(folder) == before


def test_a_clean_folder_exits_zero_and_removes_an_earlier_report(batch_folder, tmp_path):
    folder, bundle, good, corrupt = batch_folder
    clean = tmp_path / "clean"
    shutil.copytree(folder, clean, ignore=shutil.ignore_patterns(f"{CORRUPT}*"))
    out = tmp_path / "pred"
    out.mkdir()
    (out / REPORT_NAME).write_text("{}")  # a report from an earlier run would no longer describe this folder
    bundle_run("inference", bundle, "--dataset_dir", str(clean), "--output_dir", str(out), *FAST)
    assert_good_predictions_written(out, clean, good)
    assert not (out / REPORT_NAME).exists()


def test_evaluate_scores_the_good_cases_and_reports_the_corrupt_one(batch_folder, tmp_path):
    folder, bundle, good, corrupt = batch_folder
    out = tmp_path / "eval"
    proc = bundle_run_failing("evaluate", bundle, "--dataset_dir", str(folder), "--output_dir", str(out), *FAST)
    assert proc.returncode != 0 and str(corrupt) in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(c["case"] for c in metrics["cases"]) == good
    # a truncated gzip does not say which file it was, so the case's image and label are both named
    assert_corrupt_case_reported(out, f"{corrupt}, {folder / 'labelsTs' / f'{CORRUPT}.nii.gz'}", num_cases=4)


# --- in-process: which errors skip a case, and the evaluator around the skipped cases ---------------------------

def save(array: np.ndarray, path: Path) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return str(path)


PREPROCESSING = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                         CheckImaged("image", spatial_dims=3, num_channels=1)])


def test_unreadable_nan_2d_and_two_channel_images_become_failure_markers_naming_the_file(tmp_path):
    images = {"good": np.ones((4, 4, 4), np.float32), "nan": np.full((4, 4, 4), np.nan, np.float32),
              "flat": np.ones((4, 4), np.float32), "two_channels": np.ones((4, 4, 4, 2), np.float32)}
    cases = [{"id": name, "image": [save(array, tmp_path / f"{name}.nii.gz")]} for name, array in images.items()]
    (tmp_path / "text.nii.gz").write_text("not a NIfTI")
    cases.append({"id": "text", "image": [str(tmp_path / "text.nii.gz")]})
    items = SkipFailedCasesDataset(cases, PREPROCESSING)
    assert FAILED_CASE not in items[0]
    failures = [items[i][FAILED_CASE] for i in range(1, len(cases))]
    assert [f["case"] for f in failures] == ["nan", "flat", "two_channels", "text"]
    for failure, case in zip(failures, cases[1:]):
        assert failure["file"] == case["image"][0] and failure["error"].startswith(f"{failure['file']}: ")
    assert ["NaN" in failures[0]["error"], "2 spatial dimension(s)" in failures[1]["error"],
            "2 channel(s)" in failures[2]["error"], "cannot be read" in failures[3]["error"]] == [True] * 4


def test_an_error_that_is_not_the_data_s_fault_still_stops_the_run(tmp_path):
    def bug(d):
        raise TypeError("a bug in preprocessing")

    good = save(np.ones((4, 4, 4), np.float32), tmp_path / "good.nii.gz")
    with pytest.raises(RuntimeError) as raised:
        SkipFailedCasesDataset([{"id": "good", "image": [good]}], Compose([PREPROCESSING, bug]))[0]
    assert isinstance(raised.value.__cause__, TypeError)


@pytest.mark.parametrize("num_good", [2, 0])
def test_the_evaluator_predicts_the_good_cases_then_the_report_raises(tmp_path, num_good):
    paths = [save(np.ones((4, 4, 4), np.float32), tmp_path / f"good_{i}.nii.gz") for i in range(num_good)]
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"")
    cases = [{"id": Path(p).name[:-7], "image": [p]} for p in [*paths[:1], str(bad), *paths[1:]]]
    report = FailedCasesReport(tmp_path / "out")
    # one worker: the failure marker must come back from a worker process
    loader = DataLoader(SkipFailedCasesDataset(cases, PREPROCESSING), batch_size=1, num_workers=1)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=report.skip_failed(loader),
                                    network=torch.nn.Identity(), inferer=SimpleInferer(), val_handlers=[report])
    seen = []  # the files the evaluator ran the network on
    evaluator.add_event_handler(Events.ITERATION_COMPLETED,
                                lambda e: seen.append(e.state.output[0]["image"].meta["filename_or_obj"]))
    with pytest.raises(DatasetError, match=f"^{re.escape(str(bad))}: 1 of {num_good + 1} case"):
        evaluator.run()
    assert seen == paths
    assert json.loads((tmp_path / "out" / REPORT_NAME).read_text())["failures"][0]["case"] == "bad"
