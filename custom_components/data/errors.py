"""The errors raised for bad user input, and how a command line reports them: one line naming the file at fault
and what is wrong, a non-zero exit, no traceback (a traceback is for bugs)."""

from __future__ import annotations

import os
import sys


class DatasetError(ValueError):
    """Bad input data or configuration, as opposed to a bug: the message names the file and the problem."""


class OutputError(DatasetError):
    """An output that could not be written (permissions, a full disk): the message names the file."""


def user_error(exc: BaseException | None) -> DatasetError | None:
    """The DatasetError behind an exception, following its explicit causes (`raise ... from e`, as MONAI's config
    parser wraps what a component raises). An exception raised while one was being handled is a bug of its own."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DatasetError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__
    return None


_previous_hook = sys.excepthook


def _report_user_errors(exc_type, exc, tb) -> None:
    error = user_error(exc)
    if error is None or os.environ.get("UNET_FAMILY_TRACEBACK") == "1":
        _previous_hook(exc_type, exc, tb)
    else:
        print(f"error: {error}", file=sys.stderr)


def install_excepthook() -> None:
    """Make a DatasetError that ends a program (`python -m monai.bundle run ...` included, whose config imports
    this package) print as `error: <message>`; every other exception keeps its traceback, as does every exception
    with UNET_FAMILY_TRACEBACK=1. The exit code stays 1."""
    global _previous_hook
    if sys.excepthook is not _report_user_errors:
        _previous_hook = sys.excepthook
        sys.excepthook = _report_user_errors
