"""A MONAI Deploy (App SDK 4.x) application that runs a packaged bundle's TorchScript file.

    python -m scripts.deploy_app -m PKG/models/model.ts -i INPUT -o OUTPUT_DIR

`PKG` is a bundle written by `scripts.package`: its `custom_components` copy is put on `sys.path`, so the
transforms and inferer named in the inference config embedded in `model.ts` run inside MONAI Deploy's
`MonaiBundleInferenceOperator`. The route follows the input:
- a NIfTI file (or a folder holding exactly one): the label map as `OUTPUT_DIR/<case>.nii.gz`, in the input's
  geometry;
- a folder of DICOM files: a DICOM SEG of the series (one segment per class, named from `metadata.json`) in
  `OUTPUT_DIR`. The folder must hold one whole, evenly spaced series (checked as the bundle's own DICOM reader
  does), unless `SERIES_SELECTION_RULES` holds the SDK's series selection rules (JSON), which then choose.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Image
from monai.deploy.core.io_type import IOType
from monai.deploy.operators.monai_bundle_inference_operator import IOMapping, MonaiBundleInferenceOperator

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ALGORITHM = "monai-unet-family"


class DeployInputError(ValueError):
    """The app's input, output or model paths are not what it needs."""


def packaged_bundle_root(model_path: Path) -> Path:
    """The bundle folder of `PKG/models/model.ts`; it must carry its `custom_components` (scripts.package)."""
    if model_path.suffix != ".ts" or not model_path.is_file():
        raise DeployInputError(f"{model_path}: the model must be a packaged bundle's models/model.ts "
                               "(python -m scripts.package writes one)")
    root = model_path.resolve().parent.parent
    if not (root / "custom_components").is_dir() or not (root / "configs" / "metadata.json").is_file():
        raise DeployInputError(f"{model_path}: not inside a packaged bundle ({root} has no custom_components/ or "
                               "configs/metadata.json); package the trained bundle with python -m scripts.package")
    return root


def nifti_input(path: Path) -> Path | None:
    """The NIfTI image the input names (a file, or a folder holding exactly one), or None for a DICOM folder."""
    if path.is_file():
        if not path.name.endswith(NIFTI_SUFFIXES):
            raise DeployInputError(f"{path}: a file input must be NIfTI (.nii or .nii.gz); give DICOM as a folder")
        return path
    if not path.is_dir():
        raise DeployInputError(f"{path}: the input does not exist")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if len(images) > 1:
        raise DeployInputError(f"{path}: holds {len(images)} NIfTI images; the app segments one image per run, and "
                               "multichannel input must be one 4D file")
    return images[0] if images else None


def check_single_series(folder: Path) -> None:
    """Without selection rules the SDK would take whichever series it scans first: refuse a folder holding several
    (each named) and a series that is incomplete or unevenly spaced, as the bundle's own DICOM reader does."""
    from custom_components.data.dicom import select_series
    from custom_components.data.errors import DatasetError

    try:
        select_series(folder)
    except DatasetError as e:
        raise DeployInputError(f"{e} (or set SERIES_SELECTION_RULES to the SDK's series selection rules)") from e


def segment_descriptions(bundle_root: Path):
    """One SDK segment description per foreground class of metadata.json, in label order (segment k = label k)."""
    from monai.deploy.operators.dicom_seg_writer_operator import SegmentDescription
    from pydicom.sr.codedict import codes

    from custom_components.inference.dicom_seg import class_names_from_metadata

    names = class_names_from_metadata(bundle_root)
    if sorted(names) != list(range(1, len(names) + 1)):
        raise DeployInputError(f"{bundle_root}/configs/metadata.json: DICOM SEG numbers segments 1..N; the classes "
                               f"are {names}")
    return [SegmentDescription(segment_label=names[k], segmented_property_category=codes.SCT.Tissue,
                               segmented_property_type=codes.SCT.Tissue, algorithm_name=ALGORITHM, algorithm_version="1")
            for k in sorted(names)]


class BundleInferenceOperator(MonaiBundleInferenceOperator):
    """Hands the bundle's inferer the TorchScript module itself, not the SDK's Model wrapper (which only forwards
    calls): the cascade's inferer also calls the scripted network's stage-1 method."""

    def predict(self, data, *args, **kwargs):
        network = getattr(self._model_network, "predictor", self._model_network)
        return self._inferer(inputs=data, network=network, *args, **kwargs)


class UNetFamilyApp(Application):
    """Loader -> MonaiBundleInferenceOperator (the bundle's own preprocessing, inferer and postprocessing, read
    from model.ts) -> NIfTI or DICOM SEG writer."""

    def compose(self) -> None:
        context: AppContext = Application.init_app_context(self.argv)
        model = Path(context.model_path)
        bundle_root = packaged_bundle_root(model)
        if str(bundle_root) not in sys.path:
            sys.path.insert(0, str(bundle_root))  # the bundle's transforms and inferer, as MONAI Label does
        source, output_dir = Path(context.input_path), Path(context.output_path)
        bundle = BundleInferenceOperator(
            self, input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)], app_context=context, bundle_path=model,
            name="bundle_inference")
        image = nifti_input(source)
        if image is None and not os.environ.get("SERIES_SELECTION_RULES"):
            check_single_series(source)
        if image is not None:
            self._nifti_route(image, output_dir, bundle)
        else:
            self._dicom_route(source, output_dir, bundle, bundle_root)

    def _nifti_route(self, image: Path, output_dir: Path, bundle: BundleInferenceOperator) -> None:
        from scripts.deploy_app.operators import NiftiImageLoader, NiftiLabelWriter

        loader = NiftiImageLoader(self, CountCondition(self, 1), input_path=image, name="nifti_loader")
        writer = NiftiLabelWriter(self, output_dir=output_dir, name="nifti_writer")
        self.add_flow(loader, bundle, {("image", "image")})
        self.add_flow(loader, writer, {("image", "image")})
        self.add_flow(bundle, writer, {("pred", "seg_image")})

    def _dicom_route(self, folder: Path, output_dir: Path, bundle: BundleInferenceOperator, bundle_root: Path) -> None:
        from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
        from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator
        from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
        from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=folder, name="dicom_loader")
        selector = DICOMSeriesSelectorOperator(self, rules=os.environ.get("SERIES_SELECTION_RULES", ""),
                                               name="series_selector")
        to_volume = DICOMSeriesToVolumeOperator(self, name="series_to_volume")
        writer = DICOMSegmentationWriterOperator(self, segment_descriptions=segment_descriptions(bundle_root),
                                                 output_folder=output_dir, omit_empty_frames=False, name="seg_writer")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, bundle, {("image", "image")})
        self.add_flow(bundle, writer, {("pred", "seg_image")})
        self.add_flow(selector, writer, {("study_selected_series_list", "study_selected_series_list")})
