"""Sliding-window inference as nnU-Net runs it: overlap 0.5, Gaussian weights (sigma = patch/8), and
optional test-time mirroring over every combination of the chosen axes, averaged."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from monai.inferers import Inferer, SlidingWindowInferer


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty subset of the mirror axes (7 for three axes; with the identity, 8 passes)."""
    return [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]


class MirroredSlidingWindowInferer(Inferer):
    """A MONAI `SlidingWindowInferer` whose logits are averaged over mirrored copies of the input.

    `mirror_axes` are spatial axes (0 = first spatial axis); an empty list disables test-time mirroring.
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        sw_batch_size: int = 1,
        overlap: float = 0.5,
        mode: str = "gaussian",
        sigma_scale: float = 0.125,
        mirror_axes: Sequence[int] = (),
        sw_device: str | torch.device | None = None,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.window = SlidingWindowInferer(
            roi_size=list(roi_size), sw_batch_size=sw_batch_size, overlap=overlap, mode=mode,
            sigma_scale=sigma_scale, padding_mode="constant", cval=0.0, sw_device=sw_device, device=device,
            progress=progress,
        )
        self.mirror_axes = [int(a) for a in mirror_axes]

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        logits = self.window(inputs, network, *args, **kwargs)
        combos = mirror_combinations(self.mirror_axes)
        for axes in combos:
            dims = [a + 2 for a in axes]
            logits = logits + torch.flip(self.window(torch.flip(inputs, dims), network, *args, **kwargs), dims)
        return logits / (len(combos) + 1)
