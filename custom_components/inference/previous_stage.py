"""Stage-1 predictions made on demand for the cascade's stage-2 training.

Cross-validation gives stage 2 each case's out-of-fold stage-1 prediction. MONAI Label's training replaces the
dataset with the studies it has labels for, images and labels only: for those, stage 1 (the bundle's own
`inference_stage1.yaml`: its folds, preprocessing and inversion) predicts the case once, the label map is kept
in `cache_dir` (under a folder named from stage 1's weights), and the case goes on as if cross-validation had written it. A newly labelled study was not in
stage 1's training set, so its prediction is as unseen as an out-of-fold one.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Hashable, Mapping
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from custom_components.data.errors import DatasetError
from custom_components.inference.writer import case_id_from_path, save_label_map


class PredictPreviousStaged(MapTransform):
    """For a case without `keys` (the stage-1 prediction's path), predict it from `image_key`'s file with the
    stage-1 inference config and set `keys` to the saved label map; cases that have it pass unchanged."""

    def __init__(self, keys: KeysCollection = "prev_seg", bundle_root: str | os.PathLike = ".",
                 config_file: str = "configs/inference_stage1.yaml", cache_dir: str | os.PathLike | None = None,
                 image_key: str = "image", overrides: Mapping[str, object] | None = None) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.bundle_root = Path(bundle_root)
        self.config_file = self.bundle_root / config_file
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.bundle_root / "stage1" / "predicted"
        self.image_key = image_key
        self.overrides = dict(overrides or {})  # e.g. the training's use_mirroring
        self._pipeline = None
        self._lock = threading.Lock()  # CacheDataset fills its cache from several threads

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.keys:
            if d.get(key) is None:
                d[key] = str(self.predict(d[self.image_key]))
        return d

    def predict(self, image) -> Path:
        """The stage-1 label map of `image` (a file or series folder), in its geometry; made once per case."""
        if not isinstance(image, (str, os.PathLike)):
            raise DatasetError(f"stage 1 predicts a case from its image file, got {type(image).__name__}")
        out = self.cache_dir / self._version() / f"{case_id_from_path(str(image))}.nii.gz"
        if out.is_file():
            return out
        with self._lock:
            preprocessing, network, inferer, postprocessing, device = self._stage1()
        item = preprocessing({"image": str(image)})
        with torch.no_grad():
            item["pred"] = inferer(item["image"][None].to(device), network)[0].cpu()
        item = postprocessing(item)
        save_label_map(item["pred"], item["pred"].affine, out)
        return out

    def _version(self) -> str:
        """A folder name that changes with stage 1's weights and the overrides, so a retrained stage 1 never
        reuses predictions of the one before."""
        models = sorted((self.bundle_root / "models" / "stage1").rglob("model.pt"))
        stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in models]
        text = json.dumps([stamp, sorted((k, str(v)) for k, v in self.overrides.items())])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def _stage1(self):
        """Stage 1's preprocessing, fold ensemble, inferer and postprocessing, parsed on first use."""
        if self._pipeline is None:
            from custom_components.bundle_config import bundle_parser

            if not self.config_file.is_file():
                raise DatasetError(f"{self.config_file}: missing; it predicts stage 1 for cases that come without one")
            parser = bundle_parser(self.bundle_root, str(self.config_file.resolve()), self.overrides)
            preprocessing, network, inferer, postprocessing, device = (
                parser.get_parsed_content(k) for k in ("preprocessing", "inference_network", "inferer", "postprocessing", "device"))
            self._pipeline = (preprocessing, network.eval(), inferer, postprocessing, device)
        return self._pipeline
