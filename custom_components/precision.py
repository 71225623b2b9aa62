"""The compute precision of a network pass: float32, bfloat16, or "auto" (bfloat16 where the device computes it
natively). Shared by inference (`MirroredSlidingWindowInferer`) and training (`AutocastInferer`)."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "auto": None}


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively (a GPU of compute capability 8 or more; a CPU with AVX-512
    BF16 or AMX): elsewhere bfloat16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" made concrete for `device`."""
    if check_precision(precision) != "auto":
        return precision
    return "bfloat16" if native_bfloat16(device) else "float32"


def autocast(precision: str, device: torch.device):
    """torch.autocast to the precision on `device`, or nothing for float32."""
    dtype = PRECISIONS[resolve_precision(precision, device)]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
