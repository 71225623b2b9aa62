"""A planned bundle's config read the way `monai.bundle run` reads it: its root set, command-line style overrides
applied. Scripts and components that parse a bundle themselves share this."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def bundle_parser(bundle_root: str | os.PathLike, config: str = "inference.yaml", overrides: Mapping | None = None):
    """A ConfigParser of `bundle_root/configs/<config>` (an absolute `config` is read as it is) with `bundle_root`
    and `overrides` set."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root) / "configs" / config))
    parser.update({"bundle_root": str(bundle_root), **dict(overrides or {})})
    return parser
