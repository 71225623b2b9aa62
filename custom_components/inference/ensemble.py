"""Fold ensembles: the 5 cross-validation models of a bundle, run one after the other and averaged.

nnU-Net averages the softmax probabilities of the fold models, each from its own sliding-window pass.
`FoldEnsemble` holds the members; `MirroredSlidingWindowInferer` runs one pass per member and returns the log
of the mean probabilities, so that the bundle's usual softmax post-processing yields exactly that mean.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from custom_components.data.errors import DatasetError
from custom_components.io_utils import load_matching_state, load_weights


class FoldEnsemble(torch.nn.Module):
    """Several trained copies of one network; `forward` averages their softmax (for direct use outside an inferer)."""

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(0)
        return torch.log(probs.clamp_min(1e-12))


def fold_dirs(ckpt_dir: str | os.PathLike) -> list[int]:
    """Folds with a trained model: `ckpt_dir/fold_K/model.pt`."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"fold_(\d+)", p.name)) and (p / "model.pt").is_file()]
    return sorted(found)


def parse_folds(folds) -> list[int] | None:
    """`--folds 0,1,2` (string, int or list) -> [0, 1, 2]; None or 'auto' -> None."""
    if folds is None or (isinstance(folds, str) and folds.strip().lower() in ("", "auto")):
        return None
    if isinstance(folds, int):
        return [folds]
    if isinstance(folds, str):
        return [int(f) for f in folds.replace(" ", "").split(",") if f]
    return [int(f) for f in folds]


def _load(network_def: torch.nn.Module, path: Path, device) -> torch.nn.Module:
    if not path.is_file():
        raise DatasetError(f"{path}: model weights not found; train the bundle first (or choose --folds)")
    net = copy.deepcopy(network_def)
    load_matching_state(net, load_weights(path), path)
    return net.to(device).eval()


def load_inference_network(network_def: torch.nn.Module, ckpt_dir: str, folds=None, device="cpu") -> torch.nn.Module:
    """The network inference runs: the fold ensemble when fold models exist (or `folds` names them), else `model.pt`."""
    chosen = parse_folds(folds)
    if chosen is None:
        chosen = fold_dirs(ckpt_dir)
    if not chosen:
        return _load(network_def, Path(ckpt_dir) / "model.pt", device)
    members = [_load(network_def, Path(ckpt_dir) / f"fold_{k}" / "model.pt", device) for k in chosen]
    return members[0] if len(members) == 1 else FoldEnsemble(members).to(device).eval()
