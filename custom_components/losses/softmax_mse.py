"""Mean squared error between class probabilities and the one-hot label: the Residual U-Net paper's loss."""

from __future__ import annotations

import torch
from monai.networks.utils import one_hot


class SoftmaxMSELoss(torch.nn.Module):
    """MSE of softmax(logits) against the one-hot label (B, 1, ...) -> scalar.

    Zhang et al. (2018) train their Residual U-Net on MSE; with several classes the natural reading is MSE on the
    softmax probabilities, which keeps the loss bounded in [0, 2 / C] per voxel."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] != 1 or target.shape[2:] != pred.shape[2:]:
            raise ValueError(f"expected a (B, 1, ...) label matching the prediction's size, got label "
                             f"{tuple(target.shape)} for prediction {tuple(pred.shape)}")
        probabilities = torch.softmax(pred.float(), dim=1)
        return torch.nn.functional.mse_loss(probabilities, one_hot(target.long(), num_classes=pred.shape[1]).float())
