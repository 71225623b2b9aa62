"""The NIfTI route's two operators. The SDK's own NiftiDataLoader hands on a bare array without its affine, so
spacing- and orientation-aware preprocessing would act on the wrong geometry; these keep it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.deploy.core import Fragment, Image, Operator, OperatorSpec


class NiftiImageLoader(Operator):
    """Reads one NIfTI image exactly as the bundle's LoadImage would (same reader, same metadata, affine
    included) and emits it as an SDK `Image` whose metadata MonaiBundleInferenceOperator passes on unchanged."""

    def __init__(self, fragment: Fragment, *args, input_path: Path, **kwargs) -> None:
        self.input_path = Path(input_path)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("image")

    def compute(self, op_input, op_output, context) -> None:
        from monai.transforms import LoadImage

        image = LoadImage(image_only=True)(str(self.input_path))
        op_output.emit(Image(image.numpy(), metadata=dict(image.meta)), "image")


class NiftiLabelWriter(Operator):
    """Writes the bundle operator's label map (D, H, W uint8, the SDK's layout) back in the input's layout and
    affine as `<case>.nii.gz`, atomically."""

    def __init__(self, fragment: Fragment, *args, output_dir: Path, **kwargs) -> None:
        self.output_dir = Path(output_dir)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("seg_image")
        spec.input("image")

    def compute(self, op_input, op_output, context) -> None:
        from custom_components.inference.writer import case_id_from_path, save_label_map

        seg, image = op_input.receive("seg_image"), op_input.receive("image")
        label = np.swapaxes(seg.asnumpy(), 0, -1)  # D, H, W -> the bundle's W, H, D
        meta = image.metadata()
        source = str(meta.get("filename_or_obj", "case"))
        spatial = tuple(image.asnumpy().shape[:3])  # LoadImage's layout: W, H, D (then channels, if any)
        if label.shape != spatial:
            raise ValueError(f"{source}: the label map's shape {label.shape} is not the image's {spatial}; the "
                             "bundle's postprocessing must invert its preprocessing (Invertd)")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_label_map(label, np.asarray(meta["affine"]), self.output_dir / f"{case_id_from_path(source)}.nii.gz")
