"""Our side of the benchmark's in-process measurements: the same code paths the bundle's workflows run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from custom_components.bundle_config import bundle_parser


def preprocess_training_cases(bundle_root: str | Path, dataset_dir: str | Path, overrides: Mapping) -> dict:
    """Run the training's deterministic preprocessing (what its cache holds: load, crop, normalise, resample)
    over every training case; the seconds and the cases."""
    from monai.transforms import Compose

    from custom_components.data import training_datalist

    parser = bundle_parser(bundle_root, "train.yaml", {**dict(overrides), "dataset_dir": str(dataset_dir)})
    transform = Compose(parser.get_parsed_content("train#deterministic_transforms"))
    cases = training_datalist(dataset_dir, "all", parser.get_parsed_content("num_channels"))
    start = time.perf_counter()
    for case in cases:
        transform(case)
    return {"seconds": time.perf_counter() - start, "cases": len(cases)}


def inference_parts(bundle_root: str | Path, overrides: Mapping, threads: int):
    """The bundle's inference config parsed with `overrides`, its network (seeded random weights: times do not
    depend on them) in eval mode and its inferer, on `threads` torch threads."""
    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    parser = bundle_parser(bundle_root, "inference.yaml", overrides)
    return parser, parser.get_parsed_content("network_def").eval(), parser.get_parsed_content("inferer")


def time_sliding_window(bundle_root: str | Path, image: str, overrides: Mapping, mirroring: bool, repeats: int,
                        threads: int) -> dict:
    """Seconds of the bundle's inferer (sliding window, Gaussian weights, mirroring on or off) on one
    preprocessed case, `repeats` times, with seeded random weights (the time does not depend on them)."""
    parser, network, inferer = inference_parts(bundle_root, {**dict(overrides), "use_mirroring": bool(mirroring)}, threads)
    start = time.perf_counter()
    x = parser.get_parsed_content("preprocessing")({"image": image})["image"][None]
    preprocessing = time.perf_counter() - start
    times = []
    with torch.no_grad():
        for _ in range(int(repeats)):
            start = time.perf_counter()
            logits = inferer(x, network)
            times.append(time.perf_counter() - start)
    from custom_components.benchmarking.throughput import counted_flops

    flops = counted_flops(lambda: inferer(x, network))
    return {"system": "ours", "mirroring": bool(mirroring), "seconds": times, "median_seconds": statistics.median(times),
            "flops": flops, "gflops": flops / statistics.median(times) / 1e9,
            "preprocessing_seconds": preprocessing, "input_shape": list(x.shape[1:]),
            "output_shape": list(logits.shape[1:]), "threads": torch.get_num_threads(),
            "settings": {"tile_mirroring": getattr(inferer, "tile_mirroring", None),
                         "precision": inferer._precision(x) if hasattr(inferer, "_precision") else "float32",
                         "mirror_batch": getattr(inferer, "mirror_batch", None)}}
