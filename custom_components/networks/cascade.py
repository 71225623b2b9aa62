"""nnU-Net's 3D cascade as one module and its sliding-window inferer (`shared/reference/unet-family.md`, "Cascade").

Stage 1 (the 3d_lowres U-Net) segments the image resampled to the low-res spacing; its prediction, brought
back to full resolution and one-hot encoded without the background, joins the image as extra input channels of
stage 2 (the 3d_cascade_fullres U-Net), whose logits are the cascade's output. One module holds both stages
because a bundle has one `network_def` and one state_dict (`shared/reference/integration.md`).

Differences from nnU-Net, by design: the low-res image comes from linear (not third-order spline)
interpolation, and the stage-1 softmax is upsampled linearly and then argmax-ed (nnU-Net argmaxes at low res
and resamples the label map).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from torch import nn

from custom_components.data.errors import DatasetError
from custom_components.io_utils import load_matching_state, load_weights
from custom_components.inference.ensemble import FoldEnsemble
from custom_components.inference.mirroring import MirroredSlidingWindowInferer


def spacing_ratio(lowres_spacing: Sequence[float], fullres_spacing: Sequence[float]) -> List[float]:
    """`CascadeNet`'s `lowres_factor` from the two plans' target spacings: low-res / full-res, per axis."""
    if len(lowres_spacing) != len(fullres_spacing):
        raise ValueError(f"spacings {list(lowres_spacing)} and {list(fullres_spacing)} differ in length")
    return [float(lo) / float(full) for lo, full in zip(lowres_spacing, fullres_spacing)]


def lowres_shape(spatial_shape: List[int], lowres_factor: List[float]) -> List[int]:
    """Size of the stage-1 input: full-res size / (lowres spacing / fullres spacing), rounded half up, >= 1."""
    if len(spatial_shape) != len(lowres_factor):
        raise ValueError("lowres_factor needs one entry per spatial axis")
    out: List[int] = []
    for size, factor in zip(spatial_shape, lowres_factor):
        out.append(max(int(float(size) / factor + 0.5), 1))
    return out


def resize_linear(x: torch.Tensor, size: List[int]) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C, *size) by bilinear (2D) or trilinear (3D) interpolation, align_corners=False."""
    mode = "trilinear" if x.dim() == 5 else "bilinear"
    if x.dim() != 4 and x.dim() != 5:
        raise ValueError("expected a (B, C, X, Y) or (B, C, X, Y, Z) tensor")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def foreground_onehot_of_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """(B, K, *spatial) class probabilities -> (B, K - 1, *spatial) one-hot of the argmax, background dropped."""
    num_classes = probabilities.shape[1]
    labels = torch.argmax(probabilities, dim=1)
    onehot = torch.movedim(F.one_hot(labels, num_classes), -1, 1)
    return onehot[:, 1:].to(probabilities.dtype)


