"""How close inference comes to the machine's limit: the convolution FLOPs an inference really performs, over its
time, against what a plain torch convolution reaches on the same machine and threads."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def counted_flops(run: Callable[[], object]) -> int:
    """FLOPs (multiply and add counted apart) of the convolutions and matrix products that `run()` performs."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        run()
    return int(counter.get_total_flops())


def conv_peak_gflops(threads: int, precision: str = "float32", repeats: int = 5, channels: int = 64,
                     size: tuple[int, int, int] = (64, 64, 32)) -> float:
    """The best GFLOP/s of one large 3x3x3 Conv3d (`channels` in and out, batch 1) over `repeats` runs: the
    machine's reachable peak for the kind of work a U-Net does."""
    torch.set_num_threads(int(threads))
    conv = torch.nn.Conv3d(channels, channels, 3, padding=1).eval()
    x = torch.randn(1, channels, *size)
    flops = counted_flops(lambda: conv(x))
    dtype = torch.bfloat16 if precision == "bfloat16" else None
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        conv(x)  # warm-up
        for _ in range(int(repeats)):
            start = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - start)
    return flops / min(times) / 1e9


def median_gflops(flops: int, seconds: list[float]) -> float:
    return flops / statistics.median(seconds) / 1e9
