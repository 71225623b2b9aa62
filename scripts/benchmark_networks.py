"""Time one training step (forward, backward, optimiser step) of planned bundles' networks at their plan's patch
and batch, on random input; the median of several steps after a warm-up.

    python -m scripts.benchmark_networks --bundles W1,W2,... [--steps 5] [--threads 2] [--overrides "{feature_scale: 1.0}"]

This measures the network alone (no data loading, augmentation or validation), to tell how a width or a
template will scale before a training run is started.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import fire
import torch

from custom_components.data.errors import DatasetError


def step_seconds(bundle: Path, overrides: Mapping, steps: int) -> tuple[str, int, float]:
    """The network's class, its parameter count and the median seconds of one training step."""
    from custom_components.bundle_config import bundle_parser

    if not (bundle / "configs" / "train.yaml").is_file():
        raise DatasetError(f"{bundle}: not a planned bundle (no configs/train.yaml)")
    parser = bundle_parser(bundle, "train.yaml", overrides)
    net = parser.get_parsed_content("network_def")
    plan = parser.get_parsed_content("plan")
    crop = [int(s) for s in parser.get_parsed_content("crop_size")]
    spatial = crop if int(parser.get_parsed_content("spatial_dims")) == 3 else [s for s in crop if s > 1]
    x = torch.randn(int(plan["batch_size"]), int(plan["num_channels"]), *spatial)
    optimizer = torch.optim.Adam(net.parameters())
    net.train()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        out = net(x)
        loss = out.float().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i > 0:  # the first step is the warm-up
            times.append(time.perf_counter() - start)
    return type(net).__name__, sum(p.numel() for p in net.parameters()), statistics.median(times)


def main(bundles: str, steps: int = 5, threads: int = 2, overrides: Mapping | None = None) -> None:
    """Print one line per bundle: network, parameters, patch and median step time."""
    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    try:
        for b in [b.strip() for b in (bundles.split(",") if isinstance(bundles, str) else bundles) if b.strip()]:
            name, params, seconds = step_seconds(Path(b), dict(overrides or {}), int(steps))
            print(f"{Path(b).name}: {name}, {params:,} parameters, {seconds:.3f} s per training step "
                  f"(median of {steps}, {threads} threads)", flush=True)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    fire.Fire(main)
