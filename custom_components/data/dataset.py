"""Reading a dataset folder in the Medical Segmentation Decathlon or nnU-Net v2 layout.

Both layouts share `imagesTr/`, `labelsTr/`, `imagesTs/` (and optionally `labelsTs/`) beside a
`dataset.json`. MSD's json lists the training cases and names channels under `modality`, one 4D NIfTI
per multi-modal case; nnU-Net v2's json names channels under `channel_names` and finds cases by file name,
one file per channel with a `_0000` suffix.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from custom_components.data.errors import DatasetError

NIFTI_ENDINGS = (".nii.gz", ".nii")


@dataclass
class DatasetInfo:
    """What a dataset folder holds: its channels, its labels and its cases (file paths, never pixels)."""

    root: str
    name: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    training: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    layout: str = "nnunetv2"

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        """Classes including background, as the network's output channels count them."""
        return max(self.labels.values()) + 1


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: dataset.json is missing; a dataset folder needs dataset.json, imagesTr/ and labelsTr/")
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: cannot be read as JSON ({e})") from e
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level, found {type(content).__name__}")
    return content


def _labels_from_json(path: Path, content: dict) -> dict[str, int]:
    raw = content.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{path}: 'labels' must be a non-empty object (name -> value, or MSD's value -> name)")
    labels: dict[str, int] = {}
    try:
        if all(re.fullmatch(r"-?\d+", str(k)) for k in raw):  # MSD: {"0": "background", "1": "liver"}
            labels = {str(v): int(k) for k, v in raw.items()}
        else:  # nnU-Net v2: {"background": 0, "liver": 1}
            for name, value in raw.items():
                if isinstance(value, (list, tuple)):  # v2 region-based labels are not supported
                    raise DatasetError(f"{path}: label '{name}' is a region {value}; only plain integer labels are supported")
                labels[str(name)] = int(value)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: label values must be integers ({e})") from e
    values = sorted(labels.values())
    if values[0] != 0 or values != list(range(len(values))):
        raise DatasetError(f"{path}: label values must be 0 (background), 1, 2, ... without gaps; found {values}")
    return labels


def _case_id(filename: str, ending: str) -> str:
    return filename[: -len(ending)]


def _v2_cases(root: Path, images: str, labels: str | None, ending: str, n_channels: int, require_labels: bool,
              problems: list[str] | None = None) -> list[dict]:
    """Group `images/<id>_<cccc><ending>` files by case; pair each case with `labels/<id><ending>`.

    Without `problems`, the first missing file is an error. With it (verification), a case keeps the paths of its
    missing files for the caller to report with the rest, and channel files beyond `n_channels` and image files
    without a channel suffix are collected.
    """
    strict = problems is None
    img_dir = root / images
    if not img_dir.is_dir():
        return []
    pattern = re.compile(r"^(.*)_(\d{4})" + re.escape(ending) + "$")
    by_case: dict[str, dict[int, str]] = {}
    for entry in sorted(os.listdir(img_dir)):
        m = pattern.match(entry)
        if m:
            by_case.setdefault(m.group(1), {})[int(m.group(2))] = str(img_dir / entry)
        elif not strict and entry.endswith(ending):  # a case that training would silently leave out
            problems.append(f"{img_dir / entry}: not named <case>_<channel>{ending} (such as case_001_0000{ending}), "
                            "so no case reads it")
    if require_labels and labels is not None and (root / labels).is_dir():
        for entry in sorted(os.listdir(root / labels)):
            if entry.endswith(ending) and _case_id(entry, ending) not in by_case:
                case_id = _case_id(entry, ending)
                if strict:
                    raise DatasetError(f"{img_dir / f'{case_id}_0000{ending}'}: image file is missing for label {root / labels / entry}")
                by_case[case_id] = {}  # a labelled case without images: its image paths are reported missing
    cases = []
    for case_id, channels in sorted(by_case.items()):
        missing = [c for c in range(n_channels) if c not in channels]
        if missing and strict:
            raise DatasetError(
                f"{img_dir}: case '{case_id}' lacks channel file(s) "
                + ", ".join(f"{case_id}_{c:04d}{ending}" for c in missing)
            )
        if not strict:
            problems += [f"{path}: channel {c} is beyond the {n_channels} channel(s) of dataset.json (case '{case_id}')"
                         for c, path in sorted(channels.items()) if c >= n_channels]
        case = {"id": case_id, "image": [channels.get(c, str(img_dir / f"{case_id}_{c:04d}{ending}")) for c in range(n_channels)]}
        if labels is not None:
            label_path = root / labels / f"{case_id}{ending}"
            if label_path.is_file() or (require_labels and not strict):
                case["label"] = str(label_path)
            elif require_labels:
                raise DatasetError(f"{label_path}: label file is missing for training case '{case_id}'")
        cases.append(case)
    return cases


def _msd_path(root: Path, rel: str) -> str:
    return str((root / rel).resolve()) if not os.path.isabs(rel) else rel


def _msd_cases(root: Path, path: Path, content: dict) -> tuple[list[dict], list[dict]]:
    training = []
    for i, item in enumerate(content.get("training", [])):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise DatasetError(f"{path}: training entry {i} must be an object with 'image' and 'label'")
        image = _msd_path(root, item["image"])
        ending = next((e for e in NIFTI_ENDINGS if image.endswith(e)), "")
        training.append({"id": _case_id(os.path.basename(image), ending) if ending else os.path.basename(image),
                         "image": image, "label": _msd_path(root, item["label"])})
    test = []
    for item in content.get("test", []):
        image = _msd_path(root, item["image"] if isinstance(item, dict) else item)
        ending = next((e for e in NIFTI_ENDINGS if image.endswith(e)), "")
        case_id = _case_id(os.path.basename(image), ending) if ending else os.path.basename(image)
        case = {"id": case_id, "image": image}
        label = root / "labelsTs" / os.path.basename(image)
        if label.is_file():
            case["label"] = str(label)
        test.append(case)
    return training, test


def _report(problems: list[str] | None, message: str) -> None:
    """Raise the problem, or collect it and go on when the caller verifies everything at once."""
    if problems is None:
        raise DatasetError(message)
    problems.append(message)


def read_dataset(dataset_dir: str | os.PathLike, problems: list[str] | None = None) -> DatasetInfo:
    """Parse `dataset.json` (MSD or nnU-Net v2) and list the training and test cases with their files.

    Only file names are checked here; pixel-level checks happen when images are loaded
    (see `custom_components.transforms.checks`). A problem in the case list (a missing file, a wrong
    `numTraining`, a duplicate id) is raised; given a `problems` list, it is collected there instead
    (`custom_components.data.verify`). A `dataset.json` that cannot be understood is always raised.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    path = root / "dataset.json"
    content = _read_json(path)
    labels = _labels_from_json(path, content)
    if "channel_names" in content:
        channels = content["channel_names"]
        layout = "nnunetv2"
    elif "modality" in content:
        channels = content["modality"]
        layout = "msd"
    else:
        raise DatasetError(f"{path}: names no channels; expected 'channel_names' (nnU-Net v2) or 'modality' (MSD)")
    if not isinstance(channels, dict) or not channels:
        raise DatasetError(f"{path}: the channel names must be a non-empty object such as {{\"0\": \"CT\"}}")
    channel_names = {str(k): str(v) for k, v in sorted(channels.items(), key=lambda kv: int(kv[0]))}
    if layout == "msd" and "training" in content:
        training, test = _msd_cases(root, path, content)
    else:
        ending = content.get("file_ending", ".nii.gz")
        if ending not in NIFTI_ENDINGS:
            raise DatasetError(f"{path}: file_ending '{ending}' is not supported; use one of {NIFTI_ENDINGS}")
        training = _v2_cases(root, "imagesTr", "labelsTr", ending, len(channel_names), True, problems)
        test = _v2_cases(root, "imagesTs", "labelsTs", ending, len(channel_names), False, problems)
    declared = content.get("numTraining")
    if isinstance(declared, int) and training and declared != len(training):
        _report(problems, f"{path}: numTraining is {declared} but {len(training)} training case(s) were found")
    ids = [c["id"] for c in training]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        _report(problems, f"{path}: duplicate training case ids {dupes}")
    return DatasetInfo(str(root), str(content.get("name", root.name)), channel_names, labels, training, test, layout)


def require_training_cases(info: DatasetInfo) -> list[dict]:
    """The training cases, each with existing files; an empty dataset is an error, not an empty run."""
    check_has_training_cases(info)
    for case in info.training:
        check_files_exist(case)
    return info.training


def check_has_training_cases(info: DatasetInfo) -> None:
    """An empty dataset is an error, not an empty run (a wrong folder, or a json that lists nothing)."""
    if not info.training:
        raise DatasetError(f"{info.root}: the dataset has no training cases (looked in dataset.json and imagesTr/)")


def check_files_exist(case: dict) -> None:
    """Name the first missing or unreadable file of a case."""
    images = case["image"] if isinstance(case["image"], list) else [case["image"]]
    for p in images + ([case["label"]] if "label" in case else []):
        if not os.path.isfile(p):
            raise DatasetError(f"{p}: file is missing (case '{case.get('id', '?')}')")
        if not os.access(p, os.R_OK):
            raise DatasetError(f"{p}: file is not readable (case '{case.get('id', '?')}')")
