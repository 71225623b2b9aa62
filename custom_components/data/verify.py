"""Verification of a dataset folder before planning: every problem at once, each message naming its file.

Planning (`custom_components.planning.dataset_plan`) stops at the first bad case; a dataset of hundreds of cases
is mended faster from one list of everything wrong. The checks are planning's (files, image and label grids,
channels, label values, finite intensities, positive spacing, with its tolerances), plus duplicate case ids and a
warning for cases stored in another orientation than most. Files are read with nibabel one at a time, so memory
holds one volume.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.openers import ImageOpener

from custom_components.data.dataset import check_files_exist, check_has_training_cases, read_dataset
from custom_components.data.errors import DatasetError

# CheckImaged's tolerance on the affine, so that a grid verified here also passes planning's check
AFFINE_ATOL, AFFINE_RTOL = 1e-3, 1e-4


@dataclass
class VerificationReport:
    """Everything wrong with a dataset (errors) and everything odd but usable (warnings)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cases_checked: int = 0

    def lines(self) -> list[str]:
        """The report as the command lines print it on stderr: warnings, then errors."""
        return [f"warning: {w}" for w in self.warnings] + [f"error: {e}" for e in self.errors]

    def summary(self) -> str:
        return f"{self.cases_checked} case(s) checked: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"


@dataclass
class Grid:
    """Where a volume's voxels lie: what image, channel files and label of one case must share."""

    path: str
    shape: tuple[int, ...]
    affine: np.ndarray


def spacing_problem(spacing: Sequence[float]) -> str | None:
    """What is wrong with voxel sizes that are zero or negative (resampling divides by them), or None."""
    spacing = np.asarray(spacing, dtype=np.float64)
    return f"spacing {spacing.tolist()} is not positive" if np.any(spacing <= 0) else None


def shape_problem(shape: Sequence[int]) -> str | None:
    """What is wrong with a volume that is a point or a line (a single slice is fine), or None."""
    if sum(int(n) >= 2 for n in shape) < 2:
        return f"shape {tuple(int(n) for n in shape)} is a point or a line; at least two axes need 2 or more voxels"
    return None


def grid_differences(grid: Grid, reference: Grid) -> list[str]:
    """How a grid differs from a reference grid (shape, spacing, origin, direction); [] where it matches.

    Whether the affines match is decided as planning's CheckImaged decides it; the parts only say where."""
    parts = [f"shape {grid.shape} vs {reference.shape}"] if grid.shape != reference.shape else []
    a, b = grid.affine, reference.affine
    if np.allclose(b, a, atol=AFFINE_ATOL, rtol=AFFINE_RTOL):  # CheckImaged's order: relative to the label's
        return parts
    sa, sb = voxel_sizes(a), voxel_sizes(b)
    da, db = a[:3, :3] / np.where(sa > 0, sa, 1), b[:3, :3] / np.where(sb > 0, sb, 1)
    compared = [("spacing", sa, sb), ("origin", a[:3, 3], b[:3, 3]), ("direction", da, db)]
    differ = [f"{name} {_fmt(x)} vs {_fmt(y)}" for name, x, y in compared
              if not np.allclose(x, y, atol=AFFINE_ATOL, rtol=AFFINE_RTOL)]
    return parts + (differ or [f"affine {_fmt(a)} vs {_fmt(b)}"])


def orientation_warnings(grids: list[Grid]) -> list[str]:
    """Cases whose axis codes differ from most cases'. The pipeline works in array axes without reorienting
    (as nnU-Net does), so such a case is seen with its anatomy flipped or its axes swapped."""
    codes = [(g.path, "".join(nib.aff2axcodes(g.affine))) for g in grids if np.all(voxel_sizes(g.affine) > 0)]
    if not codes:
        return []
    majority, count = Counter(c for _, c in codes).most_common(1)[0]
    return [f"{path}: orientation {c} differs from {majority}, that of {count} of {len(codes)} cases"
            for path, c in codes if c != majority]


def verify_dataset(dataset_dir: str | os.PathLike) -> VerificationReport:
    """Check every training and test case of a dataset folder and report every problem found.

    A `dataset.json` that cannot be understood (or no training case) leaves nothing to check and is the one error.
    """
    report = VerificationReport()
    try:
        info = read_dataset(dataset_dir, problems=report.errors)
        check_has_training_cases(info)
    except DatasetError as e:
        report.errors.append(str(e))
        return report
    labels = set(info.labels.values())
    grids = []
    for case in info.training + info.test:
        grid = _verify_case(case, info.num_channels, labels, report)
        report.cases_checked += 1
        if grid is not None:
            grids.append(grid)
    report.warnings += orientation_warnings(grids)
    return report


