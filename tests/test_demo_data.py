"""The embedded synthetic CT dataset: deterministic, CT-like, anisotropic, varied, and a valid nnU-Net v2 folder."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom_components.data import read_dataset
from custom_components.data.demo import make_demo_dataset, synth_case
from custom_components.transforms.resampling import spacing_from_affine

REPO = Path(__file__).resolve().parent.parent
N_TRAIN, N_TEST = 5, 2


def arrays(root: Path) -> dict[str, tuple[bytes, bytes, bytes]]:
    """Every NIfTI of a dataset folder as (image bytes, dtype, affine bytes), keyed by relative path."""
    out = {}
    for path in sorted(root.rglob("*.nii.gz")):
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        out[str(path.relative_to(root))] = (data.tobytes(), str(data.dtype).encode(), img.affine.tobytes())
    return out


def cases(root: Path, split: str):
    """(image array, label array, spacing) for each case of imagesTr/labelsTr or imagesTs/labelsTs."""
    out = []
    for label_path in sorted((root / f"labels{split}").glob("*.nii.gz")):
        case_id = label_path.name[: -len(".nii.gz")]
        image = nib.load(str(root / f"images{split}" / f"{case_id}_0000.nii.gz"))
        label = nib.load(str(label_path))
        out.append((np.asarray(image.dataobj), np.asarray(label.dataobj), spacing_from_affine(image.affine)))
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "ds", n_train=N_TRAIN, n_test=N_TEST, seed=0)


def test_same_seed_writes_the_same_arrays(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    first, second = arrays(demo), arrays(again)
    assert len(first) == 2 * (N_TRAIN + N_TEST)
    assert first == second


def test_another_seed_writes_different_arrays(demo, tmp_path):
    other = arrays(make_demo_dataset(tmp_path / "other", n_train=N_TRAIN, n_test=N_TEST, seed=1))
    first = arrays(demo)
    assert other.keys() == first.keys()
    assert all(other[k][0] != first[k][0] for k in first)


def test_synth_case_is_a_pure_function_of_the_generator_state():
    a = synth_case(np.random.default_rng(7))
    b = synth_case(np.random.default_rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_images_are_in_hounsfield_units_with_air_around_a_positive_foreground(demo):
    for image, label, _ in cases(demo, "Tr") + cases(demo, "Ts"):
        assert image.dtype == np.int16
        assert image.min() >= -1024 and image.max() <= 3071
        corners = np.concatenate([image[:3, :3].ravel(), image[-3:, -3:].ravel()])
        assert abs(float(np.median(corners)) + 1000.0) < 15.0  # air is -1000 HU, up to scanner noise
        assert float(image[label == 1].mean()) > 0.0  # organ, soft tissue around 85 HU
        assert float(image[label == 2].mean()) > float(image[label == 1].mean())  # enhancing lesion is brighter


def test_every_case_has_both_foreground_classes(demo):
    for _, label, _ in cases(demo, "Tr") + cases(demo, "Ts"):
        assert set(np.unique(label).tolist()) == {0, 1, 2}


def test_through_plane_spacing_is_at_least_three_times_in_plane(demo):
    for image, label, spacing in cases(demo, "Tr") + cases(demo, "Ts"):
        assert spacing[0] == pytest.approx(spacing[1])
        assert spacing[2] >= 3.0 * spacing[0]
        assert image.shape == label.shape


def test_sizes_and_spacings_vary_between_cases(demo):
    all_cases = cases(demo, "Tr") + cases(demo, "Ts")
    assert len({image.shape for image, _, _ in all_cases}) > 1
    assert len({tuple(np.round(spacing, 4)) for _, _, spacing in all_cases}) > 1


def test_labels_and_images_share_the_grid(demo):
    for split in ("Tr", "Ts"):
        for label_path in sorted((demo / f"labels{split}").glob("*.nii.gz")):
            case_id = label_path.name[: -len(".nii.gz")]
            image = nib.load(str(demo / f"images{split}" / f"{case_id}_0000.nii.gz"))
            label = nib.load(str(label_path))
            assert np.array_equal(image.affine, label.affine)


def test_test_cases_come_with_labels_ts(demo):
    images = sorted(p.name for p in (demo / "imagesTs").iterdir())
    labels = sorted(p.name for p in (demo / "labelsTs").iterdir())
    assert images == [f"demo_{i:03d}_0000.nii.gz" for i in range(N_TRAIN, N_TRAIN + N_TEST)]
    assert labels == [f"demo_{i:03d}.nii.gz" for i in range(N_TRAIN, N_TRAIN + N_TEST)]


def test_dataset_json_is_nnunet_v2_style(demo):
    content = json.loads((demo / "dataset.json").read_text())
    assert content["channel_names"] == {"0": "CT"}
    assert content["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert content["file_ending"] == ".nii.gz"
    assert content["numTraining"] == N_TRAIN
    assert "modality" not in content and "training" not in content  # not the MSD style


def test_read_dataset_accepts_the_demo_dataset(demo):
    info = read_dataset(demo)
    assert info.layout == "nnunetv2"
    assert info.num_channels == 1 and info.num_classes == 3
    assert [c["id"] for c in info.training] == [f"demo_{i:03d}" for i in range(N_TRAIN)]
    assert all(Path(c["label"]).is_file() and Path(c["image"][0]).is_file() for c in info.training)
    assert [c["id"] for c in info.test] == [f"demo_{i:03d}" for i in range(N_TRAIN, N_TRAIN + N_TEST)]
    assert all("label" in c for c in info.test)


def test_cli_writes_the_default_twelve_training_and_four_test_cases(demo, tmp_path):
    defaults = inspect.signature(make_demo_dataset).parameters
    assert (defaults["n_train"].default, defaults["n_test"].default) == (12, 4)
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "scripts.make_demo_data", "--output_dir", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(list((out / "imagesTr").glob("*_0000.nii.gz"))) == 12
    assert len(list((out / "labelsTr").glob("*.nii.gz"))) == 12
    assert len(list((out / "imagesTs").glob("*_0000.nii.gz"))) == 4
    assert len(list((out / "labelsTs").glob("*.nii.gz"))) == 4
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 12
    # seed 0 by default: the first cases are those of make_demo_dataset(seed=0)
    cli, lib = arrays(out), arrays(demo)
    for key in ("imagesTr/demo_000_0000.nii.gz", "labelsTr/demo_004.nii.gz"):
        assert cli[key] == lib[key]
