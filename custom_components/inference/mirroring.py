"""Sliding-window inference as nnU-Net runs it: overlap 0.5, Gaussian weights (sigma = patch/8), and
optional test-time mirroring over every combination of the chosen axes, averaged."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer

from custom_components.precision import autocast, check_precision, resolve_precision

def as_flag(value) -> bool:
    """A setting that may come from the command line as a string ('false', '0', 'off')."""
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off", "none", "")
    return bool(value)


def mirror_axes(image_dims: int, enabled=True, slice_axis: int | None = None) -> list[int]:
    """The volume axes to mirror at test time (a 2D model's slice axis excluded); `enabled` may come from the
    command line as a string ('false', '0')."""
    return [a for a in range(int(image_dims)) if slice_axis is None or a != int(slice_axis)] if as_flag(enabled) else []


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty subset of the mirror axes (7 for three axes; with the identity, 8 passes)."""
    return [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]


class _TileMirrors:
    """A network called on each window tile and its mirrored copies (nnU-Net mirrors per tile), `per_pass` copies
    in one batch; the copies are flipped back and averaged, so the sliding window sees one averaged tile."""

    def __init__(self, network, axes: Sequence[int], channels_last: bool, per_pass: int) -> None:
        self.network = network
        self.flips = [[]] + [[a + 2 for a in combo] for combo in mirror_combinations(axes)]
        self.channels_last = channels_last
        self.per_pass = max(int(per_pass), 1)

    def __call__(self, tiles: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        n, total = tiles.shape[0], None
        for start in range(0, len(self.flips), self.per_pass):
            flips = self.flips[start:start + self.per_pass]
            batch = torch.cat([torch.flip(tiles, f) if f else tiles for f in flips])
            if self.channels_last and batch.dim() == 5:
                batch = batch.contiguous(memory_format=torch.channels_last_3d)
            out = self.network(batch, *args, **kwargs).float()
            for k, f in enumerate(flips):
                part = out[k * n:(k + 1) * n]
                part = torch.flip(part, f) if f else part
                total = part if total is None else total + part
        return total / len(self.flips)


class MirroredSlidingWindowInferer(Inferer):
    """A MONAI `SlidingWindowInferer` whose logits are averaged over mirrored copies of the input.

    `mirror_axes` are spatial axes (0 = first spatial axis); an empty list disables test-time mirroring.
    With `slice_axis` set, `roi_size` is 2D and a 2D network runs slice by slice over the volume.

    The reference path flips the whole volume and runs one sliding window per mirrored copy, in float32. Three
    settings trade that for speed: `tile_mirroring` mirrors each tile instead (nnU-Net's way) and runs a tile's
    copies `mirror_batch` at a time in one batch (3D networks; a 2D network keeps volume mirroring; 8 copies in
    one batch take 8 times the activation memory of one); `precision="bfloat16"` runs the network under autocast (logits come back float32; "auto" does so only where
    the device computes bfloat16 natively);
    `channels_last` hands 3D networks channels-last tiles.
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
        tile_mirroring: bool = False,
        precision: str = "float32",
        channels_last: bool = False,
        mirror_batch: int = 8,
    ) -> None:
        super().__init__()
        check_precision(precision)
        window_args = dict(
            roi_size=list(roi_size), sw_batch_size=sw_batch_size, overlap=overlap, mode=mode,
            sigma_scale=sigma_scale, padding_mode="constant", cval=0.0, sw_device=sw_device, device=device,
            progress=progress,
        )
        # a 2D network on 3D volumes: MONAI's SliceInferer runs the 2D window slice by slice along `slice_axis`
        self.window = SlidingWindowInferer(**window_args) if slice_axis is None else SliceInferer(spatial_dim=int(slice_axis), **window_args)
        self.mirror_axes = [int(a) for a in mirror_axes]
        self.tile_mirroring = as_flag(tile_mirroring) and slice_axis is None  # a 2D network's tiles are slices
        self.precision = precision
        self.channels_last = as_flag(channels_last)
        self.mirror_batch = int(mirror_batch)

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

    def _precision(self, inputs: torch.Tensor) -> str:
        return resolve_precision(self.precision, inputs.device)

    def _autocast(self, inputs: torch.Tensor):
        return autocast(self.precision, inputs.device)

    def _mirrored(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        predictor = network
        if self.tile_mirroring or self._precision(inputs) != "float32" or self.channels_last:
            predictor = _TileMirrors(network, self.mirror_axes if self.tile_mirroring else [], self.channels_last,
                                     self.mirror_batch)
        with self._autocast(inputs):
            logits = self.window(inputs, predictor, *args, **kwargs)
        return logits if self.tile_mirroring else self._volume_mirrors(logits, inputs, predictor, *args, **kwargs)

    def _volume_mirrors(self, logits: torch.Tensor, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        """The reference: one sliding window per mirrored copy of the whole volume, averaged with `logits`."""
        combos = mirror_combinations(self.mirror_axes)
        for axes in combos:
            dims = [a + 2 for a in axes]
            with self._autocast(inputs):
                logits = logits + torch.flip(self.window(torch.flip(inputs, dims), network, *args, **kwargs), dims)
        return logits / (len(combos) + 1)