def _verify_case(case: dict, num_channels: int, labels: set[int], report: VerificationReport) -> Grid | None:
    """One case's files, one at a time; the grid of its first image file, for the orientation comparison."""
    paths = case["image"] if isinstance(case["image"], list) else [case["image"]]
    grid: Grid | None = None
    channels: int | None = 0  # None once a file is unusable: the count is then unknown
    for path in paths:
        found = _verify_image_file(path, case["id"], report)
        if found is None:
            channels = None
            continue
        n, file_grid = found
        channels = None if channels is None else channels + n
        if grid is None:
            grid = file_grid
        elif differences := grid_differences(file_grid, grid):
            report.errors.append(f"{path}: channel grid differs from {grid.path}: " + "; ".join(differences))
    if channels is not None and channels != num_channels:
        report.errors.append(f"{', '.join(paths)}: image has {channels} channel(s) but dataset.json names {num_channels}")
    if "label" in case:
        _verify_label_file(case["label"], case["id"], grid, labels, report)
    return grid


def _verify_image_file(path: str, case_id: str, report: VerificationReport) -> tuple[int, Grid] | None:
    """An image file's own problems; its channel count and grid, or None where it cannot be used."""
    read = _read(path, case_id, report)
    if read is None:
        return None
    data, grid = read
    if data.ndim not in (3, 4):
        report.errors.append(f"{path}: image has shape {data.shape}; expected a 3D volume "
                             "(4D with the channels last for MSD's multi-modal cases)")
        return None
    if problem := shape_problem(data.shape[:3]):
        report.errors.append(f"{path}: image {problem}")
    if np.issubdtype(data.dtype, np.floating) and (bad := np.count_nonzero(~np.isfinite(data))):
        report.errors.append(f"{path}: image has {bad} NaN or infinite voxel value(s)")
    return (data.shape[3] if data.ndim == 4 else 1), grid


def _verify_label_file(path: str, case_id: str, image: Grid | None, labels: set[int], report: VerificationReport) -> None:
    """A label file's problems: its own, its grid against the image's, and values outside dataset.json."""
    read = _read(path, case_id, report)
    if read is None:
        return
    data, grid = read
    if not (data.ndim == 3 or data.ndim == 4 and data.shape[3] == 1):
        report.errors.append(f"{path}: label has shape {data.shape}; expected a 3D volume")
    elif image is not None and (differences := grid_differences(grid, image)):
        report.errors.append(f"{path}: label grid differs from image {image.path}: " + "; ".join(differences))
    values = np.unique(data)
    if not np.all(np.isfinite(values)):
        report.errors.append(f"{path}: label has NaN or infinite values")
    elif np.any(values != np.round(values)):
        report.errors.append(f"{path}: label values {values[values != np.round(values)][:5].tolist()} are not integers")
    elif extra := sorted({int(v) for v in values} - labels):
        report.errors.append(f"{path}: label values {extra} are not among dataset.json's labels {sorted(labels)}")


def _read(path: str, case_id: str, report: VerificationReport) -> tuple[np.ndarray, Grid] | None:
    """A file's voxels and grid, its spacing checked; None, with the reason reported, where it is missing,
    unreadable or truncated."""
    try:
        check_files_exist({"id": case_id, "image": path})
        with _quiet_nibabel():
            img = nib.load(path)
            data = np.asanyarray(img.dataobj)  # every voxel is read: a truncated file fails here
        with ImageOpener(path) as f:  # the header as written, before nibabel's fixes of the voxel sizes
            written = type(img.header).from_fileobj(f, check=False)
    except DatasetError as e:
        report.errors.append(str(e))
        return None
    except Exception as e:  # noqa: BLE001 - whatever a damaged file raises is that file's problem, reported with the rest
        report.errors.append(f"{path}: cannot be read ({type(e).__name__}: {e})")
        return None
    grid = Grid(path, tuple(data.shape[:3]), np.asarray(img.affine, dtype=np.float64))
    if problem := spacing_problem(voxel_sizes(grid.affine)):
        report.errors.append(f"{path}: {problem}")
    elif np.any((pixdim := np.asarray(written["pixdim"][1:4], dtype=np.float64)) <= 0):
        message = f"{path}: the header's voxel sizes (pixdim) {pixdim.tolist()} are not positive"
        if written["sform_code"] > 0:  # the sform affine, which is valid, places the voxels; pixdim is unused
            report.warnings.append(message + "; the valid sform affine is used")
        else:  # the affine is built from pixdim, which nibabel replaced by a guess
            report.errors.append(message + f"; nibabel reads them as {voxel_sizes(grid.affine).tolist()}")
    return data, grid


@contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """nibabel logs the header fixes it makes while loading; `_read` reports them in the report instead."""
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fmt(values: np.ndarray) -> str:
    """Numbers on one line, rounded (adding 0.0 turns -0.0 into 0.0)."""
    return str((np.round(np.asarray(values, dtype=np.float64), 4) + 0.0).tolist())
