"""DICOM SEG output: a predicted label map written as a Segmentation object that references its source series,
one segment per class, named from the bundle's metadata (highdicom does the encoding)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from custom_components.data.dicom import DicomSeries
from custom_components.data.errors import DatasetError
from custom_components.io_utils import atomic_path


def class_names_from_metadata(bundle_root: str | os.PathLike) -> dict[int, str]:
    """The foreground classes of `configs/metadata.json` (`outputs.pred.channel_def`), by label value."""
    path = Path(bundle_root) / "configs" / "metadata.json"
    try:
        channel_def = json.loads(path.read_text())["network_data_format"]["outputs"]["pred"]["channel_def"]
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: no network_data_format.outputs.pred.channel_def to name the segments ({e})") from e
    return {int(k): str(v) for k, v in channel_def.items() if int(k) != 0}


def write_dicom_seg(label_map: np.ndarray, series: DicomSeries, segments: Mapping[int, str], path: str | os.PathLike,
                    algorithm: str = "monai-unet-family", version: str = "1") -> None:
    """Write `label_map` (X, Y, Z in the series' read order: columns, rows, slices) as a BINARY DICOM SEG of the
    series' files, segment k = label value k; atomically."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    label_map = np.asarray(label_map)
    label_map = label_map[0] if label_map.ndim == 4 else label_map
    sources = [pydicom.dcmread(f) for f in series.files]
    expected = (int(sources[0].Columns), int(sources[0].Rows), len(sources))
    if tuple(label_map.shape) != expected:
        raise DatasetError(f"{Path(series.files[0]).parent}: the label map's shape {tuple(label_map.shape)} is not the "
                           f"series' (columns, rows, slices) {expected}")
    values = sorted(int(k) for k in segments)
    if values != list(range(1, len(values) + 1)):
        raise DatasetError(f"DICOM SEG numbers segments 1..N; the classes are {dict(segments)}")
    unknown = set(np.unique(label_map).tolist()) - {0, *values}
    if unknown:
        raise DatasetError(f"label values {sorted(unknown)} have no segment name in {dict(segments)}")
    algorithm_id = hd.AlgorithmIdentificationSequence(name=algorithm, version=version,
                                                      family=codes.DCM.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(segment_number=v, segment_label=segments[v], segmented_property_category=codes.SCT.Tissue,
                                  segmented_property_type=codes.SCT.Tissue,
                                  algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                  algorithm_identification=algorithm_id)
        for v in values
    ]
    frames = np.ascontiguousarray(np.transpose(label_map, (2, 1, 0))).astype(np.uint8)  # (slices, rows, columns)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MONAI U-Net family bundles",
        manufacturer_model_name=algorithm, software_versions=version, device_serial_number="none",
        series_description=f"{algorithm} segmentation", omit_empty_frames=False)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
