"""Export a trained bundle's network to TorchScript with MONAI's `ckpt_export`, and check it against eager.

    python -m scripts.export --bundle_root W

Writes `W/models/model.ts` (metadata.json and the inference config embedded under `model/extra/`) and prints
the largest absolute difference between the TorchScript and eager outputs on a random input of patch size.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire
import torch
from monai.bundle import ConfigParser, ckpt_export

from custom_components.data.errors import DatasetError
from custom_components.io_utils import load_matching_state, load_weights


def eager_network(bundle_root: str) -> tuple[torch.nn.Module, ConfigParser]:
    """The bundle's network_def with models/model.pt loaded; a missing, foreign or unsafe file is a DatasetError."""
    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root) / "configs" / "inference.yaml"))
    parser["bundle_root"] = bundle_root
    net = parser.get_parsed_content("network_def").eval()
    path = Path(bundle_root) / "models" / "model.pt"
    if not path.is_file():
        raise DatasetError(f"{path}: model weights not found; train the bundle first")
    load_matching_state(net, load_weights(path), path)
    return net, parser


def compare_with_eager(bundle_root: str, ts_path: str, seed: int = 0) -> float:
    """Max |TorchScript - eager| on one random patch, eager weights loaded from models/model.pt."""
    net, parser = eager_network(bundle_root)
    scripted = torch.jit.load(ts_path, map_location="cpu").eval()
    shape = [1, parser.get_parsed_content("num_channels"), *parser.get_parsed_content("patch_size")]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((scripted(x) - net(x)).abs().max())


def main(bundle_root: str, tolerance: float = 1e-4) -> None:
    """Export `bundle_root/models/model.pt` to `model.ts` and verify it; exit 1 if it differs from eager."""
    root = Path(bundle_root)
    ts_path = root / "models" / "model.ts"
    try:
        eager_network(bundle_root)  # refuse bad weights before MONAI's export reads them
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(root / "configs" / "inference.yaml"),
        bundle_root=str(root),
    )
    diff = compare_with_eager(str(root), str(ts_path))
    print(f"TorchScript export: {ts_path}; max |scripted - eager| = {diff:.2e} (tolerance {tolerance:g})")
    if diff > tolerance:
        sys.exit(1)


if __name__ == "__main__":
    fire.Fire(main)