def pad_to_multiple(x: torch.Tensor, divisor: List[int]) -> Tuple[torch.Tensor, List[int]]:
    """Zero-pad each spatial axis of (B, C, *spatial) up to a multiple of `divisor`, split as MONAI's sliding
    window splits its padding (half before, the rest after); also returns the offsets of the original voxels."""
    spatial = x.shape[2:]
    before: List[int] = []
    pad: List[int] = []  # F.pad order: last axis first
    for axis in range(len(spatial)):
        size = spatial[axis]
        diff = (divisor[axis] - size % divisor[axis]) % divisor[axis]
        before.append(diff // 2)
        pad = [diff // 2, diff - diff // 2] + pad
    if sum(pad) == 0:
        return x, before
    return F.pad(x, pad, mode="constant", value=0.0), before


def crop(x: torch.Tensor, start: List[int], size: List[int]) -> torch.Tensor:
    """The spatial window `start` .. `start + size` of (B, C, *spatial)."""
    for axis in range(len(size)):
        x = x.narrow(axis + 2, start[axis], size[axis])
    return x


def stride_product(network: nn.Module, spatial_dims: int) -> List[int]:
    """Per-axis product of a network's `strides` (MONAI DynUNet): the factor its input size must divide by."""
    strides = getattr(network, "strides", None)
    total = [1] * spatial_dims
    for stride in strides or []:
        per_axis = [int(stride)] * spatial_dims if isinstance(stride, int) else [int(s) for s in stride]
        total = [t * s for t, s in zip(total, per_axis)]
    return total


class CascadeNet(nn.Module):
    """nnU-Net's two-stage cascade: low-res U-Net, then full-res U-Net fed the image plus stage 1's one-hot
    foreground. `forward` runs the whole image through each stage at once (for bundle checks and patch-sized
    inputs); `CascadeInferer` runs each stage as a sliding window.

    Input sizes: the low-res image is `lowres_shape(size, lowres_factor)` (exact spacing ratio, rounded), then
    zero-padded up to a multiple of stage 1's stride product and cropped back after it; the full-res input is
    padded for stage 2 likewise (no padding when sizes already divide, e.g. patch-sized inputs). TorchScript-
    scriptable when both stages are (DynUNet with deep supervision off).
    """

    def __init__(
        self,
        stage1: nn.Module,
        stage2: nn.Module,
        num_classes: int,
        lowres_factor: Sequence[float],
        stage1_divisor: Optional[Sequence[int]] = None,
        stage2_divisor: Optional[Sequence[int]] = None,
    ) -> None:
        """
        Args:
            stage1: low-res network, image channels C in, `num_classes` logits out.
            stage2: full-res network, C + num_classes - 1 channels in, `num_classes` logits out.
            num_classes: classes including the background.
            lowres_factor: per spatial axis, low-res spacing / full-res spacing (>= 1 downsamples).
            stage1_divisor: what stage 1's input size must divide by; default the product of `stage1.strides`.
            stage2_divisor: the same for stage 2.
        """
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must count the background and at least one foreground class, got {num_classes}")
        if len(lowres_factor) not in (2, 3) or min(float(f) for f in lowres_factor) <= 0:
            raise ValueError(f"lowres_factor needs 2 or 3 positive entries, got {lowres_factor}")
        self.stage1 = stage1
        self.stage2 = stage2
        self.num_classes = int(num_classes)
        self.spatial_dims = len(lowres_factor)
        self.lowres_factor: List[float] = [float(f) for f in lowres_factor]
        self.stage1_divisor: List[int] = [int(d) for d in stage1_divisor] if stage1_divisor is not None else stride_product(stage1, self.spatial_dims)
        self.stage2_divisor: List[int] = [int(d) for d in stage2_divisor] if stage2_divisor is not None else stride_product(stage2, self.spatial_dims)

    @torch.jit.export
    def lowres_input(self, x: torch.Tensor) -> torch.Tensor:
        """The full-res image (B, C, *spatial) resampled to the low-res spacing."""
        return resize_linear(x, lowres_shape(list(x.shape[2:]), self.lowres_factor))

    @torch.jit.export
    def stage1_logits(self, lowres_x: torch.Tensor) -> torch.Tensor:
        """Stage-1 logits of a low-res image or patch of any size (padded to the stage's divisor and cropped back)."""
        padded, start = pad_to_multiple(lowres_x, self.stage1_divisor)
        return crop(self.stage1(padded), start, list(lowres_x.shape[2:]))

    @torch.jit.export
    def stage1_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Stage-1 softmax probabilities of a full-res image, upsampled back to its size: (B, num_classes, *spatial)."""
        lowres_logits = self.stage1_logits(self.lowres_input(x))
        return resize_linear(torch.softmax(lowres_logits, dim=1), list(x.shape[2:]))

    @torch.jit.export
    def stage2_logits(self, x: torch.Tensor, prev_onehot: torch.Tensor) -> torch.Tensor:
        """Stage-2 logits of a full-res image (or patch) and the matching one-hot foreground of stage 1."""
        stacked = torch.cat([x, prev_onehot.to(x.dtype)], dim=1)
        padded, start = pad_to_multiple(stacked, self.stage2_divisor)
        return crop(self.stage2(padded), start, list(x.shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full-res image (B, C, *spatial) -> stage-2 logits (B, num_classes, *spatial)."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError("input must be (B, C, *spatial) with one spatial axis per lowres_factor entry")
        prev_onehot = foreground_onehot_of_probabilities(self.stage1_probabilities(x))
        return self.stage2_logits(x, prev_onehot)


class _LowresStage(nn.Module):
    """Stage 1 of a cascade as a plain network, for the sliding window."""

    def __init__(self, cascade: nn.Module) -> None:
        super().__init__()
        self.cascade = cascade

    def forward(self, lowres_x: torch.Tensor) -> torch.Tensor:
        return self.cascade.stage1_logits(lowres_x)


class _StackedStage2(nn.Module):
    """Stage 2 of a cascade on patches of image and previous-stage channels stacked, for the sliding window."""

    def __init__(self, cascade: nn.Module, image_channels: int) -> None:
        super().__init__()
        self.cascade = cascade
        self.image_channels = int(image_channels)

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        c = self.image_channels
        return self.cascade.stage2_logits(patch[:, :c], patch[:, c:])


class CascadeInferer(Inferer):
    """Cascade inference as nnU-Net runs it: stage 1 as a (mirrored, Gaussian-weighted) sliding window over the
    whole low-res image, its softmax upsampled to the input size, argmax, one-hot foreground, concatenated to
    the image; then stage 2 as a sliding window over the full-res image. Returns stage 2's logits.

    Arguments as `MirroredSlidingWindowInferer` (`roi_size` is stage 2's patch), plus stage 1's patch
    `lowres_roi_size` and `lowres_factor` (default: the network's). With a `FoldEnsemble` of cascades, each
    stage averages its members' softmax, so every stage-2 member sees the ensembled stage-1 prediction. When
    each stage's image is exactly one window (input size == `roi_size`, low-res size == `lowres_roi_size`)
    and mirroring is off, the result equals `network(inputs)`; a smaller image is padded to the window here,
    to the stride product there.
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        lowres_roi_size: Sequence[int],
        lowres_factor: Sequence[float] | None = None,
        sw_batch_size: int = 1,
        overlap: float = 0.5,
        mode: str = "gaussian",
        sigma_scale: float = 0.125,
        mirror_axes: Sequence[int] = (),
        sw_device: str | torch.device | None = None,
        device: str | torch.device | None = None,
        progress: bool = False,
        tile_mirroring: bool = False,
        precision: str = "float32",
        channels_last: bool = False,
        mirror_batch: int = 8,
    ) -> None:
        super().__init__()
        window = dict(sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, sigma_scale=sigma_scale,
                      mirror_axes=mirror_axes, sw_device=sw_device, device=device, progress=progress,
                      tile_mirroring=tile_mirroring, precision=precision, channels_last=channels_last,
                      mirror_batch=mirror_batch)
        self.stage1_window = MirroredSlidingWindowInferer(roi_size=lowres_roi_size, **window)
        self.stage2_window = MirroredSlidingWindowInferer(roi_size=roi_size, **window)
        self.lowres_factor = None if lowres_factor is None else [float(f) for f in lowres_factor]

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        """Stage-2 logits (B, num_classes, *spatial) of `inputs` (B, C, *spatial) through a `CascadeNet` (eager or
        scripted) or a `FoldEnsemble` of them."""
        members = list(getattr(network, "members", None) or [network])
        factor = self.lowres_factor if self.lowres_factor is not None else list(members[0].lowres_factor)
        image = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        spatial = list(image.shape[2:])

        stage1 = _one_or_ensemble([_LowresStage(m) for m in members])
        lowres_logits = self.stage1_window(resize_linear(image, lowres_shape(spatial, factor)), stage1, *args, **kwargs)
        probabilities = resize_linear(torch.softmax(lowres_logits, dim=1), spatial)
        prev_onehot = foreground_onehot_of_probabilities(probabilities).to(device=image.device, dtype=image.dtype)

        stage2 = _one_or_ensemble([_StackedStage2(m, image.shape[1]) for m in members])
        # concatenated to the MetaTensor input (when it is one), so the logits keep its metadata for Invertd
        return self.stage2_window(torch.cat([inputs, prev_onehot], dim=1), stage2, *args, **kwargs)


def _one_or_ensemble(stages: List[nn.Module]) -> nn.Module:
    # MirroredSlidingWindowInferer returns the log of the members' mean softmax for a FoldEnsemble
    return stages[0] if len(stages) == 1 else FoldEnsemble(stages)


def with_stage1_weights(cascade: CascadeNet, stage1_model: str | os.PathLike) -> CascadeNet:
    """Stage 2's training network: the cascade with stage 1 loaded from its trained `model.pt` and frozen, so
    that the training checkpoint and the final `model.pt` hold both stages (one file deploys the cascade)."""
    if not os.path.isfile(stage1_model):
        raise DatasetError(f"{stage1_model}: stage-1 model not found; train stage 1 of this fold first "
                           "(scripts.cross_validate trains both stages in order; for --fold all, run train_stage1.yaml "
                           "with --fold all --ckpt_dir <bundle>/models/stage1/fold_all)")
    load_matching_state(cascade.stage1, load_weights(stage1_model), stage1_model)
    cascade.stage1.requires_grad_(False)
    cascade.stage1.eval()
    return cascade
