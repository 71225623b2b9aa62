"""nnU-Net's intensity normalisation, driven by the plan's per-channel schemes.

CT: clip to the dataset's foreground [p0.5, p99.5], then z-score with the dataset's foreground mean and std
(global statistics from the fingerprint, not per image: MONAI's percentile clipping is per image).
Anything else: per-image, per-channel z-score; with `use_nonzero_mask` the statistics come from, and the
result is written to, the nonzero region only (nnU-Net uses it when cropping removed > 25% of the volume).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform


def normalize_channel(x: torch.Tensor, scheme: Mapping, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Normalise one channel by one plan entry (see the module docstring)."""
    x = x.float()
    if scheme["scheme"] == "CT":
        lo, hi = scheme["clip"]
        return (x.clamp(float(lo), float(hi)) - float(scheme["mean"])) / max(float(scheme["std"]), 1e-8)
    if scheme["scheme"] != "zscore":
        raise ValueError(f"unknown normalisation scheme {scheme['scheme']!r}; expected 'CT' or 'zscore'")
    if scheme.get("use_nonzero_mask") and mask is not None:
        out = torch.zeros_like(x)
        if mask.any():
            vals = x[mask]
            out[mask] = (vals - vals.mean()) / vals.std(unbiased=False).clamp_min(1e-8)
        return out
    return (x - x.mean()) / x.std(unbiased=False).clamp_min(1e-8)


class NormalizeIntensityByPland(MapTransform):
    """Apply each channel's normalisation scheme from `plans.json` (`normalization` list)."""

    def __init__(self, keys: KeysCollection, schemes: Sequence[Mapping], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.schemes = sorted(schemes, key=lambda s: int(s["channel"]))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] != len(self.schemes):
                raise ValueError(f"{key} has {img.shape[0]} channels but the plan normalises {len(self.schemes)}")
            mask = (img != 0).any(dim=0)
            out = torch.stack([normalize_channel(img[c], s, mask) for c, s in enumerate(self.schemes)])
            d[key] = MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations) if isinstance(img, MetaTensor) else out
        return d
