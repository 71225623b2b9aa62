"""Sliding-window inference as nnU-Net runs it: overlap 0.5, Gaussian weights (sigma = patch/8), and
optional test-time mirroring over every combination of the chosen axes, averaged."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer


def mirror_axes(image_dims: int, enabled=True, slice_axis: int | None = None) -> list[int]:
    """The volume axes to mirror at test time (a 2D model's slice axis excluded); `enabled` may come from the
    command line as a string ('false', '0')."""
    if isinstance(enabled, str):
        enabled = enabled.strip().lower() not in ("false", "0", "no", "off", "none", "")
    return [a for a in range(int(image_dims)) if slice_axis is None or a != int(slice_axis)] if enabled else []


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty subset of the mirror axes (7 for three axes; with the identity, 8 passes)."""
    return [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]


class MirroredSlidingWindowInferer(Inferer):
    """A MONAI `SlidingWindowInferer` whose logits are averaged over mirrored copies of the input.

    `mirror_axes` are spatial axes (0 = first spatial axis); an empty list disables test-time mirroring.
    With `slice_axis` set, `roi_size` is 2D and a 2D network runs slice by slice over the volume.
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
        slice_axis: int | None = None,
    ) -> None:
        super().__init__()
        window_args = dict(
            roi_size=list(roi_size), sw_batch_size=sw_batch_size, overlap=overlap, mode=mode,
            sigma_scale=sigma_scale, padding_mode="constant", cval=0.0, sw_device=sw_device, device=device,
            progress=progress,
        )
        # a 2D network on 3D volumes: MONAI's SliceInferer runs the 2D window slice by slice along `slice_axis`
        self.window = SlidingWindowInferer(**window_args) if slice_axis is None else SliceInferer(spatial_dim=int(slice_axis), **window_args)
        self.mirror_axes = [int(a) for a in mirror_axes]

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        """Logits of one network; for a `FoldEnsemble`, one pass per member and the log of their mean softmax."""
        members = getattr(network, "members", None)
        if members is None:
            return self._mirrored(inputs, network, *args, **kwargs)
        probs = None
        for member in members:
            p = torch.softmax(self._mirrored(inputs, member, *args, **kwargs), dim=1)
            probs = p if probs is None else probs + p
        return torch.log((probs / len(members)).clamp_min(1e-12))

    def _mirrored(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        logits = self.window(inputs, network, *args, **kwargs)
        combos = mirror_combinations(self.mirror_axes)
        for axes in combos:
            dims = [a + 2 for a in axes]
            logits = logits + torch.flip(self.window(torch.flip(inputs, dims), network, *args, **kwargs), dims)
        return logits / (len(combos) + 1)
