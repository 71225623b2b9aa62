"""A paper's network topology fitted to a plan: the plan decides how many resolution levels there are (and the
per-axis pooling of each), the paper decides the features per level."""

from __future__ import annotations

from collections.abc import Sequence


def level_features(paper_features: Sequence[int], num_levels: int, max_features: int = 512,
                   scale: float = 1.0) -> list[int]:
    """The paper's features for `num_levels` levels: its first levels when the plan has fewer; doubling past its
    last level (capped at `max_features`) when the plan has more, as the papers grow features with depth.

    `scale` multiplies every level's width (Oktay et al.'s `feature_scale` idea, inverted): 0.5 halves the
    widths, and roughly quarters the compute, for small data or a CPU."""
    if num_levels < 2:
        raise ValueError(f"a U-Net needs at least 2 resolution levels, the plan has {num_levels}")
    if not scale > 0:
        raise ValueError(f"feature scale must be > 0, got {scale}")
    features = [int(f) for f in paper_features[:num_levels]]
    while len(features) < num_levels:
        features.append(min(2 * features[-1], max(int(max_features), features[-1])))
    return [max(2, int(round(f * scale))) for f in features]
