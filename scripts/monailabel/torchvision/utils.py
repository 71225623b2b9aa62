"""`make_grid` and `save_image`, the two names MONAI Label imports from torchvision.utils; minimal versions."""

from __future__ import annotations

import torch


def make_grid(tensor, nrow: int = 8, padding: int = 2, normalize: bool = False, **kwargs) -> torch.Tensor:
    """Tile a (B, C, H, W) batch into one (C, H', W') image, `nrow` images per row."""
    t = torch.as_tensor(tensor).float()
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if normalize:
        t = (t - t.min()) / (t.max() - t.min()).clamp_min(1e-8)
    b, c, h, w = t.shape
    cols = min(nrow, b)
    rows = (b + cols - 1) // cols
    grid = t.new_zeros(c, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for i in range(b):
        r, k = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, y:y + h, x:x + w] = t[i]
    return grid


def save_image(tensor, fp, **kwargs) -> None:
    """Save `make_grid(tensor)` as an 8-bit PNG (Pillow)."""
    from PIL import Image

    grid = make_grid(tensor, **{k: v for k, v in kwargs.items() if k in ("nrow", "padding", "normalize")})
    array = (grid.clamp(0, 1) * 255).byte().permute(1, 2, 0).squeeze(-1).cpu().numpy()
    Image.fromarray(array).save(fp)
