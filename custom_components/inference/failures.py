"""Batch inference that keeps going: a case whose files cannot be read, or that `CheckImaged` refuses, is
skipped and reported, every other case is still predicted, and the run then ends with an error naming them."""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from monai.data import Dataset, decollate_batch
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from custom_components.data.errors import DatasetError, OutputError
from custom_components.inference.writer import case_id_from_path
from custom_components.io_utils import atomic_write_json

FAILED_CASE = "failed_case"
REPORT_NAME = "failures.json"
# what the checks and the loaders raise for a bad or unreadable file (OSError covers missing files, bad gzip and
# short reads); anything else in preprocessing is a bug and stops the run
DATA_ERRORS = (DatasetError, OSError, EOFError, zlib.error, ImageFileError, HeaderDataError)


def data_error(e: BaseException | None) -> BaseException | None:
    """The data error behind `e` (MONAI wraps a transform's exception in RuntimeError), or None for a bug."""
    while e is not None and not isinstance(e, DATA_ERRORS):
        e = e.__cause__
    return e


def case_files(item: Mapping, keys: Sequence[str]) -> list[str]:
    """The files an item's `keys` name (a multi-channel image is a list of files)."""
    files = []
    for key in keys:
        value = item.get(key)
        files += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None]
    return files


def failure_record(item: Mapping, keys: Sequence[str], error: BaseException) -> dict[str, str]:
    """{case, file, error}: the file is the one the message names, else every file of the case (a truncated
    gzip does not say which one it was); the error, like a DatasetError, starts with that file."""
    files = case_files(item, keys)
    message = str(error)
    file = next((f for f in files if f in message), ", ".join(files))
    if not isinstance(error, DatasetError):
        message = f"{file}: cannot be read ({message})"
    case = item.get("id") or (case_id_from_path(files[0]) if files else "case")
    return {"case": str(case), "file": file, "error": message}


class SkipFailedCasesDataset(Dataset):
    """`monai.data.Dataset` whose item becomes `{FAILED_CASE: {case, file, error}}` when loading or checking it
    raises a data error (`DATA_ERRORS`), instead of ending the run; the marker is plain strings, so it also
    comes back from DataLoader workers. Other exceptions propagate."""

    def __init__(self, data: Sequence, transform=None, keys: Sequence[str] = ("image",)) -> None:
        super().__init__(data, transform)
        self.keys = [keys] if isinstance(keys, str) else list(keys)

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as e:
            error = data_error(e)
            if error is None:
                raise
            return {FAILED_CASE: failure_record(self.data[index], self.keys, error)}


class SkippedBatches:
    """Iterates a DataLoader over `SkipFailedCasesDataset` (batch size 1: inference images differ in shape),
    handing failed-case markers to `report` instead of the evaluator. Not Sized, so ignite counts the epoch's
    iterations itself."""

    def __init__(self, loader: Iterable, report: FailedCasesReport) -> None:
        self.loader, self.report = loader, report

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            if FAILED_CASE in batch:
                self.report.failures += decollate_batch(batch[FAILED_CASE])
            else:
                self.report.num_predicted += 1
                yield batch


class FailedCasesReport:
    """Ignite handler, attached after the writers: when a case was skipped, writes `output_dir/failures.json`
    (each case with its file and error), prints one line per failure and raises a DatasetError naming the files,
    so that the run exits non-zero once every other prediction is written. A run without failures removes the
    report of an earlier run into the same folder, which would no longer describe its predictions."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir) / REPORT_NAME
        self.failures: list[dict] = []
        self.num_predicted = 0

    def skip_failed(self, loader: Iterable) -> SkippedBatches:
        """The evaluator's data: `loader` without the failed cases, which this report collects."""
        return SkippedBatches(loader, self)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _reset(self, engine=None) -> None:
        self.failures.clear()
        self.num_predicted = 0
        try:
            self.path.unlink(missing_ok=True)
        except OSError as e:
            raise OutputError(f"{self.path}: the earlier run's report cannot be removed ({e.strerror or e})") from e

    def write(self, engine=None) -> None:
        if not self.failures:
            return
        total = self.num_predicted + len(self.failures)
        atomic_write_json(self.path, {"num_cases": total, "num_failed": len(self.failures), "failures": self.failures})
        for failure in self.failures:
            print(f"skipped case {failure['case']}: {failure['error'].splitlines()[0]}", file=sys.stderr, flush=True)
        files = ", ".join(f["file"] for f in self.failures)
        raise DatasetError(f"{files}: {len(self.failures)} of {total} case(s) skipped (unreadable or refused); "
                           f"the other predictions are written; see {self.path}")
