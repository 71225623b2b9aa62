"""A dataset in nnU-Net v2's raw layout (`nnUNet_raw/DatasetNNN_Name/`), so that nnU-Net reads the very files we do.

The images and labels are linked, never copied or changed; only `dataset.json` is written anew, from what
`read_dataset` understood, so a Medical Segmentation Decathlon folder converts as well as an nnU-Net one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from custom_components.data import DatasetError, read_dataset
from custom_components.io_utils import atomic_write_text


def _ending(path: str) -> str:
    return ".nii.gz" if path.endswith(".nii.gz") else Path(path).suffix


def _link(source: str, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_symlink() and os.path.realpath(link) == os.path.realpath(source):
            return
        raise DatasetError(f"{link} exists and is not a link to {source}; choose an empty nnUNet_raw folder")
    os.symlink(os.path.abspath(source), link)


def write_nnunet_raw(dataset_dir: str | os.PathLike, raw_root: str | os.PathLike, dataset_id: int = 990) -> Path:
    """Link `dataset_dir`'s cases into `raw_root/DatasetNNN_<name>/` (imagesTr, labelsTr, imagesTs) and write its
    dataset.json; returns that folder. nnU-Net wants one file per channel, named `<case>_<CCCC><ending>`."""
    info = read_dataset(dataset_dir)
    if not 1 <= int(dataset_id) <= 999:
        raise DatasetError(f"dataset_id {dataset_id}: nnU-Net numbers datasets 1..999")
    name = re.sub(r"[^A-Za-z0-9]+", "", info.name) or "Dataset"
    folder = Path(raw_root) / f"Dataset{int(dataset_id):03d}_{name}"
    endings = set()
    for part, cases in (("Tr", info.training), ("Ts", info.test)):
        for case in cases:
            if len(case["image"]) != info.num_channels:
                raise DatasetError(f"{case['image'][0]}: case '{case['id']}' has {len(case['image'])} image file(s) for "
                                   f"{info.num_channels} channels; nnU-Net needs one file per channel")
            for channel, image in enumerate(case["image"]):
                endings.add(_ending(image))
                _link(image, folder / f"images{part}" / f"{case['id']}_{channel:04d}{_ending(image)}")
            if part == "Tr":
                _link(case["label"], folder / "labelsTr" / f"{case['id']}{_ending(case['label'])}")
    if len(endings) != 1:
        raise DatasetError(f"{info.root}: nnU-Net needs one file ending for all images, found {sorted(endings)}")
    dataset_json = {"name": info.name, "channel_names": dict(info.channel_names), "labels": dict(info.labels),
                    "numTraining": len(info.training), "file_ending": endings.pop()}
    atomic_write_text(folder / "dataset.json", json.dumps(dataset_json, indent=2) + "\n")
    return folder
