"""Every packaged bundle's TorchScript file in a real MONAI Deploy App SDK 4.0.0 application (scripts/deploy_app,
in its own environment built by scripts/setup_deploy_env.sh): the NIfTI route's label map equals
`monai.bundle run inference` on the same image, and the DICOM route's SEG equals the NIfTI prediction. Marked
`deploy`: the environment is 3.3 GB (Holoscan) and takes over a minute to build even with a warm pip cache."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest

from custom_components.data.dicom import select_series
from custom_components.data.dicom_writer import write_dicom_series
from tests.conftest import ALL_BUNDLES, environment_python
from tests.test_bundle_workflow import ROOT, bundle_run
from tests.test_dicom_input import _read_seg

pytestmark = pytest.mark.deploy


@pytest.fixture(scope="module")
def deploy_python():
    return environment_python("setup_deploy_env.sh", "DEPLOY_PY")


def deploy(python: str, model, source, out, check: bool = True) -> subprocess.CompletedProcess:
    """The app, run as a deployment would: its own interpreter, the repository as the working folder only."""
    proc = subprocess.run([python, "-m", "scripts.deploy_app", "-m", str(model), "-i", str(source), "-o", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def reoriented(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same scan stored with its first two axes swapped and the third reversed (the affine keeps every voxel
    where it was in the world): the geometry a loader that drops the affine gets wrong."""
    data = np.flip(np.transpose(np.asarray(image.dataobj), (1, 0, 2)), axis=2)
    to_old = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, data.shape[2] - 1], [0, 0, 0, 1]], dtype=float)
    return nib.Nifti1Image(data, image.affine @ to_old)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_exported_model_carries_the_bundle_s_metadata_and_inference_config(packaged_bundles, name):
    _, package = packaged_bundles[name]
    with zipfile.ZipFile(package / "models" / "model.ts") as archive:
        names = archive.namelist()
        metadata = json.loads(archive.read(next(n for n in names if n.endswith("extra/metadata.json"))))
        inference = json.loads(archive.read(next(n for n in names if n.endswith("extra/inference.json"))))
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert {"preprocessing", "inferer", "postprocessing"} <= set(inference)


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_deploy_nifti_app_gives_the_label_map_of_bundle_inference(deploy_python, packaged_bundles, name, tmp_path):
    data, package = packaged_bundles[name]
    image = tmp_path / "in" / "case_0000.nii.gz"
    image.parent.mkdir()
    nib.save(reoriented(nib.load(next((data / "imagesTs").glob("*.nii.gz")))), image)
    bundle_run("inference", package, "--datalist", json.dumps([{"image": str(image)}]), "--output_dir",
               str(tmp_path / "bundle"))
    deploy(deploy_python, package / "models" / "model.ts", image, tmp_path / "deploy")
    expected, got = nib.load(tmp_path / "bundle" / "case.nii.gz"), nib.load(tmp_path / "deploy" / "case.nii.gz")
    assert got.shape == nib.load(image).shape
    np.testing.assert_allclose(got.affine, nib.load(image).affine, atol=1e-5)
    a, b = np.asarray(expected.dataobj), np.asarray(got.dataobj)
    np.testing.assert_array_equal(b, a)
    for value in np.unique(a[a > 0]):  # small structures scored too: every predicted class overlaps exactly
        assert dice(a == value, b == value) == 1.0


def test_deploy_dicom_app_writes_a_seg_equal_to_the_nifti_prediction(deploy_python, packaged_bundles, tmp_path):
    data, package = packaged_bundles["nnunet_3d_fullres"]
    image = nib.load(next((data / "imagesTs").glob("*.nii.gz")))
    series_dir = tmp_path / "CT1"
    write_dicom_series(np.asarray(image.dataobj), series_dir, spacing=np.abs(np.diag(image.affine)[:3]),
                       origin=(-100.0, 50.0, 20.0), series_uid="1.2.826.0.1.3680043.8.498.77")
    bundle_run("inference", package, "--datalist", json.dumps([{"image": str(series_dir)}]), "--output_dir",
               str(tmp_path / "bundle"))
    deploy(deploy_python, package / "models" / "model.ts", series_dir, tmp_path / "deploy")
    nifti = np.asarray(nib.load(tmp_path / "bundle" / "CT1.nii.gz").dataobj)
    assert nifti.max() > 0  # something was segmented, so the comparison is not of two empty maps
    (seg_file,) = (tmp_path / "deploy").glob("*.dcm")
    seg, back = _read_seg(seg_file, select_series(series_dir))
    np.testing.assert_array_equal(back, nifti)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["organ", "lesion"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.3680043.8.498.77"
    assert seg.FrameOfReferenceUID == pydicom.dcmread(next(series_dir.iterdir())).FrameOfReferenceUID


def test_deploy_app_refuses_a_model_outside_a_packaged_bundle(deploy_python, trained_fullres, tmp_path):
    data, bundle = trained_fullres
    proc = deploy(deploy_python, bundle / "models" / "model.pt", next((data / "imagesTs").glob("*.nii.gz")), tmp_path,
                  check=False)
    assert proc.returncode == 2
    assert "packaged bundle's models/model.ts" in proc.stderr


def test_deploy_app_names_an_unreadable_image(deploy_python, packaged_bundles, tmp_path):
    _, package = packaged_bundles["nnunet_3d_fullres"]
    bad = tmp_path / "broken_0000.nii.gz"
    bad.write_bytes(b"not an image")
    proc = deploy(deploy_python, package / "models" / "model.ts", bad, tmp_path / "out", check=False)
    assert proc.returncode != 0
    assert str(bad) in proc.stdout + proc.stderr
    assert not (tmp_path / "out" / "broken.nii.gz").exists()


def test_deploy_dicom_app_refuses_a_folder_with_two_series_naming_both(deploy_python, packaged_bundles, tmp_path):
    data, package = packaged_bundles["nnunet_3d_fullres"]
    image = np.asarray(nib.load(next((data / "imagesTs").glob("*.nii.gz"))).dataobj)
    folder = tmp_path / "study"
    write_dicom_series(image, folder, series_uid="1.2.826.0.1.3680043.8.498.1", prefix="a")
    write_dicom_series(image, folder, series_uid="1.2.826.0.1.3680043.8.498.2", prefix="b", series_number=2)
    proc = deploy(deploy_python, package / "models" / "model.ts", folder, tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert "1.2.826.0.1.3680043.8.498.1" in proc.stderr and "1.2.826.0.1.3680043.8.498.2" in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
