"""DICOM series input: find the series in a folder, check that it is one whole, evenly spaced volume, and read it.

pydicom reads the headers (which series, which order, what is missing); ITK reads the pixels in that order,
so compressed transfer syntaxes that GDCM decodes work too. Every refusal names the folder or file and says
what is wrong.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from monai.data import ITKReader
from monai.utils import ensure_tuple

from custom_components.data.errors import DatasetError

# header rounding in real series moves slice positions by up to a few percent of the spacing (seen: +-0.8%);
# beyond this the volume would be resampled onto a wrong grid, so it is refused
SPACING_TOLERANCE = 0.05
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass
class DicomSeries:
    """One series of a folder: its files in slice order (along the slice normal) and what describes it."""

    uid: str
    files: list[str] = field(default_factory=list)
    description: str = ""
    modality: str = ""
    patient_id: str = ""
    series_number: str = ""
    transfer_syntax: str = ""
    slice_spacing: float | None = None


def _headers(folder: Path) -> dict[str, list[tuple[str, object]]]:
    """Every DICOM image file under `folder` (recursively), grouped by SeriesInstanceUID; other files are skipped."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list[tuple[str, object]]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:  # defer_size: large elements (the pixels) are not read, but their presence is known
            ds = pydicom.dcmread(path, defer_size="1 KB")
        except (InvalidDicomError, OSError, ValueError):
            continue
        uid = ds.get("SeriesInstanceUID")
        if uid is None or ds.get("SOPClassUID") == "1.2.840.10008.1.3.10":  # DICOMDIR and other non-images
            continue
        series.setdefault(str(uid), []).append((str(path), ds))
    return series


