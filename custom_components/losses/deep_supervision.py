"""nnU-Net's loss: soft Dice (foreground classes, smooth 1e-5) + cross-entropy, 1:1, over deep-supervision heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss


class DeepSupervisionDiceCELoss(torch.nn.Module):
    """Dice + CE summed over deep-supervision outputs with nnU-Net's weights (1/2**i, normalised by the plan).

    Accepts either one prediction (B, C, ...) or MONAI DynUNet's training output, the heads stacked on dim 1
    (B, H, C, ...) and already upsampled to the label's size.
    """

    def __init__(self, weights: Sequence[float] = (1.0,), batch_dice: bool = True, smooth: float = 1e-5,
                 include_background: bool = False) -> None:
        super().__init__()
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background,
                                  smooth_nr=smooth, smooth_dr=smooth, batch=batch_dice)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.dim() == target.dim():
            return self.dice_ce(pred, target)
        heads = torch.unbind(pred, dim=1)
        loss = pred.new_zeros(())
        for w, head in zip(self.weights, heads):
            if w > 0:
                loss = loss + w * self.dice_ce(head, target)
        return loss
