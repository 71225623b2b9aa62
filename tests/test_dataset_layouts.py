"""Dataset folders in the nnU-Net v2 and MSD layouts, and nnU-Net's 5-fold cross-validation split.

The split must be exactly nnU-Net's: `KFold(5, shuffle=True, random_state=12345)` over the sorted case ids
(`unet-family.md` section 1, "Loss, optimiser, schedule"); a fold's training and validation lists partition
the training cases.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from sklearn.model_selection import KFold

from custom_components.data import (
    DatasetError,
    inference_datalist,
    kfold_split,
    read_dataset,
    training_datalist,
    validation_datalist,
)

SHAPE = (12, 10, 6)
AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])


def save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))


def make_v2_dataset(root: Path, train_ids, test_ids=(), test_label_ids=(), channels=("CT",), ending=".nii.gz") -> Path:
    """nnU-Net v2 layout: one file per channel (`_0000`, `_0001`, ...); channel c of every case is filled with c + 1."""
    for split, ids in (("Tr", train_ids), ("Ts", test_ids)):
        for case_id in ids:
            for c in range(len(channels)):
                save(np.full(SHAPE, c + 1, np.float32), root / f"images{split}" / f"{case_id}_{c:04d}{ending}")
            if split == "Tr" or case_id in test_label_ids:
                save(np.zeros(SHAPE, np.uint8), root / f"labels{split}" / f"{case_id}{ending}")
    write_json(root / "dataset.json", {
        "name": "Tiny",
        "channel_names": {str(i): name for i, name in enumerate(channels)},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": len(train_ids),
        "file_ending": ending,
    })
    return root


def make_msd_dataset(root: Path, train_ids, test_ids=(), test_label_ids=()) -> Path:
    """MSD layout: one 4D NIfTI (X, Y, Z, modality) per case, `training` list in dataset.json."""
    four_d = np.stack([np.full(SHAPE, 1.0, np.float32), np.full(SHAPE, 2.0, np.float32)], axis=-1)
    for case_id in train_ids:
        save(four_d, root / "imagesTr" / f"{case_id}.nii.gz")
        save(np.zeros(SHAPE, np.uint8), root / "labelsTr" / f"{case_id}.nii.gz")
    for case_id in test_ids:
        save(four_d, root / "imagesTs" / f"{case_id}.nii.gz")
        if case_id in test_label_ids:
            save(np.zeros(SHAPE, np.uint8), root / "labelsTs" / f"{case_id}.nii.gz")
    write_json(root / "dataset.json", {
        "name": "Task01_Tiny",
        "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "numTraining": len(train_ids),
        "training": [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in train_ids],
        "test": [f"./imagesTs/{i}.nii.gz" for i in test_ids],
    })
    return root


def load_image(image):
    return Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])({"image": image})["image"]


# --- nnU-Net v2 layout ---------------------------------------------------------------------------------

def test_v2_layout_reads_channel_names_labels_and_file_ending(tmp_path):
    root = make_v2_dataset(tmp_path / "ds", ["case_b", "case_a"], channels=("T2", "ADC"))
    info = read_dataset(root)
    assert info.layout == "nnunetv2"
    assert info.name == "Tiny"
    assert info.channel_names == {"0": "T2", "1": "ADC"}
    assert info.labels == {"background": 0, "organ": 1, "lesion": 2}
    assert info.num_channels == 2
    assert info.num_classes == 3
    assert [c["id"] for c in info.training] == ["case_a", "case_b"]  # sorted by id


def test_v2_two_channel_case_lists_its_channel_files_in_suffix_order(tmp_path):
    root = make_v2_dataset(tmp_path / "ds", ["case_a"], channels=("T2", "ADC"))
    (case,) = read_dataset(root).training
    assert case["image"] == [str(root / "imagesTr" / "case_a_0000.nii.gz"), str(root / "imagesTr" / "case_a_0001.nii.gz")]
    assert case["label"] == str(root / "labelsTr" / "case_a.nii.gz")
    image = load_image(case["image"])
    assert tuple(image.shape) == (2, *SHAPE)
    assert float(image[0].max()) == 1.0 and float(image[1].max()) == 2.0  # _0000 is channel 0


def test_v2_file_ending_selects_which_files_are_cases(tmp_path):
    root = make_v2_dataset(tmp_path / "ds", ["case_a", "case_b"], ending=".nii")
    save(np.zeros(SHAPE, np.float32), root / "imagesTr" / "stray_0000.nii.gz")  # other ending: not a case
    info = read_dataset(root)
    assert [c["id"] for c in info.training] == ["case_a", "case_b"]
    assert info.training[0]["image"] == [str(root / "imagesTr" / "case_a_0000.nii")]
    assert info.training[0]["label"] == str(root / "labelsTr" / "case_a.nii")


def test_v2_case_without_its_second_channel_file_is_named(tmp_path):
    root = make_v2_dataset(tmp_path / "ds", ["case_a", "case_b"], channels=("T2", "ADC"))
    (root / "imagesTr" / "case_b_0001.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case_b_0001.nii.gz"):
        read_dataset(root)


def test_v2_test_cases_come_from_images_ts_with_optional_labels_ts(tmp_path):
    root = make_v2_dataset(tmp_path / "ds", ["case_a"], test_ids=["test_x", "test_y"], test_label_ids=["test_y"])
    info = read_dataset(root)
    assert [c["id"] for c in info.test] == ["test_x", "test_y"]
    assert info.test[0]["image"] == [str(root / "imagesTs" / "test_x_0000.nii.gz")]
    assert "label" not in info.test[0]
    assert info.test[1]["label"] == str(root / "labelsTs" / "test_y.nii.gz")
    items = inference_datalist(root)
    assert [i["id"] for i in items] == ["test_x", "test_y"]
    with pytest.raises(DatasetError, match="test_x"):
        inference_datalist(root, require_labels=True)


def test_inference_without_images_ts_is_an_error_naming_the_folder(tmp_path):
    root = make_v2_dataset(tmp_path / "ds", ["case_a"])
    with pytest.raises(DatasetError, match="imagesTs"):
        inference_datalist(root)


# --- MSD layout ----------------------------------------------------------------------------------------

def test_msd_layout_reads_modality_and_value_to_name_labels(tmp_path):
    root = make_msd_dataset(tmp_path / "ds", ["BRATS_002", "BRATS_001"])
    info = read_dataset(root)
    assert info.layout == "msd"
    assert info.channel_names == {"0": "FLAIR", "1": "T1w"}
    assert info.labels == {"background": 0, "edema": 1, "tumour": 2}
    assert info.num_channels == 2 and info.num_classes == 3


def test_msd_training_list_gives_the_cases_in_json_order(tmp_path):
    root = make_msd_dataset(tmp_path / "ds", ["BRATS_002", "BRATS_001"])
    info = read_dataset(root)
    assert [c["id"] for c in info.training] == ["BRATS_002", "BRATS_001"]
    first = info.training[0]
    assert Path(first["image"]) == (root / "imagesTr" / "BRATS_002.nii.gz").resolve()
    assert Path(first["label"]) == (root / "labelsTr" / "BRATS_002.nii.gz").resolve()


def test_msd_four_d_nifti_loads_as_two_channels(tmp_path):
    root = make_msd_dataset(tmp_path / "ds", ["BRATS_001"])
    image = load_image(read_dataset(root).training[0]["image"])
    assert tuple(image.shape) == (2, *SHAPE)
    assert float(image[0].min()) == float(image[0].max()) == 1.0
    assert float(image[1].min()) == float(image[1].max()) == 2.0


def test_msd_test_cases_take_labels_ts_only_when_present(tmp_path):
    root = make_msd_dataset(tmp_path / "ds", ["BRATS_001"], test_ids=["BRATS_101", "BRATS_102"], test_label_ids=["BRATS_102"])
    info = read_dataset(root)
    assert [c["id"] for c in info.test] == ["BRATS_101", "BRATS_102"]
    assert "label" not in info.test[0]
    assert Path(info.test[1]["label"]) == root / "labelsTs" / "BRATS_102.nii.gz"


# --- cross-validation split ----------------------------------------------------------------------------

def test_kfold_split_is_sklearn_kfold_over_sorted_ids_with_seed_12345():
    ids = [f"case_{i:02d}" for i in (7, 3, 11, 0, 5, 9, 1, 10, 4, 8, 2, 6)]  # deliberately unsorted
    folds = kfold_split(ids)
    ordered = sorted(ids)
    expected = [
        {"train": [ordered[i] for i in tr], "val": [ordered[i] for i in va]}
        for tr, va in KFold(n_splits=5, shuffle=True, random_state=12345).split(ordered)
    ]
    assert folds == expected
    assert kfold_split(list(reversed(ids))) == expected  # input order does not matter


def test_kfold_split_differs_from_an_unshuffled_split():
    # Guards the comparison above: a shuffled split is not the trivial contiguous one.
    ids = [f"case_{i:02d}" for i in range(10)]
    assert kfold_split(ids)[0]["val"] != ids[:2]


@pytest.fixture
def seven_case_dataset(tmp_path):
    return make_v2_dataset(tmp_path / "ds", [f"case_{i}" for i in (4, 0, 6, 2, 5, 1, 3)])


@pytest.mark.parametrize("fold", range(5))
def test_fold_training_and_validation_lists_partition_the_cases(seven_case_dataset, fold):
    train = [item["id"] for item in training_datalist(seven_case_dataset, fold)]
    val = [item["id"] for item in validation_datalist(seven_case_dataset, fold)]
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == [f"case_{i}" for i in range(7)]
    assert val and train
    assert sorted(val) == sorted(kfold_split([f"case_{i}" for i in range(7)])[fold]["val"])


def test_validation_folds_together_cover_every_case_once(seven_case_dataset):
    vals = [item["id"] for fold in range(5) for item in validation_datalist(seven_case_dataset, fold)]
    assert sorted(vals) == [f"case_{i}" for i in range(7)]


def test_datalist_items_carry_image_label_and_id(seven_case_dataset):
    item = training_datalist(seven_case_dataset, 0)[0]
    assert set(item) == {"image", "label", "id"}
    assert item["image"] == [str(seven_case_dataset / "imagesTr" / f"{item['id']}_0000.nii.gz")]
    assert item["label"] == str(seven_case_dataset / "labelsTr" / f"{item['id']}.nii.gz")


@pytest.mark.parametrize("fold", ["all", "ALL"])
def test_fold_all_trains_on_every_case_without_validation(seven_case_dataset, fold):
    train = [item["id"] for item in training_datalist(seven_case_dataset, fold)]
    assert sorted(train) == [f"case_{i}" for i in range(7)]
    assert validation_datalist(seven_case_dataset, fold) == []


@pytest.mark.parametrize("val_interval", [0, -1])
def test_turning_validation_off_keeps_the_fold_from_training_on_its_held_out_cases(seven_case_dataset, val_interval):
    held_out = {item["id"] for item in validation_datalist(seven_case_dataset, 2)}
    train = {item["id"] for item in training_datalist(seven_case_dataset, 2)}
    assert held_out and not held_out & train and len(held_out | train) == 7
    assert validation_datalist(seven_case_dataset, 2, val_interval) == []


def test_single_case_trains_on_it_without_validation(tmp_path):
    root = make_v2_dataset(tmp_path / "ds", ["only_case"])
    assert [item["id"] for item in training_datalist(root, 0)] == ["only_case"]
    assert validation_datalist(root, 0) == []


def test_fewer_cases_than_folds_asks_for_fold_all(tmp_path):
    root = make_v2_dataset(tmp_path / "ds", ["a", "b", "c"])
    with pytest.raises(DatasetError, match="fold 'all'"):
        training_datalist(root, 0)
    assert len(training_datalist(root, "all")) == 3


def test_msd_dataset_splits_like_a_v2_dataset(tmp_path):
    ids = [f"BRATS_{i:03d}" for i in range(6)]
    root = make_msd_dataset(tmp_path / "ds", ids)
    val = sorted(item["id"] for item in validation_datalist(root, 1))
    assert val == sorted(kfold_split(ids)[1]["val"])
