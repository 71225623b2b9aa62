"""nnU-Net's dataset fingerprint: what the planner needs to know about a training set.

Per case (nnU-Net `DatasetFingerprintExtractor`): crop image and label to the bounding box of the image's
nonzero region, record spacing and shapes before/after the crop, and draw foreground intensities (voxels
with label > 0) with replacement. Per dataset: the spacings and cropped shapes of all cases, the median
relative size after crop (drives the nonzero-mask normalisation rule) and per-channel statistics of the
pooled foreground samples (drive the CT normalisation). Pure numpy, no I/O: the caller loads the images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# nnU-Net draws 1e7 foreground voxels in total, split evenly across cases, with a fixed seed.
FOREGROUND_SAMPLES_TOTAL = 10_000_000
FINGERPRINT_SEED = 1234


def foreground_samples_per_case(num_cases: int, total: int = FOREGROUND_SAMPLES_TOTAL) -> int:
    """Samples to draw per case so that the whole dataset contributes `total` (nnU-Net's even split)."""
    return int(total // max(num_cases, 1))


def nonzero_bounding_box(image: np.ndarray) -> tuple[slice, ...]:
    """Spatial slices of the box around voxels where any channel is nonzero (whole image if all zero)."""
    nonzero = np.any(image != 0, axis=0)
    if not nonzero.any():
        return tuple(slice(0, s) for s in nonzero.shape)
    box = []
    for axis in range(nonzero.ndim):
        others = tuple(a for a in range(nonzero.ndim) if a != axis)
        hits = np.flatnonzero(nonzero.any(axis=others))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def case_fingerprint(
    image: np.ndarray,
    label: np.ndarray | None,
    spacing: Sequence[float],
    num_samples: int,
    rng: np.random.Generator,
) -> dict:
    """Fingerprint of one channel-first case after nnU-Net's crop to the nonzero bounding box."""
    image = np.asarray(image)
    if image.ndim != len(spacing) + 1:
        raise ValueError(f"image must be channel-first with {len(spacing)} spatial axes, got {image.shape}")
    box = nonzero_bounding_box(image)
    cropped = image[(slice(None),) + box]
    shape_before = [int(s) for s in image.shape[1:]]
    shape_after = [int(s) for s in cropped.shape[1:]]

    samples = [np.empty(0, dtype=np.float64) for _ in range(image.shape[0])]
    if label is not None and num_samples > 0:
        label = np.asarray(label)
        if label.shape != image.shape[1:]:
            raise ValueError(f"label shape {label.shape} does not match image spatial shape {image.shape[1:]}")
        foreground = np.flatnonzero(label[box] > 0)
        if foreground.size:
            # One index draw shared by all channels keeps the channels' samples voxel-paired.
            picked = rng.choice(foreground, size=num_samples, replace=True)
            samples = [cropped[c].reshape(-1)[picked].astype(np.float64) for c in range(cropped.shape[0])]

    return {
        "spacing": [float(s) for s in spacing],
        "shape_before_crop": shape_before,
        "shape_after_crop": shape_after,
        "relative_size_after_crop": float(np.prod(shape_after, dtype=np.float64) / np.prod(shape_before)),
        "foreground_samples": samples,
    }


def intensity_statistics(samples: np.ndarray) -> dict:
    """nnU-Net's per-channel foreground statistics; None everywhere when there is no foreground."""
    keys = ("mean", "median", "std", "min", "max", "percentile_00_5", "percentile_99_5")
    if samples.size == 0:
        return dict.fromkeys(keys)
    values = (
        np.mean(samples), np.median(samples), np.std(samples), np.min(samples), np.max(samples),
        np.percentile(samples, 0.5), np.percentile(samples, 99.5),
    )
    return {k: float(v) for k, v in zip(keys, values)}


def aggregate_fingerprint(case_fingerprints: list[dict]) -> dict:
    """Dataset fingerprint (JSON-ready) from per-case fingerprints, statistics on pooled foreground samples."""
    if not case_fingerprints:
        raise ValueError("need at least one case fingerprint")
    num_channels = len(case_fingerprints[0]["foreground_samples"])
    pooled = [
        np.concatenate([np.asarray(cf["foreground_samples"][c], dtype=np.float64).ravel() for cf in case_fingerprints])
        for c in range(num_channels)
    ]
    relative_sizes = [cf["relative_size_after_crop"] for cf in case_fingerprints]
    return {
        "spacings": [[float(s) for s in cf["spacing"]] for cf in case_fingerprints],
        "shapes_after_crop": [[int(s) for s in cf["shape_after_crop"]] for cf in case_fingerprints],
        "median_relative_size_after_crop": float(np.median(relative_sizes)),
        "foreground_intensity_properties_per_channel": {str(c): intensity_statistics(p) for c, p in enumerate(pooled)},
    }
