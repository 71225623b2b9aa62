"""Loading that also takes a DICOM series folder wherever a NIfTI file is accepted."""

from __future__ import annotations

import os
from collections.abc import Sequence

from monai.transforms import LoadImage, LoadImaged

from custom_components.data.dicom import DicomSeriesReader


class _SeriesAwareLoader:
    """Wraps a LoadImage: a folder goes to the checked DICOM series reader (its errors surface as they are,
    instead of MONAI falling back to another reader that would read a mixed or gapped series silently)."""

    def __init__(self, loader: LoadImage, series_reader: DicomSeriesReader) -> None:
        self.__dict__["loader"] = loader
        self.__dict__["series_reader"] = series_reader

    def __call__(self, filename, reader=None):
        if reader is None and isinstance(filename, (str, os.PathLike)) and os.path.isdir(filename):
            reader = self.series_reader
        return self.loader(filename, reader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __setattr__(self, name, value) -> None:  # e.g. MONAI Label turning image_only off
        setattr(self.loader, name, value)


class LoadImageOrSeriesd(LoadImaged):
    """`LoadImaged` whose keys may also name a folder holding one DICOM series (or several, with `series_uid`);
    the series is checked (one series, whole, evenly spaced, pixel data present and decodable) and read in
    slice order. Everything else loads exactly as with LoadImaged."""

    def __init__(self, keys: str | Sequence[str], series_uid: str | None = None, **kwargs) -> None:
        super().__init__(keys, **kwargs)
        self._loader = _SeriesAwareLoader(self._loader, DicomSeriesReader(series_uid=series_uid))
