"""How our inference grows with volume size: a synthetic CT of a chosen size through the bundle's whole inference
(load, preprocess, sliding window, inversion to the input's geometry, argmax, NIfTI written), and a plot."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch


def synth_ct(shape: Sequence[int], spacing: Sequence[float], path: str | os.PathLike, seed: int = 0) -> Path:
    """An int16 CT-like volume (air, an elliptic body, an organ-like ellipsoid, noise) written as NIfTI, built
    slab by slab so that a 512x512x300 volume needs no more than its own size in memory."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    image = np.empty(shape, np.int16)
    x = (np.arange(shape[0]) - shape[0] / 2) / (0.45 * shape[0])
    y = (np.arange(shape[1]) - shape[1] / 2) / (0.40 * shape[1])
    body = (x[:, None] ** 2 + y[None, :] ** 2) <= 1.0
    for k in range(shape[2]):
        z = (k - shape[2] / 2) / (0.35 * shape[2])
        organ = ((x[:, None] + 0.2) ** 2 / 0.16 + y[None, :] ** 2 / 0.2 + z ** 2) <= 1.0
        slab = np.where(body, 25.0, -1000.0) + np.where(organ & body, 60.0, 0.0)
        image[:, :, k] = np.clip(slab + rng.normal(0.0, 12.0, slab.shape), -1024, 3071).astype(np.int16)
    affine = np.diag([*[float(s) for s in spacing], 1.0])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), str(path))
    return path


def time_case_inference(bundle_root: str | Path, image: str, overrides: Mapping, output_dir: str, threads: int) -> dict:
    """The bundle's inference of one image (random weights: the time does not depend on them), its steps timed:
    preprocessing, sliding window, postprocessing (softmax, inversion, argmax) and writing."""
    from custom_components.benchmarking.timing import inference_parts
    from custom_components.inference.writer import case_id_from_path, save_label_map

    parser, network, inferer = inference_parts(bundle_root, overrides, threads)
    post = parser.get_parsed_content("postprocessing")
    steps = {}
    start = time.perf_counter()
    data = parser.get_parsed_content("preprocessing")({"image": image})
    steps["preprocessing"] = time.perf_counter() - start
    grid = list(data["image"].shape[1:])
    t = time.perf_counter()
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    steps["sliding_window"] = time.perf_counter() - t
    t = time.perf_counter()
    data = post(data)
    steps["postprocessing"] = time.perf_counter() - t
    t = time.perf_counter()
    save_label_map(data["pred"], data["pred"].affine, Path(output_dir) / f"{case_id_from_path(image)}.nii.gz")
    steps["writing"] = time.perf_counter() - t
    return {"seconds": time.perf_counter() - start, "steps": steps, "network_grid": grid,
            "output_shape": list(data["pred"].shape[1:])}


def plot_scaling(rows: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Seconds and peak memory against voxels (log-log), one point per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    voxels = [r["voxels"] / 1e6 for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.loglog(voxels, [r["seconds"] for r in rows], "o-")
    a.set(xlabel="input voxels (millions)", ylabel="inference time (s)", title="time")
    b.loglog(voxels, [r["peak_rss_mb"] / 1024 for r in rows], "o-")
    b.axhline(8.0, color="r", ls="--", label="8 GB")
    b.set(xlabel="input voxels (millions)", ylabel="peak resident memory (GB)", title="memory")
    b.legend()
    for r, v in zip(rows, voxels):
        name = "x".join(map(str, r["shape"]))
        for ax, y in ((a, r["seconds"]), (b, r["peak_rss_mb"] / 1024)):
            ax.annotate(name, (v, y), fontsize=7, textcoords="offset points", xytext=(4, -10))
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