def list_series(folder: str | os.PathLike) -> dict[str, list[tuple[str, object]]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder (a DICOM series is read from a folder of its files)")
    found = _headers(folder)
    if not found:
        raise DatasetError(f"{folder}: no DICOM image files found")
    return found


def _describe(uid: str, items: list) -> str:
    ds = items[0][1]
    return (f"{uid} ({ds.get('Modality', '?')}, series {ds.get('SeriesNumber', '?')} "
            f"'{ds.get('SeriesDescription', '')}', {len(items)} files)")


def _slice_positions(folder: Path, items: list) -> tuple[np.ndarray, np.ndarray]:
    """Each file's position along the slice normal, and the normal; refuses missing or differing orientations."""
    orientation = None
    positions = []
    for path, ds in items:
        iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
        if iop is None or ipp is None:
            raise DatasetError(f"{path}: no ImageOrientationPatient / ImagePositionPatient, so the slice cannot be placed")
        iop = np.asarray([float(v) for v in iop])
        if orientation is None:
            orientation = iop
        elif not np.allclose(iop, orientation, atol=1e-3):
            raise DatasetError(f"{path}: its orientation {iop.round(4).tolist()} differs from the series' "
                               f"{orientation.round(4).tolist()} (a localiser or a reformatted slice in the series?)")
        positions.append([float(v) for v in ipp])
    normal = np.cross(orientation[:3], orientation[3:])
    return np.asarray(positions) @ normal, normal


def check_series(folder: str | os.PathLike, uid: str, items: list) -> DicomSeries:
    """The series with its files in slice order, after checking pixel data, decodability-relevant headers and
    slice spacing (missing slices and uneven spacing are refused: resampling would hide the gap)."""
    folder = Path(folder)
    for path, ds in items:
        if not any(tag in ds for tag in PIXEL_TAGS):
            raise DatasetError(f"{path}: series {uid} has a file with no pixel data (a report or a structured "
                               "document?); remove it or pick another series")
    first = items[0][1]
    series = DicomSeries(uid=uid, description=str(first.get("SeriesDescription", "")),
                         modality=str(first.get("Modality", "")), patient_id=str(first.get("PatientID", "")),
                         series_number=str(first.get("SeriesNumber", "")),
                         transfer_syntax=str(getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", "") or ""))
    if len(items) == 1:
        series.files = [items[0][0]]
        return series
    pos, _ = _slice_positions(folder, items)
    order = np.argsort(pos)
    pos = pos[order]
    series.files = [items[i][0] for i in order]
    steps = np.diff(pos)
    duplicates = np.nonzero(steps < 1e-3)[0]
    if duplicates.size:
        i = int(duplicates[0])
        raise DatasetError(f"{folder}: series {uid}: {series.files[i]} and {series.files[i + 1]} lie at the same "
                           f"position {pos[i]:.3f} mm (two acquisitions or echoes in one series?)")
    spacing = float(np.median(steps))
    deviation = np.abs(steps - spacing) / spacing
    if deviation.max() > SPACING_TOLERANCE:
        i = int(np.argmax(deviation))
        gap = steps[i] / spacing
        if abs(gap - round(gap)) < SPACING_TOLERANCE and round(gap) >= 2:
            raise DatasetError(f"{folder}: series {uid} is missing {int(round(gap)) - 1} slice(s) between "
                               f"{Path(series.files[i]).name} ({pos[i]:.2f} mm) and {Path(series.files[i + 1]).name} "
                               f"({pos[i + 1]:.2f} mm): the slices are {spacing:.3f} mm apart elsewhere. "
                               "Refused: the volume would have a hole.")
        raise DatasetError(f"{folder}: series {uid} has uneven slice spacing ({steps.min():.3f} to {steps.max():.3f} mm, "
                           f"median {spacing:.3f}): refused, since one voxel grid cannot hold it; resample it to a "
                           "regular grid first")
    if deviation.max() > 1e-3:
        warnings.warn(f"{folder}: series {uid}: slice spacing varies from {steps.min():.4f} to {steps.max():.4f} mm "
                      f"(within {SPACING_TOLERANCE:.0%} of the median {spacing:.4f}, header rounding); read on the mean "
                      "spacing", stacklevel=2)
    series.slice_spacing = float(np.mean(steps))
    return series


def select_series(folder: str | os.PathLike, series_uid: str | None = None) -> DicomSeries:
    """The one series of `folder` (or the one named `series_uid`), checked and in slice order."""
    found = list_series(folder)
    if series_uid:
        if series_uid not in found:
            raise DatasetError(f"{folder}: no series {series_uid}; it holds " + "; ".join(_describe(u, v) for u, v in found.items()))
        uid = series_uid
    elif len(found) > 1:
        raise DatasetError(f"{folder}: {len(found)} series in one folder: " + "; ".join(_describe(u, v) for u, v in found.items())
                           + ". Say which with series_uid (or put each series in its own folder)")
    else:
        uid = next(iter(found))
    return check_series(folder, uid, found[uid])


def read_series_image(series: DicomSeries):
    """The series as an ITK image, read in the checked slice order; undecodable pixels are a clear error."""
    import itk

    from pydicom.uid import UID

    files = series.files if len(series.files) > 1 else series.files[0]
    try:
        return itk.imread(files)
    except RuntimeError as e:
        syntax = UID(series.transfer_syntax) if series.transfer_syntax else None
        name = f"{syntax} ({syntax.name})" if syntax is not None else "unknown"
        raise DatasetError(f"{Path(series.files[0]).parent}: series {series.uid}: its pixels could not be decoded "
                           f"(transfer syntax {name}): {str(e).strip().splitlines()[-1][:200]}. Decompress it first, "
                           "e.g. with gdcmconv --raw or dcmdjpeg") from e


class DicomSeriesReader(ITKReader):
    """MONAI image reader for a folder holding one DICOM series: `LoadImaged(reader=DicomSeriesReader())` reads
    NIfTI files as before (other readers take them) and checked DICOM series folders through ITK."""

    def __init__(self, series_uid: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.series_uid = series_uid

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        return all(Path(f).is_dir() for f in ensure_tuple(filename))

    def read(self, data, **kwargs):
        images = [read_series_image(select_series(d, self.series_uid)) for d in ensure_tuple(data)]
        return images if len(images) > 1 else images[0]
